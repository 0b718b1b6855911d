"""Every script in benchmarks/ runs at a small size, so none rots unnoticed. A smoke run, not a timing:
nothing here asserts a speed (the scripts print ratios for a person to read; docs/*.md quote full runs)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_task_dict

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").iterdir() if p.is_file() and p.suffix in (".py", ".sh"))

# script -> (arguments of a small run (``{task}`` is a tiny task file), a line its output must hold), or a list of
# such runs for a script with several modes
SMALL = {
    "contention.py": (["--task", "{task}", "--source-classes", "4", "--seeds", "0", "--spinners", "1",
                       "--modes", "passive"], "passive slowdown"),
    "executor.py": (["--task", "{task}", "--seeds", "0", "--source-classes", "4", "--workers", "2", "--threads", "1"],
                    "leaderboard identical: True"),
    "heads.py": (["--episodes", "40", "--subset", "4", "--classes", "12", "--per-class", "20", "--dim", "16",
                  "--repeat", "1"], "ncc measured kernel floor"),
    "metrics.py": [(["--classes", "20", "--samples", "2000", "--dim", "16", "--batch-size", "500", "--repeat", "1"],
                    "ratio per-pair loop"),
                   (["--extrapolate", "--classes", "20", "--dim", "16", "--extrapolate-sizes", "400", "800",
                     "--batch-size", "200"], "extrapolated to ImageNet scale")],
    "pretrain.py": (["--backbone", "tiny-conv", "--classes", "4", "--per-class", "12", "--epochs", "1", "--repeats", "1",
                     "--batch-size", "16", "--collapse-epochs", "2", "--threads", "1", "--efficiency-models", "tiny-conv",
                     "--efficiency-steps", "1", "--peak-batch", "32", "--skip-compile"], "collapse of tiny-conv"),
    "startup.py": (["--only", "help", "list-tasks", "--repeat", "1"], "exit 0   (ncbench list tasks)"),
}


# scripts whose small run lives elsewhere, and where
ELSEWHERE = {"scale.py": "tests/test_scale.py (asserts the stages' figures)",
             "gpu_check.sh": "needs an NVIDIA GPU; test_gpu_check_refuses_cleanly_without_a_gpu below"}


def test_every_benchmark_has_a_small_run():
    assert sorted({*SMALL, *ELSEWHERE}) == SCRIPTS, "add a small run of each script in benchmarks/ to SMALL"


@pytest.mark.skipif(subprocess.run(["sh", "-c", "command -v nvidia-smi"], capture_output=True).returncode == 0,
                    reason="a GPU machine: gpu_check.sh would run for minutes")
def test_gpu_check_refuses_cleanly_without_a_gpu(tmp_path):
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0  # it parses
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env={**os.environ, "OUT": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "gpu_check: no NVIDIA GPU visible" in proc.stderr


RUNS = [(script, *run) for script, runs in sorted(SMALL.items()) for run in (runs if isinstance(runs, list) else [runs])]


@pytest.mark.slow
@pytest.mark.parametrize("script,args,expected", RUNS, ids=[f"{s}-{i}" for i, (s, *_) in enumerate(RUNS)])
def test_benchmark_runs_at_a_small_size(script, args, expected, tmp_path):
    task = tmp_path / "tiny.yaml"
    task.write_text(yaml.safe_dump(tiny_task_dict(pretrain={"epochs": 2, "batch_size": 16, "track_every": 1})))
    runner = [sys.executable] if script.endswith(".py") else ["bash"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "NCBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([*runner, str(ROOT / "benchmarks" / script), *(a.format(task=task) for a in args)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expected in proc.stdout, proc.stdout[-3000:]
