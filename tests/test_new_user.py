"""The new user's path end to end, on glyphs-smoke, as the README tells it: install the wheel into a fresh
virtual environment, work from an empty folder with the installed ``ncbench`` command only, check a re-run
against the claimed leaderboard the way `make bench` does, evaluate an existing checkpoint without
pretraining, submit part of the grid with its plan line, and run the README's Python snippet. The source
checkout is only read: its `git status` is the same afterwards.

One machine, one thread count: the re-run and the evaluation of the run's own checkpoint are bit-identical
to the claimed rows, which is what the test asserts (across CPU models they agree only within the CIs)."""

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from test_api import readme_snippet

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TASK_FILES = sorted(p.name for p in (ROOT / "tasks").glob("*.yaml"))
SPLIT_FILES = sorted(p.name for p in (ROOT / "ncbench" / "data" / "splits").iterdir() if p.suffix in (".txt", ".json"))
SMALL_NET = '''
from torch import nn


class SmallNet(nn.Module):
    """images [B, in_channels, H, W] -> features [B, 32]"""

    def __init__(self, in_channels=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = 32

    def forward(self, x):
        return self.body(x)
'''


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout


def _copy_source(dest: Path) -> Path:
    """What a wheel is built from (a copy: building writes build/ and *.egg-info beside the sources)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "ncbench", dest / "ncbench", ignore=ignore)
    shutil.copytree(ROOT / "tasks", dest / "tasks", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def _install_wheel(tmp_path: Path) -> Path:
    """Build the wheel offline with this interpreter's setuptools, check what it holds, install it into a fresh
    virtual environment that sees this one's packages (torch & co.) through a .pth file; its bin folder."""
    src = _copy_source(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("ncbench-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {f"ncbench/_tasks/{n}" for n in TASK_FILES} <= names
    assert {f"ncbench/data/splits/{n}" for n in SPLIT_FILES} <= names
    assert not any(n.startswith(("tasks/", "tests/")) for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    probe = "import json, site; print(json.dumps(site.getsitepackages()))"
    site_dirs = json.loads(subprocess.run([str(py), "-c", probe], capture_output=True, text=True, check=True).stdout)
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (Path(site_dirs[0]) / "ncbench-test-deps.pth").write_text("\n".join(ours) + "\n")
    # --ignore-installed: never touch the editable install of the environment the .pth file points at
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "--quiet",
                    str(wheel)], check=True, timeout=300)
    return venv / "bin"


@pytest.mark.slow
def test_the_new_users_path_on_glyphs_smoke(tmp_path):
    before = _git_status()
    bin_dir = _install_wheel(tmp_path)
    home = tmp_path / "home"  # an empty folder: no tasks/, no checkout
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NCBENCH_TASKS", "VIRTUAL_ENV")}
    env.update(NCBENCH_CACHE=str(tmp_path / "cache"), NCBENCH_THREADS="1", PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")

    def ncbench(*args: str) -> str:
        proc = subprocess.run(["ncbench", *args], cwd=home, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
        return proc.stdout

    where = subprocess.run(["python", "-c", "import ncbench, ncbench.taskfiles as t; print(ncbench.__file__); "
                            "print(t.tasks_dir()); print(ncbench.__version__)"],
                           cwd=home, env=env, capture_output=True, text=True, check=True).stdout.split("\n")
    assert Path(where[0]).is_relative_to(bin_dir.parent), where  # the installed copy, not this checkout
    assert Path(where[1]) == Path(where[0]).parent / "_tasks"
    assert where[2] == PYPROJECT["project"]["version"]
    assert "glyphs-smoke" in ncbench("list", "tasks").split()

    # 1. the claimed rows, then `make bench`'s self-check: a re-run in other folders against them
    unit = ["--model", "conv4", "--source-classes", "5", "--seeds", "0"]
    ncbench("run", "glyphs-smoke", *unit)
    claimed = home / "leaderboards" / "glyphs-smoke.csv"
    rerun = ["--out", "rerun/runs", "--results", "rerun/results", "--leaderboards", "rerun/lb"]
    ncbench("run", "glyphs-smoke", *unit, *rerun)
    out = ncbench("compare", str(claimed), "rerun/lb/glyphs-smoke.csv", "--reproduce",
                  "--results", "leaderboards/results", "rerun/results")
    assert "reproduced 6/6 rows within the claimed 95 % CI (6 bit-identical)" in out, out

    # 2. evaluate a checkpoint one already has: the run's own, under another name; no pretraining
    (checkpoint,) = (home / "runs" / "checkpoints").glob("conv4.glyphs-s5-seed0-*")
    ncbench("evaluate", "glyphs-smoke", "--checkpoint", str(checkpoint), "--model", "my-conv4",
            "--source-classes", "5", "--seed", "0")
    board = pd.read_csv(claimed)
    mine = board[board["model"] == "my-conv4"].set_index(["head", "shots"]).sort_index()
    ref = board[board["model"] == "conv4"].set_index(["head", "shots"]).sort_index()
    assert len(mine) == 6 and mine["checkpoint"].map(lambda c: Path(c).name == checkpoint.name).all()
    assert (mine["acc_mean"] == ref["acc_mean"]).all() and (mine["nc1"] == ref["nc1"]).all()
    assert (mine["checkpoint_sha256"] == ref["checkpoint_sha256"]).all()

    # 3. submit part of the grid: the plan line first, the rows kept out of the ranking until the grid is full
    (home / "my_nets.py").write_text(SMALL_NET)
    out = ncbench("submit", "my_nets.py:SmallNet", "--name", "smallnet", "--tasks", "glyphs-smoke",
                  "--source-classes", "5", "--seeds", "0")
    plan = next(line for line in out.splitlines() if line.startswith("plan: glyphs-smoke:"))
    assert "1 units to run (s = 5 × seed 0), 0 finished; about " in plan and "no estimate" not in plan, plan
    board = pd.read_csv(claimed)
    small = board[board["model"] == "smallnet"]
    assert len(small) == 6 and (small["status"] == "ok").all() and small["acc_mean"].between(0.2, 1).all()
    view = (home / "leaderboards" / "glyphs-smoke.md").read_text()
    assert "smallnet" in view.split("Not ranked", 1)[1]

    # 4. the README's Python snippet, in a notebook-like process of the installed package
    snippet = home / "snippet.py"
    snippet.write_text(readme_snippet() + "\ndf.to_csv('snippet.csv', index=False)\n")
    subprocess.run(["python", str(snippet)], cwd=home, env=env, check=True, timeout=900, capture_output=True)
    df = pd.read_csv(home / "snippet.csv")
    assert len(df) == 6 and set(df["head"]) == {"ridge", "ncc", "ncc-cl2n"} and (df["status"] == "ok").all()

    assert _git_status() == before
