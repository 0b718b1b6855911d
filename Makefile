# ncbench: every target below only calls the `ncbench` CLI inside the project's virtual environment.
# `make bench` and `make test` do all the set-up on a fresh machine (they create .venv and install).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
NCB    := $(BIN)/ncbench
STAMP  := $(VENV)/.installed
DATA   ?=
A      ?=
B      ?=
OUT    ?= runs

.PHONY: install bench bench-smoke bench-omniglot bench-cifar-fs bench-mini-imagenet leaderboard leaderboards compare report validate test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,slurm,tensorboard]'
	touch $(STAMP)

install: $(STAMP)

# The default benchmark, checked against the committed leaderboard: Conv-4 on glyphs (every s, seed 0) into
# $(OUT)/ (never a tracked file), its report, then claimed vs reproduced per row (exit 1 if a row is off).
bench: $(STAMP)
	$(NCB) run glyphs --model conv4 --seeds 0 --workers 2 --out $(OUT) --results $(OUT)/results --leaderboards $(OUT)/leaderboards
	$(NCB) report --out $(OUT) --results $(OUT)/results --leaderboards $(OUT)/leaderboards
	$(NCB) compare leaderboards/glyphs.csv $(OUT)/leaderboards/glyphs.csv --reproduce --results leaderboards/results $(OUT)/results

# a smoke run writes under $(OUT) only (results and leaderboard too), never into the committed leaderboards/
bench-smoke: $(STAMP)
	$(NCB) run glyphs-smoke --out $(OUT) --results $(OUT)/results --leaderboards $(OUT)/leaderboards

bench-omniglot bench-cifar-fs bench-mini-imagenet: bench-%: $(STAMP)
	@test -n "$(DATA)" || { echo "usage: make $@ DATA=/path/to/dataset/root" >&2; exit 2; }
	$(NCB) run $* --data-root "$(DATA)" --out $(OUT)
	$(NCB) leaderboard --out $(OUT) --task $*

leaderboard: $(STAMP)
	$(NCB) leaderboard --out $(OUT) --readme README.md

# Regenerate every committed leaderboard from scratch (hours on 2 cores: leaderboards/README.md gives the
# measured time of each). The cross-domain tasks reuse their source task's checkpoints, so they run after it.
GLYPHS_MODELS   ?= conv4 conv4-mse conv4-w80-etf resnet12-w16 wrn-10-1 mlp
OMNIGLOT_MODELS ?= conv4 conv4-mse resnet12-w16 mlp
OMNIGLOT        ?= ../shared/data/omniglot-small
WORKERS         ?= 2
leaderboards: $(STAMP)
	$(NCB) run omniglot --model $(OMNIGLOT_MODELS) --data-root $(OMNIGLOT) --workers $(WORKERS) --out $(OUT) --no-leaderboard
	$(NCB) run omniglot-to-glyphs --model $(OMNIGLOT_MODELS) --data-root $(OMNIGLOT) --workers $(WORKERS) --out $(OUT) --no-leaderboard
	$(NCB) run glyphs --model $(GLYPHS_MODELS) --workers $(WORKERS) --out $(OUT) --no-leaderboard
	$(NCB) run glyphs-to-omniglot --model $(GLYPHS_MODELS) --data-root $(OMNIGLOT) --workers $(WORKERS) --out $(OUT) --no-leaderboard
	$(NCB) leaderboard --out $(OUT) --readme README.md --data-root $(OMNIGLOT) --update-manifest

compare: $(STAMP)
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make compare A=leaderboards/x.csv B=other/x.csv" >&2; exit 2; }
	$(NCB) compare "$(A)" "$(B)"

report: $(STAMP)
	$(NCB) report --out $(OUT)

validate: $(STAMP)
	$(NCB) validate tasks/*.yaml

test: $(STAMP)
	$(BIN)/python -m pytest
