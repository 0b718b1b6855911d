"""The bad-input matrix: every case is a CLI call that must exit 2 with a message naming the file, field or
argument and what was expected, and must leave every file already on disk byte for byte unchanged.

Each case runs against a copy of a finished store (task file, checkpoint, feature cache, result file and
leaderboard CSV of the tiny task), so "nothing changed" is checked against real outputs. The ids of all
cases are in :data:`CASE_IDS` (their count is the figure reported in ``docs/reliability.md``).

Where validation happens (and so why the exit code is 2, not a failed row):
- task files are validated whole when loaded, before any unit runs (``run``, ``validate``); checks that
  need the dataset (pool sizes, images per class) are made by ``ncbench validate``;
- datasets, images and checkpoints are read by ``evaluate`` (one unit, no failed row written);
  ``run`` instead records such a failure as a failed row of its unit (exit 1), by design;
- backbone specs are built and validated on a dummy batch by ``submit`` before any unit runs;
- leaderboard CSVs are read by ``compare`` (and by ``submit`` to protect model names);
- output errors (a folder under a regular file: read-only as root cannot be simulated with chmod; a full
  disk: ENOSPC raised by ``os.fsync``) leave the previous files in place.
"""

import errno
import json
import os
import pickle
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import tiny_task_dict

from ncbench.cli import main


# ------------------------------------------------------------------------------------------- the store
@pytest.fixture(scope="module")
def finished_store(tmp_path_factory):
    """A store after ``ncbench run`` of the tiny task with one unit (s=4, seed 0)."""
    root = tmp_path_factory.mktemp("store")
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_task_dict(source_classes=[4])))
    assert main(["run", str(root / "tiny.yaml"), *store_args(root)]) == 0
    return root


def store_args(root: Path) -> list[str]:
    return ["--out", str(root / "runs"), "--results", str(root / "results"), "--leaderboards", str(root / "lb")]


class Store:
    """A private copy of the finished store: its paths, and a byte snapshot of every file in it."""

    def __init__(self, root: Path):
        self.root = root
        self.task = root / "tiny.yaml"
        self.csv = root / "lb" / "tiny.csv"
        (self.ckpt,) = (root / "runs" / "checkpoints").iterdir()

    @property
    def args(self) -> list[str]:
        return store_args(self.root)

    def snapshot(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.root)): p.read_bytes() for p in sorted(self.root.rglob("*")) if p.is_file()}

    def write_task(self, filename: str, **over) -> Path:
        path = self.root / filename
        path.write_text(yaml.safe_dump(tiny_task_dict(**over)))
        return path


@pytest.fixture
def store(finished_store, tmp_path):
    shutil.copytree(finished_store, tmp_path / "store")
    return Store(tmp_path / "store")


def expect_clear_error(argv, store, capsys, needles):
    """Run the CLI: exit 2, every needle in stderr, and every file of the store unchanged."""
    before = store.snapshot()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    for needle in needles:
        assert str(needle) in err, f"{needle!r} not in {err!r}"
    after = store.snapshot()
    assert after == before, f"files changed: {sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))}"


# ------------------------------------------------------------------------------------------- task files
DELETE = object()


def with_field(d: dict, dotted: str, value) -> dict:
    """``d`` with the field at ``dotted`` (e.g. ``episodes.queries``) set to ``value`` (or removed: DELETE)."""
    *parents, leaf = dotted.split(".")
    node = d
    for p in parents:
        node = node.setdefault(p, {})
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return d


# (id, field, value, expected message parts); checked by `ncbench run` before any unit runs
TASK_FIELD_CASES = [
    ("task-missing-field", "version", DELETE, ["version: missing (expected an integer)"]),
    ("task-unknown-field", "sheds", [0], ["sheds: unknown field", "known fields"]),
    ("task-unknown-nested-field", "episodes.shot", 1, ["episodes.shot: unknown field", "known: ways, shots"]),
    ("task-wrong-type-version", "version", "one", ["version: expected an integer", "'one'"]),
    ("task-wrong-type-shots", "episodes.shots", "five", ["episodes.shots: expected an integer or a non-empty list"]),
    ("task-wrong-type-dataset-options", "dataset.options", "classes=30", ["dataset.options: expected a mapping"]),
    ("task-wrong-type-heads", "heads", "ridge", ["heads: expected a non-empty list"]),
    ("task-zero-queries", "episodes.queries", 0, ["episodes.queries: expected a value >= 1, got 0"]),
    ("task-negative-count", "episodes.count", -5, ["episodes.count: expected a value >= 1, got -5"]),
    ("task-zero-train-images", "images_per_class.train", 0, ["images_per_class.train: expected a value >= 1"]),
    ("task-negative-source-classes", "source_classes", [-4, 8], ["source_classes: expected values >= 2"]),
    ("task-one-way", "episodes.ways", 1, ["episodes.ways: expected a value >= 2, got 1"]),
    ("task-fraction-out-of-range", "pools.source_fraction", 1.5, ["pools.source_fraction", "strictly between 0 and 1"]),
    ("task-duplicate-seeds", "seeds", [0, 0], ["seeds: duplicate values"]),
    ("task-negative-epochs", "pretrain.epochs", -1, ["pretrain", "epochs must be a positive integer, got -1"]),
    ("task-unknown-pretrain-field", "pretrain.epoch", 3, ["pretrain", "'epoch'", "known fields"]),
    ("task-unknown-dataset", "dataset.name", "glyph", ["dataset.name: unknown dataset 'glyph'; did you mean 'glyphs'"]),
    ("task-unknown-dataset-option", "dataset.options.clases", 30,
     ["dataset.options.clases: unknown option of dataset 'glyphs'", "known: "]),
    ("task-unknown-backbone", "backbone.name", "tiny-cnv",
     ["backbone.name: unknown backbone 'tiny-cnv'; did you mean 'tiny-conv'"]),
    ("task-unknown-head", "heads", ["ridge", "rigde"], ["heads[1].name: unknown head 'rigde'; did you mean 'ridge'"]),
    ("task-unknown-head-option", "heads", [{"name": "ridge", "alpah": 2.0}],
     ["heads[0].alpah: unknown option of head 'ridge'", "known: alpha"]),
    ("task-unknown-metric", "metrics", ["cdvn"], ["metrics[0]: unknown metric 'cdvn'; did you mean 'cdnv'"]),
    # limits that do not need the dataset (issue 15)
    ("task-episode-count-too-large", "episodes.count", 10**7, ["episodes.count: expected a value <= 1000000"]),
    ("task-seed-beyond-int64", "seeds", [0, 2**63], ["seeds: expected values <= 9223372036854775807"]),
    ("task-negative-seed", "seeds", [-1], ["seeds: expected values >= 0"]),
    ("task-version-beyond-int64", "version", 2**63, ["version: expected a value <= 9223372036854775807"]),
    ("task-negative-episode-seed", "episodes.seed", -3, ["episodes.seed: expected a value >= 0, got -3"]),
    ("task-layer-eps-nan", "layer_eps", float("nan"), ["layer_eps: expected a finite number, got nan"]),
    ("task-layer-eps-zero", "layer_eps", 0.0, ["layer_eps: expected a number strictly between 0 and 1, got 0.0"]),
    ("task-layer-eps-one", "layer_eps", 1, ["layer_eps: expected a number strictly between 0 and 1, got 1.0"]),
    ("task-ridge-alpha-zero", "heads", [{"name": "ridge", "alpha": 0}],
     ["heads[0].alpha: expected a finite number > 0, got 0"]),
    ("task-ridge-alpha-negative", "heads", ["ncc", {"name": "ridge", "alpha": -1.5}],
     ["heads[1].alpha: expected a finite number > 0, got -1.5"]),
    ("task-ridge-alpha-text", "heads", [{"name": "ridge", "alpha": "big"}],
     ["heads[0].alpha: expected a finite number > 0, got 'big'"]),
    ("task-logistic-c-infinite", "heads", [{"name": "logistic", "C": float("inf")}],
     ["heads[0].C: expected a finite number > 0, got inf"]),
    # names are not paths (ncbench.names)
    ("task-name-parent-path", "name", "../../TASKPWN", ["name: invalid name '../../TASKPWN'", "not a path"]),
    ("task-name-empty", "name", "", ["name: invalid name '': empty name"]),
    ("task-name-formula", "name", "=cmd", ["name: invalid name '=cmd'", "character '=' not allowed"]),
    ("task-name-cyrillic-lookalike", "name", "t\u0456ny", ["name: invalid name", "U+0456", "look-alikes are refused"]),
    ("task-name-upper-case", "name", "Tiny", ["name: invalid name 'Tiny'", "did you mean 'tiny'"]),
    ("task-dataset-name-path", "dataset.name", "../glyphs", ["dataset.name: invalid name '../glyphs'"]),
]


@pytest.mark.parametrize("field, value, needles", [pytest.param(*c[1:], id=c[0]) for c in TASK_FIELD_CASES])
def test_task_field(store, capsys, field, value, needles):
    path = store.root / "bad.yaml"
    path.write_text(yaml.safe_dump(with_field(tiny_task_dict(), field, value)))
    expect_clear_error(["run", path, *store.args], store, capsys, [f"{path}: ", *needles])


def write_raw(store, text):
    path = store.root / "bad.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def circular(store):
    (store.root / "a.yaml").write_text("include: bad.yaml\n")
    return write_raw(store, "include: a.yaml\nname: tiny\n")


BILLION_LAUGHS = """\
a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
name: tiny
"""


def fifo(store, name):
    path = store.root / name
    os.mkfifo(path)
    return path


def including(store, target, *, make=None):
    """bad.yaml including ``target`` (made first by ``make(store)`` when given)."""
    if make is not None:
        make(store)
    return write_raw(store, f"include: {target}\nname: tiny\n")


def outside_file(store) -> Path:
    path = store.root.parent / "evil.yaml"
    path.write_text("name: evil\n")
    return path


def dev_zero_link(store) -> None:
    (store.root / "zero.yaml").symlink_to("/dev/zero")


# id -> (the task argument given to `ncbench run`, expected message parts)
TASK_FILE_CASES = {
    "task-yaml-syntax-error": (lambda s: write_raw(s, "name: tiny\nepisodes: {ways: 3, shots: [1\n"),
                               ["bad.yaml: YAML syntax error: line 3"]),
    "task-not-a-mapping": (lambda s: write_raw(s, "- name: tiny\n"),
                           ["bad.yaml: expected a mapping of task fields at the top level, got list"]),
    "task-file-missing": (lambda s: s.root / "nowhere.yaml", ["nowhere.yaml: cannot read task file"]),
    "task-unknown-name": (lambda s: "glyph", ["unknown task 'glyph'; did you mean 'glyphs'"]),
    "task-circular-include": (circular, ["include: circular include", "a.yaml -> "]),
    # safe task files (issue 15): no YAML anchors / aliases, bounded regular files, confined includes
    "task-yaml-anchor": (lambda s: write_raw(s, "name: tiny\nseeds: &s [0, 1]\n"),
                         ["bad.yaml: line 2, column 8: anchor &s refused", "may not use YAML anchors or aliases"]),
    "task-yaml-billion-laughs": (lambda s: write_raw(s, BILLION_LAUGHS), ["bad.yaml: line 1", "anchor &a refused"]),
    "task-yaml-alias-in-backbone-options": (
        lambda s: write_raw(s, "name: tiny\nbackbone: {name: tiny-conv, options: {width: *w}}\n"),
        ["bad.yaml: line 2", "alias *w refused"]),
    "task-yaml-deep-nesting": (lambda s: write_raw(s, "x: " + "[" * 200 + "]" * 200 + "\n"),
                               ["bad.yaml: line 1", "nested deeper than 32 levels"]),
    "task-file-too-large": (lambda s: write_raw(s, "name: tiny\n" + "#" * (1 << 20) + "\n"),
                            ["bad.yaml: larger than 1048576 bytes"]),
    "task-file-dev-zero": (lambda s: "/dev/zero", ["/dev/zero: not a regular file"]),
    "task-file-named-pipe": (lambda s: fifo(s, "pipe.yaml"), ["pipe.yaml: not a regular file"]),
    "task-include-named-pipe": (lambda s: including(s, "base.yaml", make=lambda s: fifo(s, "base.yaml")),
                                ["base.yaml: not a regular file"]),
    "task-include-dev-zero": (lambda s: including(s, "/dev/zero"),
                              ["bad.yaml: include: '/dev/zero' resolves to '/dev/zero', outside"]),
    "task-include-link-to-dev-zero": (lambda s: including(s, "zero.yaml", make=dev_zero_link),
                                      ["include: 'zero.yaml' resolves to '/dev/zero', outside"]),
    "task-include-absolute-outside": (lambda s: including(s, outside_file(s)), ["evil.yaml' resolves to", "outside"]),
    "task-include-parent-folder": (lambda s: including(s, "../evil.yaml", make=outside_file),
                                   ["include: '../evil.yaml' resolves to", "outside the including file's folder"]),
    "task-include-not-yaml": (lambda s: including(s, "notes.txt", make=lambda s: (s.root / "notes.txt").write_text("x")),
                              ["include: 'notes.txt' is not a .yaml / .yml file"]),
}


@pytest.mark.parametrize("case", list(TASK_FILE_CASES))
def test_task_file(store, capsys, case):
    make_target, needles = TASK_FILE_CASES[case]
    expect_clear_error(["run", make_target(store), *store.args], store, capsys, needles)


# checks against the dataset (tiny glyphs: 30 classes of 12 images, source pool 15, target pool 15)
TASK_DATA_CASES = [
    ("task-shots-plus-queries-exceed-class", {"episodes": {"ways": 3, "shots": [1, 5], "queries": 10, "count": 5}},
     ["episodes: shots + queries = 15 images per class needed", "has 12"]),
    ("task-source-classes-exceed-pool", {"source_classes": [4, 40]},
     ["source_classes: 40 asked", "has 15 classes"]),
    ("task-images-exceed-class", {"images_per_class": {"train": 10, "test": 5}},
     ["images_per_class.train: 10 asked", "has 9 TRAIN images"]),
    ("task-ways-exceed-target-pool", {"episodes": {"ways": 20, "shots": [1], "queries": 2, "count": 5}},
     ["episodes.ways: 20-way episodes need 20 target classes, the target pool has 15"]),
]


@pytest.mark.parametrize("over, needles", [pytest.param(*c[1:], id=c[0]) for c in TASK_DATA_CASES])
def test_task_against_data(store, capsys, over, needles):
    path = store.write_task("bad.yaml", **over)
    expect_clear_error(["validate", path], store, capsys, [f"{path}: ", *needles])


# ------------------------------------------------------------------------------------------- dataset files
def omniglot_root(store, kind: str) -> Path | None:
    """A broken omniglot root of the given kind (folder of <alphabet>/<character>/*.png otherwise)."""
    root = store.root / "omniglot"
    if kind == "missing":
        return root
    if kind == "not-given":
        return None
    if kind == "not-zip":
        root.write_text("not an archive")
        return root
    if kind == "corrupt-zip":
        root = root.with_suffix(".zip")
        root.write_bytes(b"PK\x03\x04" + b"\0" * 40)
        return root
    root.mkdir()
    if kind == "empty":
        return root
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(3):
        folder = root / "Latin" / f"character{c:02d}"
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(folder / f"{i}.png")
    bad = root / "Latin" / "character01" / "2.png"
    if kind == "unreadable":
        bad.write_bytes(b"this is not a png")
    elif kind == "truncated":
        bad.write_bytes(bad.read_bytes()[:800])  # a whole header, half of the pixel data
    return root


# id -> (kind of omniglot root, expected message parts); read by `evaluate` (one unit, no failed row)
DATA_CASES = {
    "dataset-root-missing": ("missing", ["omniglot: root", "does not exist; expected a folder <alphabet>/<character>/*.png"]),
    "dataset-root-not-given": ("not-given", ["omniglot: option 'root' is required: a folder holding"]),
    "dataset-root-empty": ("empty", ["is missing or has an incomplete copy", "no <alphabet>/<character>/*.png found"]),
    "dataset-root-not-zip": ("not-zip", ["is a file but not a .zip archive; expected"]),
    "dataset-root-corrupt-zip": ("corrupt-zip", ["omniglot.zip' is missing or has an incomplete copy",
                                                 "File is not a zip file", "expected"]),
    "dataset-image-unreadable": ("unreadable", ["character01/2.png' is unreadable", "expected an image file"]),
    "dataset-image-truncated": ("truncated", ["character01/2.png' is unreadable (image file is truncated",
                                              "expected an image file"]),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_dataset_files(store, capsys, monkeypatch, case):
    kind, needles = DATA_CASES[case]
    monkeypatch.setenv("NCBENCH_CACHE", str(store.root / "cache"))  # where a zip would be extracted
    root = omniglot_root(store, kind)
    task = store.write_task("omni.yaml", name="omni", dataset={"name": "omniglot", "options": {"image_size": 16}},
                            source_classes=[2], images_per_class={"train": 2, "test": 1},
                            episodes={"ways": 2, "shots": [1], "queries": 1, "count": 2})
    argv = ["evaluate", task, "--source-classes", 2, "--seed", 0, *store.args]
    if root is not None:
        argv += ["--data-root", root]
    expect_clear_error(argv, store, capsys, needles)


# ------------------------------------------------------------------------------------------- backbone specs
NET = '''
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, in_channels, feature_dim=8):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.lin = nn.Linear(in_channels * 16, 8)
        self.feature_dim = feature_dim

    def forward(self, x):
        y = self.lin(self.pool(x).flatten(1))
        {forward}


def backbone(in_channels=1, image_size=16):
    return Net(in_channels{extra})
'''


def net_file(store, forward="return y", extra="", text=None) -> Path:
    path = store.root / "net.py"
    path.write_text(text if text is not None else NET.format(forward=forward, extra=extra))
    return path


# id -> (spec builder, extra CLI args, expected message parts beyond the spec itself)
BACKBONE_CASES = {
    "backbone-file-missing": (lambda s: str(s.root / "nope.py"), [], ["nope.py' not found"]),
    "backbone-import-error": (lambda s: str(net_file(s, text='import not_a_module_xyz')), [],
                              ["failed: ModuleNotFoundError", "not_a_module_xyz"]),
    "backbone-syntax-error": (lambda s: str(net_file(s, text='def backbone(:')), [], ["failed: SyntaxError"]),
    "backbone-module-import-error": (lambda s: "not_a_module_xyz:net", [],
                                     ["importing module 'not_a_module_xyz' failed"]),
    "backbone-not-callable": (lambda s: str(net_file(s, text='backbone = 42')), [], ["'backbone' is not callable"]),
    "backbone-callable-missing": (lambda s: str(net_file(s)) + ":nothere", [], ["'nothere' is missing"]),
    "backbone-unknown-name": (lambda s: "tiny-cnv", [], ["did you mean 'tiny-conv'"]),
    "backbone-factory-raises": (lambda s: str(net_file(s, extra=', feature_dim=1 / 0')), [],
                                ["building with", "ZeroDivisionError"]),
    "backbone-returns-non-module": (lambda s: str(net_file(s, text="def backbone(**kw):\n    return 42")), [],
                                    ["returned int, expected an nn.Module"]),
    "backbone-unknown-option": (lambda s: str(net_file(s)), ["--backbone-option", "width=3"],
                                ["unknown option(s) ['width']"]),
    "backbone-forward-raises": (lambda s: str(net_file(s, "raise RuntimeError('boom')")), [],
                                ["forward pass on a dummy batch [2, 3, 32, 32] failed: RuntimeError: boom"]),
    "backbone-output-not-tensor": (lambda s: str(net_file(s, 'return (y, y)')), [],
                                   ["forward must return a tensor [B, m], got tuple"]),
    "backbone-output-3d": (lambda s: str(net_file(s, 'return y[..., None]')), [],
                           ["output must have shape [B, m] = [2, m]", "got [2, 8, 1]"]),
    "backbone-output-wrong-batch": (lambda s: str(net_file(s, 'return y[:1]')), [],
                                    ["output must have shape [B, m] = [2, m]", "got [1, 8]"]),
    "backbone-output-integer": (lambda s: str(net_file(s, 'return y.long()')), [],
                                ["output must be floating point, got torch.int64"]),
    "backbone-output-nan": (lambda s: str(net_file(s, "return y * float('nan')")), [], ["NaN or inf values"]),
    "backbone-output-inf": (lambda s: str(net_file(s, "return y + float('inf')")), [], ["NaN or inf values"]),
    "backbone-feature-dim-mismatch": (lambda s: str(net_file(s, extra=', feature_dim=99')), [],
                                      ["feature_dim is 99 but the output has 8 features"]),
    "backbone-nondeterministic-eval": (lambda s: str(net_file(s, 'return y + torch.rand_like(y)')), [],
                                       ["two eval-mode forward passes on the same batch differ (not deterministic)"]),
    "backbone-changes-weights": (
        lambda s: str(net_file(s, "self.lin.weight.add_(1.0)\n        return y")), [],
        ["forward passes changed its weights or buffers ['lin.weight']", "must leave the model unchanged"]),
    "backbone-changes-buffers": (
        lambda s: str(net_file(s, "self.lin.register_buffer('calls', torch.ones(1))\n        return y")),
        [], ["changed its weights or buffers ['lin.calls']"]),
}


# also run through the real sandbox process (a few seconds each: slow): one case of each kind of check
SANDBOXED = ["backbone-import-error", "backbone-not-callable", "backbone-output-3d", "backbone-output-nan",
             "backbone-nondeterministic-eval", "backbone-changes-weights"]


@pytest.mark.parametrize("case, isolation", [pytest.param(c, "in-process", id=c) for c in BACKBONE_CASES] + [
    pytest.param(c, "sandbox", id=f"{c}-sandboxed", marks=pytest.mark.slow) for c in SANDBOXED])
def test_backbone_spec(store, capsys, monkeypatch, case, isolation):
    """`submit` validates the spec before any unit runs. An untrusted spec is validated in its sandbox process;
    the fast variant runs the same checks (``validate_backbone``) in-process."""
    if isolation == "in-process":
        from ncbench import sandbox

        monkeypatch.setattr(sandbox, "is_trusted", lambda spec: True)
    make_spec, extra, needles = BACKBONE_CASES[case]
    spec = make_spec(store)
    argv = ["submit", spec, "--name", "mine", "--tasks", store.task, *extra, *store.args]
    expect_clear_error(argv, store, capsys, [f"backbone {spec!r}", *needles])


def test_run_records_a_broken_backbone_as_a_failed_row(store, capsys, monkeypatch):
    """`run` does not validate a --backbone up front: each unit fails as a row with its error (exit 1), and
    the rows and files already there are kept (this is the pipeline's contract, not an exit-2 case)."""
    from ncbench import leaderboard, sandbox

    monkeypatch.setattr(sandbox, "is_trusted", lambda spec: True)
    before = store.snapshot()
    net = net_file(store, "return y * float('nan')")
    assert main([str(a) for a in ["run", store.task, "--backbone", net, "--model", "nan-net", *store.args]]) == 1
    assert "1 of 1 units failed: nan-net.glyphs-s4-seed0" in capsys.readouterr().err
    after = store.snapshot()
    # the leaderboard, its manifest and its derived views gain the failed row
    rebuilt = ("lb/tiny.csv", "lb/tiny.sha256", "lb/tiny.md", "lb/tiny-analysis.csv")
    assert {k: after[k] for k in before if k not in rebuilt} == {k: v for k, v in before.items() if k not in rebuilt}
    df = leaderboard.read(store.csv)
    failed = df[df["model"].eq("nan-net")]
    assert len(failed) == 1 and failed["status"].iloc[0] == "failed" and "NaN or inf" in failed["error"].iloc[0]
    assert df[df["model"].eq("tiny-conv")]["status"].eq("ok").sum() == 6


def test_backbone_option_syntax(store, capsys):
    argv = ["submit", net_file(store), "--name", "mine", "--tasks", store.task, "--backbone-option", "width", *store.args]
    expect_clear_error(argv, store, capsys, ["--backbone-option: expected KEY=VALUE, got 'width'"])


# ------------------------------------------------------------------------------------------- checkpoints
def edit_card(ckpt: Path, **fields) -> None:
    card = json.loads((ckpt / "card.json").read_text())
    card.update(fields)
    (ckpt / "card.json").write_text(json.dumps(card))


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


class Unpickled:
    """A pickle payload that creates a marker file if anything ever unpickles it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def pickle_weights(ckpt: Path, name: str) -> None:
    """Replace the weights with a pickle (holding a payload) written to ``name``, with a matching card."""
    (ckpt / "model.safetensors").unlink()
    (ckpt / name).write_bytes(pickle.dumps({"backbone.x": Unpickled(ckpt.parent / "UNPICKLED")}))
    edit_card(ckpt, weights=name, sha256=sha256(ckpt / name))


def _truncate(ckpt):
    w = ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


CHECKPOINT_CASES = {
    "checkpoint-truncated-weights": (_truncate, ["model.safetensors' has sha256", "truncated or modified"]),
    "checkpoint-sha256-mismatch": (lambda c: edit_card(c, sha256="0" * 64),
                                   ["model.safetensors' has sha256", f"the card says {'0' * 64}"]),
    "checkpoint-card-of-another-backbone": (lambda c: edit_card(c, backbone="tiny-mlp"),
                                            ["weights do not fit backbone 'tiny-mlp'"]),
    "checkpoint-pickle-as-safetensors": (lambda c: pickle_weights(c, "model.safetensors"),
                                         ["cannot read weights file", "(expected a valid safetensors file)"]),
    "checkpoint-pickle-pt": (lambda c: pickle_weights(c, "model.pt"),
                             ["model.pt' is a pickle; refusing to unpickle it"]),
    "checkpoint-weights-missing": (lambda c: (c / "model.safetensors").unlink(),
                                   ["model.safetensors' named by the card not found"]),
    "checkpoint-card-truncated": (lambda c: (c / "card.json").write_text((c / "card.json").read_text()[:50]),
                                  ["card.json' is unreadable"]),
    "checkpoint-card-missing-field": (lambda c: (c / "card.json").write_text(json.dumps({"sha256": "0"})),
                                      ["card.json: missing card field(s) ['backbone'"]),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_checkpoint(store, capsys, case):
    """A tampered checkpoint is refused by `evaluate`, never retrained over, rewritten or unpickled."""
    corrupt, needles = CHECKPOINT_CASES[case]
    corrupt(store.ckpt)
    argv = ["evaluate", store.task, "--source-classes", 4, "--seed", 0, *store.args]
    expect_clear_error(argv, store, capsys, [store.ckpt, *needles])
    assert not (store.ckpt.parent / "UNPICKLED").exists()


# ------------------------------------------------------------------------------------------- leaderboard CSVs
def bad_csv(store, edit) -> Path:
    """A copy of the store's leaderboard CSV changed by ``edit(DataFrame) -> DataFrame`` (all cells text)."""
    df = pd.read_csv(store.csv, dtype=str, keep_default_na=False)
    path = store.root / "other" / "tiny.csv"
    path.parent.mkdir()
    edit(df).to_csv(path, index=False)
    return path


def _set(column, value, rows=slice(None)):
    def edit(df):
        df.loc[df.index[rows], column] = value
        return df
    return edit


CSV_CASES = {
    "csv-missing-columns": (lambda df: df.drop(columns=["acc_mean", "seed"]),
                            ["missing leaderboard columns ['seed', 'acc_mean']"]),
    "csv-text-in-float-column": (_set("acc_mean", "N/A", [2]), ["column 'acc_mean': expected numbers, got 'N/A' (row 4)"]),
    "csv-text-in-int-column": (_set("shots", "one", [0]), ["column 'shots': expected integers, got 'one' (row 2)"]),
    "csv-duplicate-keys": (lambda df: pd.concat([df, df.iloc[[3]]]),
                           ["has several finished rows with the key", "expected one per key"]),
    "csv-another-task": (_set("task", "glyphs"), ["different tasks ('tiny' in", "'glyphs' in"]),
    "csv-two-tasks": (_set("task", "glyphs", [0]), ["holds tasks ['glyphs', 'tiny']", "exactly one task"]),
    "csv-empty-file": (lambda df: df.iloc[:0, :0], ["cannot read leaderboard CSV"]),
    "csv-fraction-in-int-column": (_set("shots", "1.5", [0]), ["column 'shots'", "expected integers"]),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_leaderboard_csv(store, capsys, case):
    edit, needles = CSV_CASES[case]
    other = bad_csv(store, edit)
    out = store.root / "diff.csv"
    expect_clear_error(["compare", store.csv, other, "--out", out], store, capsys, [other, *needles])


def _not_a_csv(store):
    path = store.root / "other.csv"
    path.write_bytes(bytes(range(256)) * 4)
    return path


CSV_FILE_CASES = {
    "csv-missing-file": (lambda s: s.root / "nowhere.csv", ["cannot read leaderboard CSV", "No such file"]),
    "csv-not-a-csv": (_not_a_csv, ["cannot read leaderboard CSV", "Error tokenizing data"]),
}


@pytest.mark.parametrize("case", list(CSV_FILE_CASES))
def test_leaderboard_csv_file(store, capsys, case):
    make_path, needles = CSV_FILE_CASES[case]
    path = make_path(store)
    expect_clear_error(["compare", store.csv, path], store, capsys, [path, *needles])


def test_submit_refuses_a_torn_leaderboard(store, capsys):
    """`submit` reads the leaderboard to protect names: a torn CSV stops it before any unit runs."""
    store.csv.write_text(store.csv.read_text()[:300])
    expect_clear_error(["submit", "tiny-mlp", "--name", "mlp", "--tasks", store.task, *store.args], store, capsys,
                       [store.csv, "missing leaderboard columns"])


# ------------------------------------------------------------------------------------------- output folders
def under_a_file(store) -> Path:
    """A folder that cannot be created: its parent is a regular file (chmod does not stop root)."""
    return store.root / "a-file" / "sub"


def full_disk(monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", no_space)


NOT_A_FOLDER = ["Not a directory", "a-file/sub", "expected a folder, but a part of the path is a regular file"]
DISK_FULL = ["No space left on device", "the disk is full"]

OUTPUT_CASES = {
    "output-leaderboards-not-writable": (
        lambda s, mp: ["leaderboard", "--results", s.root / "results", "--leaderboards", under_a_file(s)],
        NOT_A_FOLDER),
    "output-compare-out-not-writable": (
        lambda s, mp: ["compare", s.csv, s.csv, "--out", under_a_file(s) / "diff.csv"], NOT_A_FOLDER),
    "output-results-not-writable": (
        lambda s, mp: ["evaluate", s.task, "--source-classes", 4, "--seed", 0, "--out", s.root / "runs",
                       "--results", under_a_file(s)], NOT_A_FOLDER),
    "output-disk-full-leaderboard": (
        lambda s, mp: (full_disk(mp), ["leaderboard", *s.args])[1], ["cannot write", "lb/tiny.csv", *DISK_FULL]),
    "output-disk-full-result": (
        lambda s, mp: (full_disk(mp), ["evaluate", s.task, "--source-classes", 4, "--seed", 0, *s.args])[1],
        ["cannot write", "results/tiny/tiny-conv/s4-seed0-", *DISK_FULL]),
    "output-disk-full-compare": (
        lambda s, mp: (full_disk(mp), ["compare", s.csv, s.csv, "--out", s.csv.parent / "diff.csv"])[1],
        ["cannot write", "lb/diff.csv", *DISK_FULL]),
    "output-compare-out-is-an-input": (
        lambda s, mp: ["compare", s.csv, s.csv, "--out", s.csv], ["--out", "lb/tiny.csv", "is an input leaderboard"]),
}


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_output(store, capsys, monkeypatch, case):
    """Output errors exit 2 and leave the previous files (and no temporary file) in place."""
    make_argv, needles = OUTPUT_CASES[case]
    (store.root / "a-file").write_text("a regular file, not a folder")
    expect_clear_error(make_argv(store, monkeypatch), store, capsys, needles)


# ------------------------------------------------------------------------------------------- names (issue 15)
OUTSIDE = "PWNED"  # every path a name case tries to write names this; none may appear anywhere


def outside(store, name=OUTSIDE) -> Path:
    return store.root.parent / name


# id -> (argv builder, expected message parts); each exits 2 before anything runs, with a one-line message
NAME_CASES = {
    "name-submit-absolute-path": (
        lambda s: ["submit", net_file(s), "--name", outside(s), "--tasks", s.task, *s.args],
        ["--name: invalid name", "PWNED'", "a name is not a path"]),
    "name-submit-formula": (lambda s: ["submit", net_file(s), "--name", "=cmd", "--tasks", s.task, *s.args],
                            ["--name: invalid name '=cmd'", "character '=' not allowed"]),
    "name-submit-cyrillic-lookalike": (
        lambda s: ["submit", "tiny-mlp", "--name", "t\u0456ny-mlp", "--tasks", s.task, *s.args],
        ["--name: invalid name", "U+0456", "look-alikes are refused"]),
    "name-model-dotdot": (lambda s: ["run", s.task, "--model", "..", *s.args],
                          ["--model: invalid name '..'", "must not start with '.'"]),
    "name-model-parent-path": (
        lambda s: ["evaluate", s.task, "--source-classes", 4, "--seed", 0, "--model", "../../" + OUTSIDE, *s.args],
        ["--model: invalid name '../../PWNED'", "a name is not a path"]),
    "name-model-formula": (lambda s: ["run", s.task, "--model", "=cmd", *s.args], ["--model: invalid name '=cmd'"]),
    "name-model-empty": (lambda s: ["run", s.task, "--model", "", "--backbone", "tiny-mlp", *s.args],
                         ["--model: invalid name '': empty name"]),
    "name-model-upper-case": (lambda s: ["run", s.task, "--model", "Conv4", *s.args],
                              ["--model: invalid name 'Conv4'", "did you mean 'conv4'"]),
    "name-model-full-width": (lambda s: ["run", s.task, "--model", "\uff43\uff4f\uff4e\uff56\uff14", *s.args],
                              ["--model: invalid name", "did you mean 'conv4'"]),
    "name-model-too-long": (lambda s: ["run", s.task, "--model", "a" * 65, *s.args],
                            ["--model: invalid name", "65 characters, at most 64 allowed"]),
    "name-leaderboard-task-path": (lambda s: ["leaderboard", "--task", "../../" + OUTSIDE, *s.args],
                                   ["--task: invalid name '../../PWNED'"]),
    "name-validate-task-path": (lambda s: ["validate", s.write_task("bad.yaml", name="../../" + OUTSIDE)],
                                ["bad.yaml: name: invalid name '../../PWNED'"]),
}


@pytest.mark.parametrize("case", list(NAME_CASES))
def test_name(store, capsys, case):
    make_argv, needles = NAME_CASES[case]
    argv = make_argv(store)
    expect_clear_error(argv, store, capsys, needles)
    main([str(a) for a in argv])  # again, to read its stderr: one line
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not list(store.root.parent.parent.rglob(f"*{OUTSIDE}*")) and not Path("/tmp", OUTSIDE).exists()


def test_task_name_that_is_a_path_writes_nothing(store, capsys):
    """`run` of a task named ``../../TASKPWN``: exit 2 before any unit, no file or folder outside its root."""
    path = store.write_task("bad.yaml", name="../../TASKPWN")
    expect_clear_error(["run", path, *store.args], store, capsys, [f"{path}: name: invalid name '../../TASKPWN'"])
    assert not list(store.root.parent.parent.rglob("*TASKPWN*"))


def test_result_file_with_a_path_as_model_is_left_out(store, capsys, caplog):
    """A result file whose unit.model breaks the name rule is reported and left out of the leaderboard."""
    (good,) = (store.root / "results").rglob("*.json")
    rec = json.loads(good.read_text())
    rec["unit"]["model"] = "../../" + OUTSIDE
    evil = store.root / "results" / "tiny" / "evil" / good.name
    evil.parent.mkdir()
    evil.write_text(json.dumps(rec))
    assert main(["leaderboard", *store.args]) == 0
    assert "unit.model: invalid name '../../PWNED'" in caplog.text
    from ncbench import leaderboard

    assert set(leaderboard.read(store.csv)["model"]) == {"tiny-conv"}


# ------------------------------------------------------------------------------------------- --force
def test_forced_rerun_that_fails_keeps_the_old_result(store, capsys, monkeypatch):
    """``run --force`` replaces a result only with a new ok one: a failing re-run leaves every file as it was."""
    import ncbench.run as run_module

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(run_module, "episode_scores", boom)
    before = store.snapshot()
    assert main([str(a) for a in ["run", store.task, "--force", *store.args]]) == 1
    assert "1 of 1 units failed: tiny-conv.glyphs-s4-seed0" in capsys.readouterr().err
    assert store.snapshot() == before


# ------------------------------------------------------------------------------------------- the count
CASE_IDS = ([c[0] for c in TASK_FIELD_CASES] + list(TASK_FILE_CASES) + [c[0] for c in TASK_DATA_CASES]
            + list(DATA_CASES) + list(BACKBONE_CASES) + list(CHECKPOINT_CASES) + list(CSV_CASES)
            + list(CSV_FILE_CASES) + ["backbone-option-syntax", "csv-torn-leaderboard-on-submit"] + list(OUTPUT_CASES)
            + list(NAME_CASES) + ["name-task-path-on-run"])


def test_matrix_covers_every_category():
    """At least 40 cases, ids unique, and every category of the issue's bad-input list present."""
    assert len(CASE_IDS) >= 40 and len(set(CASE_IDS)) == len(CASE_IDS)
    for category in ("task-", "dataset-", "backbone-", "checkpoint-", "csv-", "output-", "name-"):
        assert any(i.startswith(category) for i in CASE_IDS), category
