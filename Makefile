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

.PHONY: install bench bench-smoke bench-omniglot bench-cifar-fs bench-mini-imagenet leaderboard compare report validate test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,slurm]'
	touch $(STAMP)

install: $(STAMP)

bench: $(STAMP)
	$(NCB) run glyphs --force --out $(OUT)
	$(NCB) leaderboard --out $(OUT)
	$(NCB) report --out $(OUT)

# a smoke run writes under $(OUT) only (results and leaderboard too), never into the committed leaderboards/
bench-smoke: $(STAMP)
	$(NCB) run glyphs-smoke --out $(OUT) --results $(OUT)/results --leaderboards $(OUT)/leaderboards

bench-omniglot bench-cifar-fs bench-mini-imagenet: bench-%: $(STAMP)
	@test -n "$(DATA)" || { echo "usage: make $@ DATA=/path/to/dataset/root" >&2; exit 2; }
	$(NCB) run $* --data-root "$(DATA)" --out $(OUT)
	$(NCB) leaderboard --out $(OUT) --task $*

leaderboard: $(STAMP)
	$(NCB) leaderboard --out $(OUT)

compare: $(STAMP)
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make compare A=leaderboards/x.csv B=other/x.csv" >&2; exit 2; }
	$(NCB) compare "$(A)" "$(B)"

report: $(STAMP)
	$(NCB) report --out $(OUT)

validate: $(STAMP)
	$(NCB) validate tasks/*.yaml

test: $(STAMP)
	$(BIN)/python -m pytest
