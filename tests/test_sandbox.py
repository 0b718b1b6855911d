"""Untrusted backbones run in a sandbox process: crashes, hangs and memory hogs fail their own row only;
sandboxed numbers equal in-process ones; weights and features are read as safetensors, never unpickled."""

import hashlib
import json
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ncbench import leaderboard
from ncbench.checkpoint import CheckpointError, load_checkpoint, read_card, read_weights
from ncbench.cli import main
from ncbench.layerwise import LayerCurves
from ncbench.results import iter_results
from ncbench.run import run_task
from ncbench.unit import RunOptions, UnitFeatures
from ncbench.sandbox import SandboxError, load_features, save_features
from ncbench.tasks import load_task

NET = """
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self, in_channels, image_size, hang=False):
            super().__init__()
            h, w = image_size if isinstance(image_size, (list, tuple)) else (image_size, image_size)
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, 12), nn.ReLU())
            self.feature_dim = 12
            self.hang = hang

        def forward(self, x):
            if self.hang:
                time.sleep(3600)
            return self.body(x)
"""

# Pretraining builds the backbone under torch.manual_seed(unit seed): the seed picks the misbehaviour, so
# one run holds misbehaving units and a well-behaved one (seed 1004).
MISBEHAVING = NET + """
    def backbone(in_channels=1, image_size=16):
        seed = torch.initial_seed()
        if seed == 1000:
            os.kill(os.getpid(), signal.SIGSEGV)
        if seed == 1001:
            os._exit(7)
        if seed == 1002:
            torch.empty(4 * 2**30)  # 16 GB of address space: over an 8 GB limit, harmless without one
        return Net(in_channels, image_size, hang=seed == 1003)
"""

GOOD = NET + """
    def backbone(in_channels=1, image_size=16):
        return Net(in_channels, image_size)
"""


def write_net(path, body):
    path.write_text("import os, signal, time\nimport torch\n" + textwrap.dedent(body))
    return f"{path}:backbone"


@pytest.fixture
def small_task(tiny_task_file):
    def make(seeds):
        return load_task(tiny_task_file(source_classes=[4], seeds=seeds,
                                        pretrain={"epochs": 1, "batch_size": 16, "track_every": 0}))
    return make


def rows(results):
    return {r.unit.seed: r for _, r in iter_results(results)}


@pytest.mark.slow
def test_crash_exit_memory_and_hang_fail_their_own_rows(small_task, tmp_path):
    spec = write_net(tmp_path / "misbehaving.py", MISBEHAVING)
    opts = RunOptions(out=tmp_path / "runs", results=tmp_path / "results", backbone=spec, memory_gb=8, timeout_s=30)
    statuses = run_task(small_task([1000, 1001, 1002, 1003, 1004]), opts)
    assert [st for _, st in statuses] == ["failed"] * 4 + ["ok"]
    rec = rows(opts.results)
    assert "crashed with signal SIGSEGV" in rec[1000].error
    assert "crashed with exit code 7" in rec[1001].error
    assert "memory limit 8 GB exceeded" in rec[1002].error and "can't allocate memory" in rec[1002].error
    assert "timeout after 30 s" in rec[1003].error
    assert all(spec in rec[s].error for s in range(1000, 1004))
    assert rec[1004].target["ncc_acc"] > 0 and len(rec[1004].episodes) == 6
    assert not list((tmp_path / "runs").glob(".sandbox-*"))  # job folders are removed
    df = leaderboard.build(opts.results, "tiny")
    assert df.groupby("seed")["status"].first().to_dict() == {1000: "failed", 1001: "failed", 1002: "failed",
                                                              1003: "failed", 1004: "ok"}
    assert set(df["model"]) == {"misbehaving.py-backbone"} and set(df["backbone"]) == {spec}


def _alive(pid):
    try:  # a zombie (state Z) has exited; only its parent has not reaped it yet
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_killed_harness_takes_its_sandbox_child_down(tiny_task_file, tmp_path):
    pidfile = tmp_path / "child.pid"
    spec = write_net(tmp_path / "hang.py", f"""
        def backbone(in_channels=1, image_size=16):
            open({str(pidfile)!r}, "w").write(str(os.getpid()))
            time.sleep(3600)
    """)
    cmd = [sys.executable, "-m", "ncbench", "run", str(tiny_task_file(source_classes=[4])), "--backbone", spec,
           "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--leaderboards", str(tmp_path / "lb")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert _alive(child)
    proc.kill()
    proc.wait()
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)  # the kernel killed the orphan (PR_SET_PDEATHSIG)
    assert not (tmp_path / "results").exists()


def test_sandboxed_numbers_equal_in_process(small_task, tmp_path, capsys):
    spec = write_net(tmp_path / "good.py", GOOD)
    task = small_task([0])
    module = "ncbench_user_backbone_" + hashlib.sha1(str((tmp_path / "good.py").resolve()).encode()).hexdigest()[:12]
    records, imported = {}, {}
    for name, isolate in (("sandbox", None), ("in-process", False)):
        opts = RunOptions(out=tmp_path / name, results=tmp_path / name / "results", backbone=spec, isolate=isolate)
        assert [st for _, st in run_task(task, opts)] == ["ok"]
        (records[name],) = rows(opts.results).values()
        imported[name] = module in sys.modules
        if isolate is None:  # `ncbench pretrain` goes through the sandbox too, and finds the finished checkpoint
            capsys.readouterr()
            assert main(["pretrain", task.path, "--backbone", spec, "--source-classes", "4", "--seed", "0",
                         "--out", str(opts.out)]) == 0
            (ckpt,) = (opts.out / "checkpoints").iterdir()
            assert capsys.readouterr().out.strip() == str(ckpt) and module not in sys.modules
    a, b = records["sandbox"], records["in-process"]
    for key in ("source", "target", "layers", "episodes", "source_classes", "training_curve"):
        assert getattr(a, key) == getattr(b, key), key
    assert a.provenance.checkpoint_sha256 == b.provenance.checkpoint_sha256
    # the child normalised with the same source-pool statistics as this process
    cards = [read_card(next((tmp_path / name / "checkpoints").iterdir())) for name in ("sandbox", "in-process")]
    assert cards[0].preprocessing == cards[1].preprocessing
    assert cards[0].preprocessing["normalization"]["source"] == "source-pool train images"
    # the sandboxed run never imported the submission here: its code ran only in the child
    assert imported == {"sandbox": False, "in-process": True}


def test_submit_validates_untrusted_backbone_in_sandbox(tmp_path, tiny_task_file, capsys):
    crash = tmp_path / "crash.py"
    crash.write_text("import os\ndef backbone(**kw):\n    os._exit(9)\n")
    rc = main(["submit", f"{crash}:backbone", "--name", "crash", "--tasks", str(tiny_task_file()),
               "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r"), "--leaderboards", str(tmp_path / "lb")])
    err = capsys.readouterr().err
    assert rc == 2 and f"backbone '{crash}:backbone': crashed with exit code 9 (check)" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "lb").exists()


@pytest.mark.parametrize("flag", ["--timeout-s", "--memory-gb"])
def test_limits_must_be_positive(flag, tiny_task_file, capsys):
    assert main(["run", str(tiny_task_file()), flag, "0"]) == 2
    assert f"{flag[2:].replace('-', '_')}: expected a positive number, got 0.0" in capsys.readouterr().err


class _Payload:
    """Unpickling this creates a file: proof that a loader ran pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickles_are_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    blob = pickle.dumps({"w": _Payload(marker)})
    for name in ("weights.pt", "features.safetensors"):
        (tmp_path / name).write_bytes(blob)
    with pytest.raises(CheckpointError, match="is a pickle; refusing to unpickle it"):
        read_weights(tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        read_weights(tmp_path / "features.safetensors")
    with pytest.raises(SandboxError, match="from the sandbox is unreadable"):
        load_features(tmp_path / "features.safetensors", tmp_path)
    # a checkpoint whose card names a pickle is refused too
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.pt").write_bytes(blob)
    card = {"backbone": "tiny-mlp", "backbone_options": {}, "feature_dim": 4, "dataset": "d", "source_classes": [],
            "num_train": 0, "recipe": {}, "seed": 0, "epochs": 0, "preprocessing": {}, "weights": "model.pt",
            "sha256": hashlib.sha256(blob).hexdigest()}
    (ckpt / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(ckpt)
    assert not marker.exists()


def test_features_file_round_trip_and_validation(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = [{"layer": "b", "variant": "flat", "ncc_error": 0.25, "ncc_errors": 1, "n": 4, "cdnv": 0.5},
            {"layer": "penultimate", "variant": "flat", "ncc_error": 0.0, "ncc_errors": 0, "n": 4, "cdnv": None}]
    feats = UnitFeatures(tmp_path, torch.randn(6, 3, generator=g), torch.randn(2, 3, generator=g),
                         LayerCurves(rows, 0.01), torch.randn(9, 3, generator=g))
    save_features(tmp_path / "f.safetensors", feats)
    back = load_features(tmp_path / "f.safetensors", tmp_path)
    assert back.layers == feats.layers and back.layers.depths == {"flat": 2}
    for k in ("train", "test", "target"):
        assert torch.equal(getattr(back, k), getattr(feats, k))

    feats.target[0, 0] = float("nan")
    save_features(tmp_path / "nan.safetensors", feats)
    with pytest.raises(SandboxError, match="target holds NaN or inf"):
        load_features(tmp_path / "nan.safetensors", tmp_path)
    bad = UnitFeatures(tmp_path, feats.train, torch.randn(2, 4), feats.layers, feats.train.clone())
    save_features(tmp_path / "shape.safetensors", bad)
    with pytest.raises(SandboxError, match=r"test: expected float32 \[N, 3\], got torch.float32 \[2, 4\]"):
        load_features(tmp_path / "shape.safetensors", tmp_path)
    forged = UnitFeatures(tmp_path, feats.train, feats.test, LayerCurves(rows, 0.01), feats.train.clone())
    object.__setattr__(forged.layers, "rows", [{**rows[0], "ncc_errors": 7}])  # more errors than images
    save_features(tmp_path / "forged.safetensors", forged)
    with pytest.raises(SandboxError, match="layer_curves metadata is malformed"):
        load_features(tmp_path / "forged.safetensors", tmp_path)