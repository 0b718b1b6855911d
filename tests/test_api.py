"""The Python API (``ncbench.evaluate`` and friends, docs/api.md), ``ncbench evaluate --checkpoint`` on
checkpoints written by ncbench and by hand, and one-line errors for bad cards and broken backbones.

The reference is the pipeline itself: a glyphs-smoke unit (s = 5, seed 0) pretrained and evaluated by
``run_unit``; evaluating its checkpoint (or its module) from outside must give the same numbers."""

import doctest
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch

from ncbench.checkpoint import load_checkpoint, read_card, read_weights
from ncbench.cli import main
from ncbench.leaderboard import columns, read, rows_from_record, to_frame
from ncbench.run import run_unit
from ncbench.tasks import find_task
from ncbench.unit import RunOptions, plan_units, pretrain_here

ROOT = Path(__file__).resolve().parents[1]
# columns computed from the features alone (no classifier), equal whoever computes them
FEATURE_COLUMNS = ["acc_mean", "acc_ci95", "target_cdnv", "target_ncc_acc", "nc1", "cdnv_train", "cdnv_test", "nc2",
                   "ncc_test_acc", "strong_test_collapse", "effective_depth"]
CLASSIFIER_COLUMNS = ["nc3", "nc4", "source_train_acc", "source_test_acc"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(checkpoint folder, the pipeline's own leaderboard rows of its unit) for glyphs-smoke s=5 seed 0."""
    root = tmp_path_factory.mktemp("reference")
    opts = RunOptions(out=root / "runs", results=root / "results", source_classes=[5], seeds=[0])
    unit, = plan_units(find_task("glyphs-smoke"), opts)
    ckpt = pretrain_here(unit, opts)
    return ckpt, to_frame(rows_from_record(run_unit(unit, opts)))


def same_numbers(a: pd.DataFrame, b: pd.DataFrame, cols: list[str]) -> None:
    key = ["head", "shots"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    assert a[key].astype(str).equals(b[key].astype(str))
    for c in cols:
        np.testing.assert_allclose(a[c].to_numpy(float), b[c].to_numpy(float), rtol=1e-6, err_msg=c)


def cli(argv) -> int:
    return main([str(a) for a in argv])


# ------------------------------------------------------------------------------------------- import
def test_import_ncbench_does_not_import_torch():
    code = ("import sys, ncbench; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'evaluate' in dir(ncbench) and 'nc1' in ncbench.__all__; "
            "ncbench.nc1; assert 'torch' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr
    with pytest.raises(AttributeError, match="has no attribute 'not_there'"):
        import ncbench

        ncbench.not_there


# -------------------------------------------------------------------------------------- the docs run
def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- api-snippet -->\s*```python\n(.*?)```\s*<!-- /api-snippet -->", text, flags=re.S)
    assert m, "README.md: no ```python block between <!-- api-snippet --> and <!-- /api-snippet -->"
    return m.group(1)


@pytest.mark.slow
def test_readme_snippet_evaluates_a_module():
    code = readme_snippet()
    assert len(code.strip().splitlines()) <= 5
    scope = {}
    exec(compile(code, "README.md:api-snippet", "exec"), scope)
    df = scope["df"]
    assert list(df.columns) == list(columns())
    assert len(df) == 6 and set(df["head"]) == {"ridge", "ncc", "ncc-cl2n"} and set(df["shots"]) == {1, 5}
    assert (df["task"] == "glyphs-smoke").all() and (df["source_classes"] == 5).all() and (df["seed"] == 0).all()
    assert (~df["pretrained"]).all() and (df["status"] == "ok").all()
    assert df["acc_mean"].between(0.2, 1).all()  # 5-way: a random conv net is above chance on glyphs
    assert (df["nc1"] > 0).all() and (df["target_cdnv"] > 0).all() and df["nc3"].isna().all()
    assert (df["n_episodes"] == 100).all()


@pytest.mark.slow
def test_docs_api_examples_pass():
    failed, attempted = doctest.testfile(str(ROOT / "docs" / "api.md"), module_relative=False,
                                         optionflags=doctest.ELLIPSIS, verbose=False)
    assert attempted >= 30 and failed == 0


# ------------------------------------------------------------------------------ a module, in memory
@pytest.mark.slow
def test_evaluating_the_module_of_a_checkpoint_gives_the_pipelines_numbers(reference):
    import ncbench

    ckpt, ref = reference
    model, _ = load_checkpoint(ckpt)
    df = ncbench.evaluate(model, "glyphs-smoke", source_classes=5, seed=0, name="mine")
    same_numbers(df, ref, FEATURE_COLUMNS)
    assert df[CLASSIFIER_COLUMNS].isna().all().all()  # a module has no classifier
    assert (df["model"] == "mine").all() and (~df["pretrained"]).all()
    assert df["checkpoint_sha256"].iloc[0] == ncbench.weights_sha256(model)
    assert df["checkpoint"].isna().all() and df["config_hash"].iloc[0] != ref["config_hash"].iloc[0]

    # without source classes: target columns and the episodes (ncc-cl2n has another centre) only
    bare = ncbench.evaluate(model, "glyphs-smoke")
    assert bare["source_classes"].isna().all() and bare["seed"].isna().all()
    assert bare[["nc1", "cdnv_train", "effective_depth"] + CLASSIFIER_COLUMNS].isna().all().all()
    plain = bare["head"] != "ncc-cl2n"
    same_numbers(bare[plain], ref[ref["head"] != "ncc-cl2n"], ["acc_mean", "target_cdnv", "target_ncc_acc"])
    assert not np.allclose(bare.loc[~plain, "acc_mean"], ref.loc[ref["head"] == "ncc-cl2n", "acc_mean"].to_numpy())


def test_evaluate_refuses_what_is_neither_a_module_nor_a_path():
    import ncbench

    with pytest.raises(ValueError, match="model_or_checkpoint: expected an nn.Module or a checkpoint path, got int"):
        ncbench.evaluate(3, "glyphs-smoke")


# ------------------------------------------------------------------------------- --checkpoint (CLI)
@pytest.mark.slow
def test_evaluate_checkpoint_written_by_ncbench(reference, tmp_path, capsys):
    ckpt, ref = reference
    store = ["--out", tmp_path / "runs", "--results", tmp_path / "results", "--leaderboards", tmp_path / "lb"]
    assert cli(["evaluate", "glyphs-smoke", "--checkpoint", ckpt, *store]) == 0
    out = capsys.readouterr().out.split()
    result_file, csv = Path(out[0]), Path(out[1])
    assert csv == tmp_path / "lb" / "glyphs-smoke.csv" and result_file.is_file()
    df = read(csv)
    # the card gave s = 5, seed 0 and the model name; the rows say where the weights came from
    assert (df["source_classes"] == 5).all() and (df["seed"] == 0).all()
    assert (df["model"] == "conv4.glyphs-s5-seed0").all() and (df["backbone"] == "conv4").all()
    assert (~df["pretrained"]).all() and (df["checkpoint"] == str(ckpt.resolve())).all()
    assert (df["checkpoint_sha256"] == read_card(ckpt).sha256).all()
    assert (ref["pretrained"]).all() and df["config_hash"].iloc[0] != ref["config_hash"].iloc[0]
    # its own classifier (same classes) too: every number is the pipeline's
    same_numbers(df, ref, FEATURE_COLUMNS + CLASSIFIER_COLUMNS)
    assert json.loads(result_file.read_text())["provenance"]["pretrained"] is False

    # again with --no-leaderboard, into other folders: a result file, no CSV
    other = ["--out", tmp_path / "runs2", "--results", tmp_path / "results2", "--leaderboards", tmp_path / "lb2"]
    assert cli(["evaluate", "glyphs-smoke", "--checkpoint", ckpt, "--model", "again", "--no-leaderboard", *other]) == 0
    assert not (tmp_path / "lb2").exists()
    assert len(list((tmp_path / "results2" / "glyphs-smoke" / "again").glob("s5-seed0-*.json"))) == 1


def hand_written(ckpt: Path, folder: Path, card: dict) -> Path:
    """``folder`` holding the backbone of ``ckpt`` as a plain state dict and the hand-written ``card``."""
    folder.mkdir(parents=True)
    state = {k.removeprefix("backbone."): v for k, v in read_weights(ckpt / "model.safetensors").items()
             if k.startswith("backbone.")}
    safetensors.torch.save_file(state, folder / card.get("weights", "model.safetensors"))
    (folder / "card.json").write_text(json.dumps(card))
    return folder


@pytest.mark.slow
def test_evaluate_hand_written_card(reference, tmp_path, capsys):
    """Only ``backbone`` given: the preprocessing defaults to the task's, as pretraining fits it, so the
    features and every number not needing a classifier are the pipeline's."""
    ckpt, ref = reference
    folder = hand_written(ckpt, tmp_path / "exported", {"backbone": "conv4", "license": "CC0"})
    store = ["--out", tmp_path / "runs", "--results", tmp_path / "results", "--leaderboards", tmp_path / "lb"]
    # the card lists no source classes, and the task has two counts
    assert cli(["evaluate", "glyphs-smoke", "--checkpoint", folder, *store]) == 2
    assert "give one --source-classes and one --seed" in capsys.readouterr().err
    assert cli(["evaluate", "glyphs-smoke", "--checkpoint", folder, "--source-classes", 5, *store]) == 0
    df = read(tmp_path / "lb" / "glyphs-smoke.csv")
    assert (df["model"] == "exported").all() and (~df["pretrained"]).all()
    assert (df["checkpoint"] == str(folder.resolve())).all() and df["device"].isna().all()
    same_numbers(df, ref, FEATURE_COLUMNS)
    assert df[CLASSIFIER_COLUMNS].isna().all().all()
    adopted, = (tmp_path / "runs" / "checkpoints").iterdir()
    card = read_card(adopted)
    assert card.preprocessing == read_card(ckpt).preprocessing and card.extra["license"] == "CC0"
    assert card.extra["adopted_from"] == str((folder / "card.json").resolve())


def _bad(folder: Path, **files) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


BAD_CARDS = {
    "no-backbone": ({"name": "x"}, ["card.json: field 'backbone': required"]),
    "backbone-not-a-string": ({"backbone": 4}, ["field 'backbone': expected a string, got 4"]),
    "options-not-an-object": ({"backbone": "conv4", "backbone_options": [1]},
                              ["field 'backbone_options': expected an object, got [1]"]),
    "preprocessing-without-mean": ({"backbone": "conv4", "preprocessing": {"image_size": [32, 32], "channels": 1}},
                                   ["field 'preprocessing'", "mean and std"]),
    "sha256-not-hex": ({"backbone": "conv4", "sha256": "abc"}, ["field 'sha256': expected 64 lowercase hex digits"]),
    "sha256-mismatch": ({"backbone": "conv4", "sha256": "0" * 64}, ["model.safetensors' has sha256", "truncated or modified"]),
    "weights-outside": ({"backbone": "conv4", "weights": "../w.safetensors"},
                        ["field 'weights': must be a file name in the card's folder"]),
    "weights-missing": ({"backbone": "conv4", "weights": "other.safetensors"}, ["other.safetensors' named by the card"]),
    "source-classes-not-names": ({"backbone": "conv4", "source_classes": [1, 2]}, ["field 'source_classes'"]),
}


@pytest.mark.parametrize("case", [*BAD_CARDS, "card-not-json", "no-card"])
def test_bad_card_is_one_line_naming_the_field(tmp_path, capfd, case):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    safetensors.torch.save_file({"w": torch.zeros(2)}, folder / "model.safetensors")
    if case in BAD_CARDS:
        card, needles = BAD_CARDS[case]
        _bad(folder, **{"card.json": json.dumps(card)})
    elif case == "card-not-json":
        _bad(folder, **{"card.json": "{backbone: conv4"})
        needles = ["card.json' is unreadable"]
    else:
        needles = ["card.json' not found", "expected a checkpoint folder holding card.json"]
    store = ["--out", tmp_path / "runs", "--results", tmp_path / "results", "--leaderboards", tmp_path / "lb"]
    assert cli(["evaluate", "glyphs-smoke", "--checkpoint", folder, "--source-classes", 5, *store]) == 2
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ncbench evaluate: error: "), err
    assert str(folder) in lines[0]
    for needle in needles:
        assert needle in lines[0]
    assert not (tmp_path / "results").exists() and not (tmp_path / "lb").exists()


def test_checkpoint_with_a_backbone_is_refused(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    safetensors.torch.save_file({"w": torch.zeros(2)}, folder / "model.safetensors")
    (folder / "card.json").write_text(json.dumps({"backbone": "conv4"}))
    argv = ["evaluate", "glyphs-smoke", "--checkpoint", folder, "--backbone", "tiny-conv", "--source-classes", 5,
            "--out", tmp_path / "runs", "--results", tmp_path / "results", "--leaderboards", tmp_path / "lb"]
    assert cli(argv) == 2
    assert "--backbone / --backbone-option: not with --checkpoint" in capsys.readouterr().err


# ------------------------------------------------------------------------------ broken backbones
BROKEN = """
from torch import nn

class Net(nn.Module):
    def __init__(self, in_channels=3, image_size=32):
        super().__init__()
        self.lin = nn.Linear(10, 4)

    def forward(self, x):  # [B, C, H, W] fed to a Linear(10, 4): fails
        return self.lin(x)
"""


@pytest.mark.slow
def test_broken_submission_is_one_line_the_traceback_only_with_verbose(tmp_path, capfd, caplog):
    """`submit` checks the untrusted backbone in its sandbox process: one error line, from this process."""
    (tmp_path / "broken.py").write_text(BROKEN)
    argv = ["submit", tmp_path / "broken.py:Net", "--name", "x", "--tasks", "glyphs-smoke", "--out", tmp_path / "runs",
            "--results", tmp_path / "results", "--leaderboards", tmp_path / "lb"]
    assert cli(argv) == 2
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ncbench submit: error: backbone '{tmp_path / 'broken.py:Net'}'")
    assert "forward pass on a dummy batch" in lines[0] and "mat1 and mat2 shapes cannot be multiplied" in lines[0]
    caplog.set_level("DEBUG", logger="ncbench")  # what --verbose sets outside pytest, whose handlers it keeps
    assert cli(["--verbose", *argv]) == 2
    err = capfd.readouterr().err  # the sandbox process's traceback, and this process's (as a log record)
    assert "Traceback (most recent call last)" in err and 'broken.py", line 10, in forward' in err
    assert any(r.exc_info for r in caplog.records if r.name == "ncbench")


def test_run_with_a_broken_backbone_logs_no_traceback(tiny_task_file, tmp_path, capfd, caplog):
    """`run` keeps its contract (a failed row, exit 1); the log says why in one line, the traceback is a
    debug record (shown with --verbose)."""
    (tmp_path / "broken.py").write_text(BROKEN)
    argv = ["run", tiny_task_file(source_classes=[4]), "--backbone", tmp_path / "broken.py:Net", "--trust-backbone",
            "--workers", 1, "--out", tmp_path / "runs", "--results", tmp_path / "results", "--leaderboards", tmp_path / "lb"]
    caplog.set_level("DEBUG", logger="ncbench")
    assert cli(argv) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err and "1 of 1 units failed: broken.py-net.glyphs-s4-seed0" in err
    shown = [r for r in caplog.records if r.levelno >= 20]
    errors = [r.getMessage() for r in shown if r.levelno >= 40]
    assert len(errors) == 1 and "\n" not in errors[0] and "mat1 and mat2 shapes cannot be multiplied" in errors[0]
    assert not any("Traceback" in r.getMessage() or r.exc_info for r in shown)
    assert any("Traceback (most recent call last)" in r.getMessage() for r in caplog.records if r.levelno == 10)


def test_a_leaderboard_written_before_the_pretrained_column_reads_as_pretrained(tmp_path):
    """Rows of a CSV without the ``pretrained`` column were all pretrained by ncbench."""
    from ncbench.leaderboard import to_csv_text
    from ncbench.results import Provenance, Result, Status, UnitKey

    key = UnitKey("t", 1, "m", "conv4", 5, 0, "abc")
    rows = rows_from_record(Result(Status.FAILED, key, Provenance(checkpoint="m.t-s5-seed0"), error="boom"))
    old = to_frame(rows).drop(columns=["pretrained"])
    (tmp_path / "t.csv").write_text(to_csv_text(old))
    df = read(tmp_path / "t.csv")
    assert list(df.columns) == list(columns()) and df["pretrained"].tolist() == [True]
    assert df["error"].tolist() == ["boom"]
