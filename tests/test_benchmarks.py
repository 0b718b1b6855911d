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

# script -> (arguments of a small run (``{task}`` is a tiny task file), a line its output must hold)
SMALL = {
    "executor.py": (["--task", "{task}", "--seeds", "0", "--source-classes", "4", "--workers", "2", "--threads", "1"],
                    "leaderboard identical: True"),
    "heads.py": (["--episodes", "40", "--subset", "4", "--classes", "12", "--per-class", "20", "--dim", "16",
                  "--repeat", "1"], "ridge speed-up"),
    "metrics.py": (["--classes", "20", "--samples", "2000", "--dim", "16", "--batch-size", "500"], "ratio per-pair loop"),
    "pretrain.py": (["--backbone", "tiny-conv", "--classes", "4", "--per-class", "12", "--epochs", "1", "--repeats", "1",
                     "--batch-size", "16", "--collapse-epochs", "2", "--threads", "1"], "collapse of tiny-conv"),
}


def test_every_benchmark_has_a_small_run():
    assert sorted(SMALL) == SCRIPTS, "add a small run of each script in benchmarks/ to SMALL"


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_at_a_small_size(script, tmp_path):
    task = tmp_path / "tiny.yaml"
    task.write_text(yaml.safe_dump(tiny_task_dict(pretrain={"epochs": 2, "batch_size": 16, "track_every": 1})))
    args, expected = SMALL[script]
    runner = [sys.executable] if script.endswith(".py") else ["bash"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "NCBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([*runner, str(ROOT / "benchmarks" / script), *(a.format(task=task) for a in args)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expected in proc.stdout, proc.stdout[-3000:]
