"""The pipeline end to end on a tiny task: results, leaderboard, skipping, failures, cache, pairing, submit."""

import csv
import json
import textwrap

import numpy as np
import pandas as pd
import pytest

from ncbench import leaderboard
from ncbench.cli import main
from ncbench.results import load_result
from ncbench.run import run_task
from ncbench.unit import RunOptions, plan_units
from ncbench.tasks import load_task


@pytest.fixture
def opts(tmp_path):
    return RunOptions(out=tmp_path / "runs", results=tmp_path / "results")


def test_run_writes_results_and_leaderboard(tiny_task_file, opts, tmp_path):
    task = load_task(tiny_task_file())
    statuses = run_task(task, opts)
    assert [(u.source_classes, st) for u, st in statuses] == [(4, "ok"), (8, "ok")]
    files = sorted((opts.results / "tiny").rglob("*.json"))
    assert len(files) == 2
    rec = load_result(files[0])
    assert rec.unit.source_classes == 4 and rec.unit.task_version == 1
    assert len(rec.source_classes) == 4 and len(rec.training_curve) == 3  # epochs 0, 1, 2 tracked
    for ep in rec.episodes:
        acc = np.array(ep.per_episode)
        assert ep.n == 20 and len(acc) == 20 and ((acc >= 0) & (acc <= 1)).all()
        assert ep.acc_mean == pytest.approx(acc.mean())
        assert ep.acc_ci95 == pytest.approx(1.96 * acc.std(ddof=1) / np.sqrt(20))
    src = rec.source
    assert 0 <= src["source_train_acc"] <= 1 and src["cdnv_train"] > 0 and src["nc1"] > 0
    assert 1 <= src["effective_depth"] <= 2  # tiny-conv flat: block1, penultimate (= block2 flattened)
    assert {(l["variant"], l["layer"]) for l in rec.layers} >= {("flat", "penultimate"), ("pooled", "penultimate")}
    # one definition: the leaderboard's layer curves are the training curve's last tracked ones
    n_train = 4 * task.train_per_class
    assert all(l["n"] == n_train for l in rec.layers)  # every source train image
    assert src["effective_depth"] == rec.training_curve[-1]["effective_depth"]
    flat = [l for l in rec.layers if l["variant"] == "flat"]
    assert src["effective_depth_reached"] is any(l["ncc_errors"] <= task.layer_eps * l["n"] for l in flat)
    last = [r for r in csv.DictReader(open(next((opts.out / "checkpoints").glob("*s4-*")) / "layer_curve.csv"))
            if r["epoch"] == "2"]
    assert [(r["layer"], r["variant"], int(r["ncc_errors"])) for r in last] == \
        [(l["layer"], l["variant"], l["ncc_errors"]) for l in rec.layers]
    assert src["nc1_subset5"] > 0 and src["nc1_quotient"] > 0 and src["nc_rank_limited"] is False

    paths = leaderboard.rebuild(opts.results, tmp_path / "lb")
    df = leaderboard.read(paths[0])
    assert len(df) == 2 * 3 * 2  # units x heads x shots
    assert set(df["head"]) == {"ridge", "ncc", "ncc-cl2n"} and df["status"].eq("ok").all()
    first = paths[0].read_bytes()
    leaderboard.rebuild(opts.results, tmp_path / "lb")
    assert paths[0].read_bytes() == first  # byte-for-byte reproducible


def test_rerun_skips_finished_units_and_reuses_features(tiny_task_file, opts, monkeypatch):
    task = load_task(tiny_task_file(source_classes=[4]))
    run_task(task, opts)
    before = {p: p.read_bytes() for p in opts.results.rglob("*.json")}

    import ncbench.run

    monkeypatch.setattr(ncbench.run, "run_unit", lambda *a, **k: pytest.fail("finished unit re-run"))
    assert [st for _, st in run_task(task, opts)] == ["ok"]
    assert {p: p.read_bytes() for p in opts.results.rglob("*.json")} == before
    monkeypatch.undo()

    # forced re-run: the checkpoint and every feature come from disk, nothing is recomputed
    import ncbench.features

    monkeypatch.setattr(ncbench.features, "extract", lambda *a, **k: pytest.fail("features recomputed"))
    forced = RunOptions(out=opts.out, results=opts.results, force=True)
    assert [st for _, st in run_task(task, forced)] == ["ok"]
    (path,) = before
    old, new = json.loads(before[path]), load_result(path)
    assert old["episodes"] == new.to_dict()["episodes"] and old["source"] == new.source


def test_failed_unit_is_a_row_with_its_error(tiny_task_file, opts, tmp_path):
    task = load_task(tiny_task_file(source_classes=[4, 99]))  # the source pool has 15 classes
    statuses = run_task(task, opts)
    assert [st for _, st in statuses] == ["ok", "failed"]
    df = leaderboard.build(opts.results, "tiny")
    failed = df[df["status"] == "failed"]
    assert len(failed) == 1 and failed["source_classes"].iloc[0] == 99
    assert "source_classes: 99 asked, the source pool has 15 classes" in failed["error"].iloc[0]
    assert pd.isna(failed["head"].iloc[0]) and pd.isna(failed["acc_mean"].iloc[0])


def test_episodes_identical_across_backbones(tiny_task_file, opts):
    task = load_task(tiny_task_file(source_classes=[4]))
    run_task(task, opts)
    run_task(task, RunOptions(out=opts.out, results=opts.results, backbone="tiny-mlp"))
    df = leaderboard.build(opts.results, "tiny")
    assert set(df["model"]) == {"tiny-conv", "tiny-mlp"}
    hashes = df.groupby("shots")["episodes_hash"].nunique()
    assert (hashes == 1).all()
    # same episodes, different features: per-episode accuracies differ
    a, b = (load_result(p) for p in sorted(opts.results.rglob("*.json")))
    assert a.provenance.episodes == b.provenance.episodes
    assert a.episodes[0].per_episode != b.episodes[0].per_episode


def test_grid_and_overrides(tiny_task_file):
    task = load_task(tiny_task_file(seeds=[0, 1]))
    units = plan_units(task, RunOptions())
    assert [(u.source_classes, u.seed) for u in units] == [(4, 0), (4, 1), (8, 0), (8, 1)]
    assert len({u.config_hash for u in units}) == 4
    (u,) = plan_units(task, RunOptions(backbone="tiny-mlp", model="mine", seeds=[3], source_classes=[8]))
    assert (u.model, u.backbone, u.seed, u.source_classes, u.backbone_options) == ("mine", "tiny-mlp", 3, 8, {})


def test_submit_adds_rows_and_protects_names(tiny_task_file, tmp_path, capsys):
    task_file = tiny_task_file(source_classes=[4])
    net = tmp_path / "mynet.py"
    net.write_text(textwrap.dedent("""
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self, in_channels, image_size):
                super().__init__()
                h, w = image_size if isinstance(image_size, (list, tuple)) else (image_size, image_size)
                self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, 12), nn.ReLU())
                self.feature_dim = 12

            def forward(self, x):
                return self.body(x)

        def backbone(in_channels=1, image_size=16):
            return Net(in_channels, image_size)
    """))
    store = ["--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
             "--leaderboards", str(tmp_path / "lb")]
    assert main(["run", str(task_file), *store]) == 0
    assert main(["submit", f"{net}:backbone", "--name", "mynet", "--tasks", str(task_file), *store]) == 0
    df = leaderboard.read(tmp_path / "lb" / "tiny.csv")
    assert set(df["model"]) == {"tiny-conv", "mynet"} and len(df) == 2 * 6
    # a name already used by another backbone is refused, nothing on disk changes
    before = (tmp_path / "lb" / "tiny.csv").read_bytes()
    assert main(["submit", "tiny-mlp", "--name", "mynet", "--tasks", str(task_file), *store]) == 2
    assert "already on" in capsys.readouterr().err
    assert (tmp_path / "lb" / "tiny.csv").read_bytes() == before


def test_submit_rejects_broken_backbone(tmp_path, tiny_task_file, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch.nn as nn\ndef backbone(**kw):\n    return nn.Identity()\n")
    rc = main(["submit", f"{bad}:backbone", "--name", "bad", "--tasks", str(tiny_task_file()),
               "--results", str(tmp_path / "r"), "--leaderboards", str(tmp_path / "lb")])
    assert rc == 2 and str(bad) in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_unknown_task_suggests(capsys):
    assert main(["run", "glyph"]) == 2
    assert "did you mean 'glyphs'" in capsys.readouterr().err


NUMBERS = ["acc_mean", "acc_ci95", "target_cdnv", "target_ncc_acc", "cdnv_train", "nc1", "nc4", "episodes_hash",
           "checkpoint_sha256", "effective_depth"]


def run_cli(task_file, root, **popen):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "ncbench", "run", str(task_file), "--out", str(root / "runs"),
           "--results", str(root / "results"), "--leaderboards", str(root / "lb")]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_leaderboard(tiny_task_file, tmp_path):
    """SIGKILL during pretraining, then the same command again: same numbers as an uninterrupted run."""
    import time

    task_file = tiny_task_file(source_classes=[4, 8], pretrain={"epochs": 30, "batch_size": 16, "track_every": 5})
    assert run_cli(task_file, tmp_path / "clean").wait() == 0

    killed = tmp_path / "killed"
    proc = run_cli(task_file, killed)
    deadline = time.monotonic() + 300
    while not list((killed / "runs" / "checkpoints").glob("*/resume/*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (killed / "lb" / "tiny.csv").exists() or proc.returncode != 0
    assert run_cli(task_file, killed).wait() == 0

    clean = leaderboard.read(tmp_path / "clean" / "lb" / "tiny.csv")
    resumed = leaderboard.read(killed / "lb" / "tiny.csv")
    pd.testing.assert_frame_equal(clean[leaderboard.KEY + NUMBERS], resumed[leaderboard.KEY + NUMBERS])
