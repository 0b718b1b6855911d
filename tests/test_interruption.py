"""SIGKILL at every stage of `ncbench run`, then the same command again: the leaderboard of an uninterrupted run.

Kill points are chosen deterministically: the killed command runs the CLI's ``main`` in a child process
(forked from a server that imported ncbench once) whose ``os.replace`` (the last step of every atomic write)
or one library function is wrapped to SIGKILL the process at its n-th call: before the rename (a complete
temporary file left behind), in the middle of the write (the temporary file cut to half) or just after it.
No hook lives in the library. A second slow test kills at seeded random writes instead. The
re-run is always the command itself, ``python -m ncbench run``. (test_run.py already covers one kill during
pretraining polled from outside.) Figures for docs/reliability.md: ``len(KILL_POINTS)`` stages plus
``KILLS_AT_RANDOM`` random kills tried, rows lost asserted 0.
"""

import fnmatch
import importlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ncbench import leaderboard
from ncbench.results import iter_results, load_result
from ncbench.run import run_task
from ncbench.unit import RunOptions
from ncbench.tasks import load_task

# Every column that a re-run must reproduce: the key and every number (date and wall_time_s differ by nature;
# result_file is a path relative to the results folder, so it is compared too).
PROVENANCE_THAT_DIFFERS = ["date", "wall_time_s"]

PRELOAD = ["ncbench.cli", "ncbench.run", "ncbench.leaderboard", "ncbench.pretrain", "ncbench.features",
           "ncbench.heads", "ncbench.metrics", "ncbench.data"]


def killed_cli(args: list[str], point: dict | None) -> None:
    """Run ``ncbench <args>`` in this process, SIGKILLing it at ``point`` (None: wait for a kill from outside)."""
    calls = 0

    def due() -> bool:
        nonlocal calls
        calls += 1
        return calls == point["nth"]

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if point and point["kind"] == "replace":  # atomic writes: temporary file, then os.replace onto the file
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            if fnmatch.fnmatch(str(dst), point["pattern"]) and due():
                if point["when"] == "torn":
                    os.truncate(src, os.path.getsize(src) // 2)
                if point["when"] == "after":
                    real_replace(src, dst, *a, **k)
                die()
            return real_replace(src, dst, *a, **k)

        os.replace = replace
    elif point:  # the n-th call of a library function
        module_name, name = point["function"].rsplit(".", 1)
        module = importlib.import_module(module_name)
        real_function = getattr(module, name)

        def function(*a, **k):
            if due():
                die()
            return real_function(*a, **k)

        setattr(module, name, function)

    from ncbench.cli import main

    sys.exit(main(args))


def killed(args: list[str], point: dict | None = None) -> multiprocessing.Process:
    """Start :func:`killed_cli` forked from a server that has imported ncbench and torch once (the CLI
    spends about 5 s importing them), so each killed command costs only its own work."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    proc = ctx.Process(target=killed_cli, args=(args, point))
    proc.start()
    return proc


def at_replace(pattern: str, nth: int, when: str) -> dict:
    """Kill at the n-th atomic write onto a path matching ``pattern``: ``before`` the rename, ``torn`` (the
    temporary file cut to half first) or ``after`` it."""
    return {"kind": "replace", "pattern": pattern, "nth": nth, "when": when}


def at_call(function: str, nth: int) -> dict:
    """Kill at the n-th call of ``function`` (``module.name``)."""
    return {"kind": "call", "function": function, "nth": nth}


KILLS_AT_RANDOM = 6

# (stage, kill point), applied one after the other: each killed command resumes from what the previous left.
# The tiny task below has two units (s = 4, 8), 3 epochs each; counts are per process.
KILL_POINTS = [
    ("pretraining: epoch saved, resume pointer not yet", at_replace("*/resume/state.json", 2, "before")),
    ("pretraining: resume weights half written", at_replace("*/resume/epoch-*.safetensors", 2, "torn")),
    ("checkpoint: weights written, card not yet", at_replace("*/card.json", 1, "before")),
    ("feature extraction: first feature file half written",
     at_replace("*/features/*/features-*.safetensors", 1, "torn")),
    ("feature extraction: two feature files written", at_replace("*/features/*/*.safetensors", 2, "after")),
    ("episode evaluation: 4th (head, shots)", at_call("ncbench.run.episode_accuracy", 4)),  # where run looks it up
    ("result file half written", at_replace("*/results/*.json", 1, "torn")),
    ("pretraining of the second unit, first unit finished", at_replace("*/resume/state.json", 2, "after")),
    ("leaderboard rebuild: reading results, lock held", at_call("ncbench.leaderboard._build", 1)),
    ("leaderboard rebuild: CSV half written", at_replace("*/lb/tiny.csv", 1, "torn")),
]


def store(root: Path) -> list[str]:
    return ["--out", str(root / "runs"), "--results", str(root / "results"), "--leaderboards", str(root / "lb")]


def cli(args: list[str]) -> None:
    """Run the command itself, ``python -m ncbench <args>``, and assert it succeeds."""
    done = subprocess.run([sys.executable, "-m", "ncbench", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def assert_same_leaderboard(clean_csv: Path, csv: Path) -> int:
    """Assert equal leaderboards on every column but date / wall_time_s; return the number of rows."""
    clean, other = leaderboard.read(clean_csv), leaderboard.read(csv)
    columns = [c for c in leaderboard.columns() if c not in PROVENANCE_THAT_DIFFERS]
    pd.testing.assert_frame_equal(clean[columns], other[columns], check_exact=True)
    return len(other)


@pytest.fixture(scope="module")
def slow_task(tmp_path_factory):
    """The tiny task (two units, 3 epochs) and its leaderboard from an uninterrupted run."""
    from conftest import tiny_task_dict
    import yaml

    root = tmp_path_factory.mktemp("interrupt")
    task = root / "tiny.yaml"
    task.write_text(yaml.safe_dump(tiny_task_dict(pretrain={"epochs": 3, "batch_size": 16, "track_every": 1})))
    cli(["run", str(task), *store(root / "clean")])
    return task, root / "clean" / "lb" / "tiny.csv"


@pytest.mark.slow
def test_sigkill_at_every_stage_then_rerun_gives_the_same_leaderboard(slow_task, tmp_path):
    task, clean_csv = slow_task
    args = ["run", str(task), *store(tmp_path)]
    csv = tmp_path / "lb" / "tiny.csv"
    for stage, point in KILL_POINTS:
        proc = killed(args, point)
        proc.join()
        assert proc.exitcode == -signal.SIGKILL, f"{stage}: not killed (exit code {proc.exitcode})"
        if csv.exists():  # a leaderboard on disk is always a whole one
            leaderboard.read(csv)
        for _, rec in iter_results(tmp_path / "results"):  # no result file is ever failed by a kill
            assert rec.ok, stage
    assert list(tmp_path.rglob("*.tmp")), "the kills left no temporary file behind: nothing was tested"
    cli(args)
    assert assert_same_leaderboard(clean_csv, csv) == 2 * 3 * 2  # units x heads x shots: no row lost


@pytest.mark.slow
def test_sigkill_at_random_writes_then_rerun_gives_the_same_leaderboard(slow_task, tmp_path):
    """Kills at seeded random points: the n-th atomic write of any file (n in 2..16; an uninterrupted run makes 41),
    before, in the middle of or after it; re-run after each."""
    task, clean_csv = slow_task
    args = ["run", str(task), *store(tmp_path)]
    rng, landed = random.Random(6), 0
    for _ in range(KILLS_AT_RANDOM):
        proc = killed(args, at_replace("*", rng.randint(2, 16), rng.choice(["before", "torn", "after"])))
        proc.join()
        assert proc.exitcode in (0, -signal.SIGKILL)  # 0: the re-run had fewer writes left than n
        landed += proc.exitcode == -signal.SIGKILL
    cli(args)
    assert assert_same_leaderboard(clean_csv, tmp_path / "lb" / "tiny.csv") == 2 * 3 * 2
    assert landed >= KILLS_AT_RANDOM // 2  # measured: 5 of 6


# ------------------------------------------------------------------ partial files planted on disk (fast)
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-unit run of the tiny task: (task, folder with runs/ results/ lb/)."""
    from conftest import tiny_task_dict
    import yaml

    root = tmp_path_factory.mktemp("finished")
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_task_dict(source_classes=[4])))
    task = load_task(root / "tiny.yaml")
    assert [st for _, st in run_task(task, RunOptions(out=root / "runs", results=root / "results"))] == ["ok"]
    leaderboard.rebuild(root / "results", root / "lb")
    return task, root


def copy_of(finished, tmp_path) -> tuple:
    task, root = finished
    shutil.copytree(root, tmp_path / "copy")
    return task, tmp_path / "copy", RunOptions(out=tmp_path / "copy" / "runs", results=tmp_path / "copy" / "results")


def test_truncated_result_and_stray_temp_files_are_never_read_as_complete(finished, tmp_path):
    task, root, opts = copy_of(finished, tmp_path)
    (path,) = (root / "results").rglob("*.json")
    good, clean_csv = path.read_text(), (root / "lb" / "tiny.csv").read_bytes()
    path.write_text(good[: len(good) // 2])  # a result cut short
    # temporary files of interrupted atomic writes, both whole and cut: never taken for the real file
    (path.parent / f".{path.name}.x1.tmp").write_text(good.replace('"status": "ok"', '"status": "failed"'))
    (root / "lb" / ".tiny.csv.x2.tmp").write_bytes(clean_csv[: len(clean_csv) // 2])

    assert list(iter_results(root / "results")) == []  # the cut file is rejected
    assert [st for _, st in run_task(task, opts)] == ["ok"]  # and its unit re-run
    new = load_result(path)
    old = json.loads(good)
    for part in ("source", "target", "layers", "episodes", "unit"):
        assert new.to_dict()[part] == old[part], part
    leaderboard.rebuild(root / "results", root / "lb")
    assert_same_leaderboard(finished[1] / "lb" / "tiny.csv", root / "lb" / "tiny.csv")


def test_truncated_feature_file_is_recomputed(finished, tmp_path):
    task, root, opts = copy_of(finished, tmp_path)
    (path,) = (root / "results").rglob("*.json")
    old = json.loads(path.read_text())
    path.unlink()
    feature_files = sorted((root / "runs" / "features").rglob("*.safetensors"))
    cut = feature_files[0].read_bytes()
    feature_files[0].write_bytes(cut[: len(cut) // 2])
    assert [st for _, st in run_task(task, opts)] == ["ok"]
    assert feature_files[0].read_bytes() == cut  # recomputed, bit for bit
    assert load_result(path).to_dict()["episodes"] == old["episodes"]
