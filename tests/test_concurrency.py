"""Concurrent writers of one leaderboard: no lost or duplicated rows, no torn CSV.

Figures for docs/reliability.md: the thread test has WRITERS x UNITS_PER_WRITER result files (each adding
len(HEADS) x len(SHOTS) rows) written and rebuilt concurrently while readers parse the CSV; the slow test
runs three `ncbench run` / `ncbench submit` processes on one task, results and leaderboards folder.
"""

import subprocess
import sys
import threading

import pandas as pd
import pytest

from ncbench import leaderboard
from ncbench.results import Result, write_result

WRITERS, UNITS_PER_WRITER = 4, 5
HEADS, SHOTS = ("ridge", "ncc"), (1, 5)


def record(model: str, seed: int) -> dict:
    """A valid finished result of task "t" whose numbers identify it (model index, seed)."""
    value = int(model.removeprefix("m")) + seed / 100
    return {
        "schema": 1, "status": "ok", "error": None,
        "unit": {"task": "t", "task_version": 1, "model": model, "backbone": "tiny-conv", "source_classes": 4,
                 "seed": seed, "config_hash": f"{seed:012d}"},
        "provenance": {"episodes": {str(s): f"hash{s}" for s in SHOTS}, "date": "2026-01-01T00:00:00+00:00"},
        "source": {"nc1": value}, "target": {"cdnv": value, "ncc_acc": 0.5}, "layers": [],
        "episodes": [{"head": h, "ways": 3, "shots": s, "queries": 4, "acc_mean": value / 10, "acc_ci95": 0.0,
                      "n": 2, "per_episode": [value / 10] * 2} for h in HEADS for s in SHOTS],
    }


def test_concurrent_rebuilds_lose_no_rows_and_never_tear_the_csv(tmp_path):
    results, lb = tmp_path / "results", tmp_path / "lb"
    csv = lb / "t.csv"
    expected_rows = WRITERS * UNITS_PER_WRITER * len(HEADS) * len(SHOTS)
    torn, errors, done = [], [], threading.Event()

    def writer(w: int) -> None:
        try:
            for seed in range(UNITS_PER_WRITER):  # as `ncbench run` does: write the result, then rebuild
                write_result(results, Result.from_dict(record(f"m{w}", seed)))
                leaderboard.rebuild(results, lb, ["t"])
        except Exception as e:  # collected: an exception in a thread would otherwise vanish
            errors.append(e)

    def reader() -> None:
        while not done.is_set():
            if csv.exists():
                try:
                    df = leaderboard.read(csv)
                except ValueError as e:
                    torn.append(str(e))
                    continue
                if len(df) % (len(HEADS) * len(SHOTS)) or df.duplicated(leaderboard.KEY).any():
                    torn.append(f"{len(df)} rows, duplicated keys: {df.duplicated(leaderboard.KEY).any()}")

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in readers:
        t.join()

    assert errors == [] and torn == []
    # the CSV as the writers left it (no extra rebuild) holds every row once and equals a sequential rebuild
    df = leaderboard.read(csv)
    assert len(df) == expected_rows and not df.duplicated(leaderboard.KEY).any()
    assert sorted(set(zip(df["model"], df["seed"]))) == [(f"m{w}", s) for w in range(WRITERS)
                                                         for s in range(UNITS_PER_WRITER)]
    assert csv.read_text() == leaderboard.to_csv_text(leaderboard.build(results, "t"))


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ncbench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_concurrent_run_and_submit_processes_share_one_leaderboard(tiny_task_file, tmp_path):
    """Three processes (two `run` with different backbones/seeds, one `submit`) on one task and folders."""
    task = tiny_task_file(source_classes=[4])
    store = ["--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
             "--leaderboards", str(tmp_path / "lb")]
    procs = [cli("run", str(task), *store),
             cli("run", str(task), "--backbone", "tiny-mlp", "--seeds", "1", *store),
             cli("submit", "tiny-conv", "--name", "conv-sub", "--tasks", str(task), *store)]
    outputs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(outputs)

    csv = tmp_path / "lb" / "tiny.csv"
    df = leaderboard.read(csv)
    rows_per_unit = 3 * 2  # heads x shots of the tiny task
    assert len(df) == 3 * rows_per_unit and not df.duplicated(leaderboard.KEY).any()
    assert df.groupby(["model", "seed"]).size().to_dict() == {
        ("conv-sub", 0): rows_per_unit, ("tiny-conv", 0): rows_per_unit, ("tiny-mlp", 1): rows_per_unit}
    assert df["status"].eq("ok").all()
    assert csv.read_text() == leaderboard.to_csv_text(leaderboard.build(tmp_path / "results", "tiny"))
    # the submission and the plain run of the same backbone and seed agree number for number
    numbers = ["acc_mean", "acc_ci95", "target_cdnv", "nc1", "episodes_hash", "checkpoint_sha256"]
    conv = df[df["model"].isin(["tiny-conv", "conv-sub"])].set_index(["model", "head", "shots"])[numbers]
    pd.testing.assert_frame_equal(conv.loc["tiny-conv"], conv.loc["conv-sub"], check_exact=True)
