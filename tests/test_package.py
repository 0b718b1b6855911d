"""The installable package: tasks are found in a source checkout, an installed package or ``$NCBENCH_TASKS``.
The wheel itself (task files and split lists inside, the command run from a fresh virtual environment in an
empty folder) is built and played by tests/test_new_user.py."""

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from ncbench import taskfiles
from ncbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TASK_FILES = sorted(p.name for p in (ROOT / "tasks").glob("*.yaml"))


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
