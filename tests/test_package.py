"""The installable package: the wheel ships the task files and split lists, and the command runs from a
fresh virtual environment in an empty folder; tasks are found in a source checkout, an installed package
or ``$NCBENCH_TASKS``."""

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from ncbench import taskfiles
from ncbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TASK_FILES = sorted(p.name for p in (ROOT / "tasks").glob("*.yaml"))
SPLIT_FILES = sorted(p.name for p in (ROOT / "ncbench" / "data" / "splits").iterdir() if p.suffix in (".txt", ".json"))


def test_every_package_of_the_source_tree_is_listed():
    """pyproject.toml lists the packages (one is the tasks/ mapping): a new subpackage must be added there."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ncbench").rglob("__init__.py")}
    on_disk.add("ncbench.data.splits")  # data only, no __init__.py
    assert listed - {"ncbench._tasks"} == on_disk
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"ncbench._tasks": "tasks"}


def test_source_checkout_finds_the_top_level_tasks(tmp_path, monkeypatch):
    monkeypatch.delenv("NCBENCH_TASKS", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./tasks here
    assert not taskfiles.PACKAGED.exists()  # a source checkout: no installed copy beside the package
    assert taskfiles.tasks_dir() == ROOT / "tasks"
    assert sorted(p.name for p in taskfiles.task_files().values()) == [n for n in TASK_FILES if not n.startswith("_")]


def test_local_tasks_folder_and_env_win(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NCBENCH_TASKS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mine.yaml").write_text("name: mine\n")
    (tmp_path / "tasks" / "_base.yaml").write_text("version: 1\n")
    assert main(["list", "tasks"]) == 0
    assert capsys.readouterr().out.split() == ["mine"]
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "a.yaml").write_text("name: a\n")
    (other / "b.yaml").write_text("name: b\n")
    monkeypatch.setenv("NCBENCH_TASKS", str(other))
    assert main(["list", "tasks"]) == 0
    assert capsys.readouterr().out.split() == ["a", "b"]


def test_env_that_is_not_a_folder_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NCBENCH_TASKS", str(tmp_path / "missing"))
    assert main(["list", "tasks"]) == 2
    err = capsys.readouterr().err
    assert "NCBENCH_TASKS" in err and str(tmp_path / "missing") in err and "not a folder" in err


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_bench_smoke_writes_under_out_only(tmp_path):
    """`make bench-smoke` (a dry run: the commands it would run) keeps results and leaderboards in OUT."""
    out = tmp_path / "out"
    proc = subprocess.run(["make", "-n", "-C", str(ROOT), "bench-smoke", f"OUT={out}"], capture_output=True,
                          text=True, timeout=60, check=True)
    commands = [line.split() for line in proc.stdout.splitlines() if "/ncbench " in line]
    assert [c[1:3] for c in commands] == [["run", "glyphs-smoke"]]
    for command in commands:
        for flag, where in (("--out", out), ("--results", out / "results"), ("--leaderboards", out / "leaderboards")):
            assert command[command.index(flag) + 1] == str(where), command


def _copy_source(dest: Path) -> Path:
    """What a wheel is built from (a copy: building writes build/ and *.egg-info beside the sources)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "ncbench", dest / "ncbench", ignore=ignore)
    shutil.copytree(ROOT / "tasks", dest / "tasks", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.slow
def test_wheel_installs_and_runs_the_smoke_task_from_an_empty_folder(tmp_path):
    # build the wheel offline, with this interpreter's setuptools
    src = _copy_source(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("ncbench-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {f"ncbench/_tasks/{n}" for n in TASK_FILES} <= names
    assert {f"ncbench/data/splits/{n}" for n in SPLIT_FILES} <= names
    assert not any(n.startswith(("tasks/", "tests/")) for n in names)

    # a fresh venv that sees this one's packages (torch & co.) through a .pth file, and the wheel on top
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

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NCBENCH_TASKS", "VIRTUAL_ENV")}
    env.update(NCBENCH_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    where = subprocess.run([str(py), "-c", "import ncbench, ncbench.taskfiles as t; print(ncbench.__file__); "
                            "print(t.tasks_dir()); print(ncbench.__version__)"],
                           cwd=empty, env=env, capture_output=True, text=True, check=True).stdout.split("\n")
    assert Path(where[0]).is_relative_to(venv), where  # the installed copy, not this checkout
    assert Path(where[1]) == Path(where[0]).parent / "_tasks"
    assert where[2] == PYPROJECT["project"]["version"]

    proc = subprocess.run([str(venv / "bin" / "ncbench"), "run", "glyphs-smoke", "--source-classes", "5",
                           "--seeds", "0", "--no-leaderboard"],
                          cwd=empty, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted((empty / "leaderboards" / "results" / "glyphs-smoke").rglob("s5-seed0-*.json"))
    assert len(results) == 1, sorted(p.relative_to(empty) for p in empty.rglob("*") if p.is_file())
    record = json.loads(results[0].read_text())
    assert record["status"] == "ok", record["error"]
    assert (record["unit"]["task"], record["unit"]["source_classes"], record["unit"]["seed"]) == ("glyphs-smoke", 5, 0)
