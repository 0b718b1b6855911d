"""Multi-process pretraining: two processes launched by torchrun on the gloo backend (CPU) train one unit
with DistributedDataParallel; rank 0 writes a valid checkpoint and result that record the world size."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_task_dict

from ncbench import distributed
from ncbench.checkpoint import load_checkpoint, read_card, read_weights
from ncbench.leaderboard import build

HERE = Path(__file__).resolve().parent
PLAIN_MLP = f"{HERE / 'backbones' / 'plain_mlp.py'}:plain_mlp"


def ncbench(*args: str, cwd: Path, nproc: int = 0) -> subprocess.CompletedProcess:
    """``ncbench ARGS`` in a subprocess; with ``nproc`` > 0 launched by torchrun as that many processes."""
    env = {**os.environ, "NCBENCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc else []
    return subprocess.run([sys.executable, *launcher, "-m", "ncbench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def write_task(path: Path, **over) -> Path:
    path.write_text(yaml.safe_dump(tiny_task_dict(**over)))
    return path


def test_torchrun_trains_each_unit_with_two_processes_and_rank0_writes_once(tmp_path):
    task = write_task(tmp_path / "tiny.yaml")
    done = ncbench("run", str(task), "--out", "runs", "--results", "results", "--leaderboards", "boards",
                   cwd=tmp_path, nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("joined process group: rank 0 of 2 (gloo)") == 1
    assert done.stderr.count("training tiny-conv with DistributedDataParallel on 2 processes (cpu)") == 2  # 2 units
    ckpts = sorted((tmp_path / "runs" / "checkpoints").iterdir())
    assert len(ckpts) == 2
    for ckpt in ckpts:
        model, card = load_checkpoint(ckpt)  # sha256 verified
        assert card.world_size == 2 and card.device == "cpu" and 0 <= card.train_acc <= 1
        assert not (ckpt / "resume").exists()
    results = sorted((tmp_path / "results").rglob("*.json"))
    assert len(results) == 2
    for path in results:
        rec = json.loads(path.read_text())
        assert rec["status"] == "ok" and rec["provenance"]["world_size"] == 2
    board = build(tmp_path / "results", "tiny")
    assert len(board) == 2 * 3 * 2 and (board["world_size"] == 2).all() and (board["status"] == "ok").all()


def test_ddp_follows_single_process_training_without_batchnorm(tmp_path):
    """Without per-process batch statistics, the loss scaling makes DDP's averaged gradient the whole
    batch's: two processes end with the weights of one, up to float rounding. Batches of 15 split 8 + 7,
    so averaging the two processes' mean losses unscaled would not be the batch's mean."""
    task = write_task(tmp_path / "tiny.yaml", pretrain={"epochs": 3, "batch_size": 15, "track_every": 0})
    args = ["evaluate", str(task), "--backbone", PLAIN_MLP, "--trust-backbone", "--source-classes", "8", "--seed", "0"]
    one = ncbench(*args, "--out", "one", "--results", "one/results", cwd=tmp_path)
    two = ncbench(*args, "--out", "two", "--results", "two/results", cwd=tmp_path, nproc=2)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert len(two.stdout.split()) == 1  # one result path: only rank 0 prints
    (a,), (b,) = ((tmp_path / d / "checkpoints").iterdir() for d in ("one", "two"))
    assert (read_card(a).world_size, read_card(b).world_size) == (1, 2)
    wa, wb = read_weights(a / "model.safetensors"), read_weights(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    moved = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert moved < 1e-5, f"DDP weights differ from single-process ones by up to {moved}"
    la, lb = (pd.read_csv(d / "curve.csv")["loss"].to_numpy() for d in (a, b))
    assert la[-1] < la[0]  # it did train ...
    assert abs(la - lb).max() < 1e-5  # ... and the group's loss is the whole batch's mean loss, epoch by epoch
    rec = json.loads(next((tmp_path / "two" / "results").rglob("*.json")).read_text())
    assert rec["status"] == "ok" and rec["provenance"]["world_size"] == 2


def test_a_sandboxed_backbone_cannot_join_distributed_training(tmp_path):
    task = write_task(tmp_path / "tiny.yaml")
    done = ncbench("pretrain", str(task), "--backbone", PLAIN_MLP, "--source-classes", "4", "--seed", "0",
                   "--out", "runs", cwd=tmp_path, nproc=2)
    assert done.returncode != 0
    assert "cannot join distributed training: pass --trust-backbone" in done.stderr
    assert not (tmp_path / "runs" / "checkpoints").exists() or not any((tmp_path / "runs" / "checkpoints").rglob("card.json"))


def test_one_process_is_not_a_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with distributed.session() as where:
        assert where == distributed.Place(0, 0, 1) and where.is_main
        assert not torch.distributed.is_initialized()
        assert distributed.all_sum([1.5, 2.0]) == [1.5, 2.0]
        distributed.barrier()  # no-op
    monkeypatch.setenv("NCBENCH_DEVICE", "cpu")
    assert distributed.device() == torch.device("cpu")


@pytest.mark.parametrize("env, message", [
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 and WORLD_SIZE=2 do not describe a process group"),
    ({"RANK": "0", "WORLD_SIZE": "two"}, "environment variable WORLD_SIZE must be an integer, got 'two'"),
])
def test_a_bad_launcher_environment_is_named(monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message):
        with distributed.session():
            pass
