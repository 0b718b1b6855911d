"""`ncbench verify`: a unit's rows are reproduced bit for bit from its stored checkpoint (features re-extracted,
nothing cached read); a tampered result is a mismatch (and its old mark turns stale); a planted lookup
backbone that re-renders the public glyphs and looks each image up scores 1.0 with NC1 = 0, is flagged
implausible and one-hot, and its fresh-seed accuracy exposes it as memorised."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from ncbench import leaderboard, ranking, verify
from ncbench.cli import main
from ncbench.data import load_dataset
from ncbench.report import make_report
from ncbench.run import run_task
from ncbench.runtime import set_threads
from ncbench.stats import mean_ci95
from ncbench.tasks import load_task
from ncbench.unit import RunOptions
from conftest import tiny_task_dict

# one unit per model (s = 4, seed 0); 5-shot episodes so that the ranked view has its headline row
TASK = tiny_task_dict(name="tiny-verify", source_classes=[4], episodes={"ways": 3, "shots": [1, 5], "queries": 4,
                                                                       "count": 20})
OPTIONS = TASK["dataset"]["options"]
FRESH = 7  # the fresh render's seed

LOOKUP = f'''"""A planted lookup "backbone": at construction it re-renders the public glyph pool with the task's dataset
options; forward maps each input image to the one-hot vector of its class by exact pixel lookup (images
standardised per image, so the harness's mean / std normalisation does not hide them); an image it has never
seen maps to zeros."""
import torch
from torch import nn

from ncbench.data import load_dataset

OPTIONS = {OPTIONS!r}


def standardise(x):
    x = x.flatten(1).double()
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


class Lookup(nn.Module):
    def __init__(self, in_channels=1, image_size=16):
        super().__init__()
        ds = load_dataset("glyphs", **OPTIONS)
        self.register_buffer("keys", standardise(torch.from_numpy(ds.images).permute(0, 3, 1, 2).float()),
                             persistent=False)
        self.register_buffer("labels", torch.from_numpy(ds.labels), persistent=False)
        self.feature_dim = len(ds.class_names)
        self.scale = nn.Parameter(torch.ones(()))  # something for the optimiser

    def forward(self, x):
        dist, idx = torch.cdist(standardise(x), self.keys).min(1)
        out = torch.zeros(len(x), self.feature_dim, device=x.device)
        hit = dist < 1e-3
        out[hit.nonzero()[:, 0], self.labels[idx[hit]]] = 1.0
        return out * self.scale
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny task run by its conv net and the lookup (one unit each), its leaderboard in ``lb/``."""
    root = tmp_path_factory.mktemp("verify")
    (root / "tiny-verify.yaml").write_text(yaml.safe_dump(TASK))
    (root / "lookup.py").write_text(LOOKUP)
    task = load_task(root / "tiny-verify.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NCBENCH_THREADS", "1")
        set_threads(1)
        base = RunOptions(out=root / "runs", results=root / "results")
        assert [st for _, st in run_task(task, base)] == ["ok"]
        lookup = RunOptions(out=root / "runs", results=root / "results", backbone=f"{root / 'lookup.py'}:Lookup",
                            model="lookup", isolate=False)
        assert [st for _, st in run_task(task, lookup)] == ["ok"]
    leaderboard.rebuild(root / "results", root / "lb", [task.name], canons={task.name: leaderboard.canon(task)})
    return root, task


def options(root, **kw):
    kw = {"units": None, "fresh_seed": FRESH, "threads": 1, **kw}
    return verify.VerifyOptions(results=root / "results", leaderboards=root / "lb", out=root / "runs", **kw)


def copy_of(root, tmp_path):
    for name in ("results", "lb", "runs"):
        shutil.copytree(root / name, tmp_path / name)
    return tmp_path


def test_fresh_render_keeps_the_classes_and_changes_the_images():
    public, fresh = load_dataset("glyphs", **OPTIONS), load_dataset("glyphs", **OPTIONS, distortion_seed=FRESH)
    assert public.class_names == fresh.class_names and np.array_equal(public.labels, fresh.labels)
    assert np.array_equal(public.split, fresh.split) and public.images.shape == fresh.images.shape
    assert (public.images != fresh.images).any(axis=(1, 2, 3)).all()  # every image is new
    again = load_dataset("glyphs", **OPTIONS, distortion_seed=OPTIONS["seed"])
    assert np.array_equal(again.images, public.images)  # the default is distortion_seed = seed


def test_committed_rows_of_a_real_backbone_verify_bit_identically(setup, tmp_path):
    root, task = setup
    root = copy_of(root, tmp_path)
    shutil.rmtree(root / "runs" / "features")  # re-extraction is the point: nothing cached to lean on
    rows = verify.verify_task(task, options(root, models=["tiny-conv"]))
    assert len(rows) == 6 and set(rows["head"]) == {"ridge", "ncc", "ncc-cl2n"} and set(rows["shots"]) == {1, 5}
    assert rows["verdict"].eq("verified").all(), rows[["head", "shots", "verdict", "note"]]
    assert rows["identical"].all() and rows["delta"].eq(0).all() and rows["metrics_max_rel_diff"].eq(0).all()
    assert rows["checkpoint_match"].all() and rows["one_hot_share"].eq(0).all() and rows["flags"].isna().all()
    assert rows["fresh_seed"].eq(FRESH).all() and rows["fresh_acc"].between(0, 1).all()
    assert ((rows["claimed_acc"] - rows["fresh_acc"]) <= rows["fresh_threshold"]).all()  # generalises
    assert not (root / "runs" / "features").exists() or not any((root / "runs" / "features").rglob("*.safetensors"))

    path = verify.write(root / "lb", task.name, rows)
    assert path == root / "lb" / "tiny-verify-verified.csv"
    back = verify.read(root / "lb", task.name)
    assert back[["model", "head", "shots", "verdict"]].equals(rows[["model", "head", "shots", "verdict"]])
    assert np.allclose(back["claimed_acc"], rows["claimed_acc"], rtol=1e-7, atol=0)  # written with 8 digits
    leaderboard.refresh_view(root / "results", root / "lb", task.name)
    md = (root / "lb" / "tiny-verify.md").read_text()
    assert "| verified |" in md and "| 1/1 ✓ |" in md
    # the README block is the leaderboard's own table: no verification column
    view = ranking.ranked_view(leaderboard.read(root / "lb" / "tiny-verify.csv"), task.name,
                               verification=verify.current(back, root / "results"))
    assert "verified" not in ranking.readme_block(view).split("Legend")[0]
    # a full rebuild keeps the marks (the view reads the verification file too)
    leaderboard.rebuild(root / "results", root / "lb", [task.name])
    assert (root / "lb" / "tiny-verify.md").read_text() == md


def tamper(path: Path) -> None:
    """Claim accuracy 1.0 on every episode of the ridge 1-shot block, consistently (mean and CI recomputed)."""
    rec = json.loads(path.read_text())
    (ep,) = [e for e in rec["episodes"] if (e["head"], e["shots"]) == ("ridge", 1)]
    ep["per_episode"] = [1.0] * ep["n"]
    ep["acc_mean"], ep["acc_ci95"], _ = mean_ci95(ep["per_episode"])
    path.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")


def test_a_tampered_result_is_a_mismatch_and_its_old_mark_turns_stale(setup, tmp_path):
    root, task = setup
    root = copy_of(root, tmp_path)
    verify.write(root / "lb", task.name, verify.verify_task(task, options(root, models=["tiny-conv"], fresh=False)))
    (result,) = (root / "results" / task.name / "tiny-conv").glob("*.json")
    tamper(result)
    # re-hashed everywhere the harness checks: the file validates, the leaderboard and manifest accept it
    leaderboard.rebuild(root / "results", root / "lb", [task.name], update_manifest=True,
                        canons={task.name: leaderboard.canon(task)})
    board = leaderboard.read(root / "lb" / "tiny-verify.csv")
    row = board[board["model"].eq("tiny-conv") & board["head"].eq("ridge") & board["shots"].eq(1)]
    assert row["acc_mean"].iloc[0] == 1.0
    marks = verify.current(verify.read(root / "lb", task.name), root / "results")
    assert marks.loc[marks["model"].eq("tiny-conv"), "verdict"].eq(verify.STALE).all()
    assert "tiny-conv: s=4 seed 0: stale" in (root / "lb" / "tiny-verify.md").read_text()

    rows = verify.verify_task(task, options(root, models=["tiny-conv"], fresh=False))
    bad = rows[rows["verdict"].eq("mismatch")]
    assert list(zip(bad["head"], bad["shots"])) == [("ridge", 1)]
    assert bad["claimed_acc"].iloc[0] == 1.0 and bad["reproduced_acc"].iloc[0] < 1.0 and bad["tolerance"].iloc[0] == 1e-6
    assert rows.loc[rows["verdict"].ne("mismatch"), "verdict"].eq("verified").all()
    merged = verify.merge(verify.read(root / "lb", task.name), rows)
    assert len(merged) == 6 and merged["verdict"].eq("mismatch").sum() == 1  # replaced per key


def test_a_planted_lookup_backbone_is_flagged_and_exposed_by_the_fresh_seed(setup, tmp_path, capsys):
    root, task = setup
    root = copy_of(root, tmp_path)
    board = leaderboard.read(root / "lb" / "tiny-verify.csv")
    lookup = board[board["model"].eq("lookup")]
    assert lookup["acc_mean"].eq(1.0).all() and (lookup["nc1"] <= 1e-12).all()  # it "wins"
    assert verify.implausible(board).tolist() == board["model"].eq("lookup").tolist()
    md = (root / "lb" / "tiny-verify.md").read_text()
    assert "**lookup**: 6 rows with acc≥0.999 & nc1≤0.001" in md

    argv = ["verify", str(_task_file(root, task)),
            "--results", str(root / "results"), "--leaderboards", str(root / "lb"), "--out", str(root / "runs"),
            "--model", "lookup", "--all", "--fresh-seed", str(FRESH), "--trust-backbone"]
    assert main(argv) == 1  # a check failed
    out = capsys.readouterr().out
    assert "0 verified, 0 mismatch, 6 memorised, 0 unverifiable of 6 rows (6 bit-identical)" in out
    rows = verify.read(root / "lb", task.name)
    assert rows["verdict"].eq("memorised").all() and rows["identical"].all()  # reproduced, then exposed
    assert rows["reproduced_acc"].eq(1.0).all() and (rows["fresh_acc"] < 0.6).all()  # chance is 1/3
    assert rows["one_hot_share"].eq(1.0).all()
    assert rows["flags"].eq(f"{verify.PLAUSIBILITY_FLAG}; {verify.ONE_HOT_FLAG}").all()
    md = (root / "lb" / "tiny-verify.md").read_text()
    assert "- lookup: s=4 seed 0: memorised" in md
    page = make_report(root / "lb", root / "results", root / "report").read_text()
    assert "memorised" in page and verify.PLAUSIBILITY_FLAG.replace("&", "&amp;") in page


def _task_file(root, task):
    path = root / "tiny-verify.yaml"
    if not path.is_file():
        path.write_text(yaml.safe_dump(TASK))
    return path


def test_units_without_a_checkpoint_are_unverifiable(setup, tmp_path):
    root, task = setup
    root = copy_of(root, tmp_path)
    (tmp_path / "none").mkdir()
    rows = verify.verify_task(task, options(root, models=["tiny-conv"], checkpoints=tmp_path / "none", fresh=False))
    assert rows["verdict"].eq("unverifiable").all() and rows["note"].str.contains("no checkpoint").all()
    assert rows["reproduced_acc"].isna().all()
    # an unverifiable row does not overwrite a decided one of the same result file
    decided = verify.verify_task(task, options(root, models=["tiny-conv"], fresh=False))
    assert verify.merge(decided, rows)["verdict"].eq("verified").all()


@pytest.mark.parametrize("argv, word", [(["--units", "0"], "--units"), (["--units", "2", "--all"], "--all"),
                                        (["--model", "Bad/Name"], "--model"), (["--model", "nobody"], "no finished"),
                                        (["--checkpoints", "/nonexistent"], "--checkpoints"),
                                        (["--fresh-seed", "0"], "--fresh-seed")])
def test_bad_input_is_one_line_and_exit_2(setup, tmp_path, capsys, argv, word):
    root, task = setup
    base = ["verify", str(_task_file(root, task)), "--results", str(root / "results"), "--leaderboards",
            str(tmp_path / "lb"), "--out", str(tmp_path / "runs"), "--no-fresh"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and word in err


def test_pretrain_missing_rebuilds_the_checkpoint_bit_identically(setup, tmp_path, monkeypatch):
    """Pretraining is deterministic on one machine and thread count: the re-pretrained checkpoint is the claimed
    one (same sha256) and every row is bit-identical."""
    root, task = setup
    root = copy_of(root, tmp_path)
    shutil.rmtree(root / "runs")
    monkeypatch.setenv("NCBENCH_THREADS", "1")
    rows = verify.verify_task(task, options(root, models=["tiny-conv"], fresh=False, pretrain_missing=True))
    assert rows["verdict"].eq("verified").all() and rows["identical"].all() and rows["checkpoint_match"].all()
    assert any((root / "runs" / "checkpoints").glob("tiny-conv.glyphs-s4-seed0-*/card.json"))
