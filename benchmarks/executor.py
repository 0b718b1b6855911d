"""A task's grid run serially in one process against the same grid on a local process pool and through
submitit's local executor (the Slurm code path without a cluster).

    python benchmarks/executor.py                         # glyphs-smoke with extra seeds, 2 workers
    python benchmarks/executor.py --task glyphs --source-classes 20 80 --seeds 0 1 --no-submitit

Every run uses ``--threads`` torch threads per process (default: CPUs / workers), so all three give the
same leaderboard, which is checked; prints wall time of each and its speed-up over the serial run. The
serial run uses the same thread count as one worker, so the ratio shows what parallel units buy, not what
more threads per unit buy.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from ncbench.runtime import prepare_process_env

prepare_process_env()  # before torch (or numpy, sklearn) loads its OpenMP, which reads OMP_WAIT_POLICY once

from ncbench.executor import execute
from ncbench.leaderboard import build
from ncbench.run import RunOptions
from ncbench.runtime import THREADS_ENV, available_cpus
from ncbench.tasks import find_task


def timed_run(task, args, root: Path, executor: str, workers: int | None) -> tuple[float, object]:
    """(seconds, leaderboard without its time columns) of running the task's grid in ``root``."""
    opts = RunOptions(out=root / "runs", results=root / "results", seeds=args.seeds,
                      source_classes=args.source_classes)
    t0 = time.perf_counter()
    statuses = execute(task, opts, executor, workers=workers)
    seconds = time.perf_counter() - t0
    assert all(st == "ok" for _, st in statuses), statuses
    return seconds, build(root / "results", task.name).drop(columns=["date", "wall_time_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="glyphs-smoke")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--source-classes", type=int, nargs="+", help="default: the task's")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads per process (default: CPUs / workers)")
    parser.add_argument("--no-submitit", action="store_true", help="skip the submitit-local run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ[THREADS_ENV] = str(args.threads or max(1, available_cpus() // args.workers))
    task = find_task(args.task)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        serial, reference = timed_run(task, args, tmp / "serial", "local", 1)
        print(f"{task.name}, seeds {args.seeds}, {os.environ[THREADS_ENV]} torch thread(s) per process, "
              f"{available_cpus()} CPUs")
        print(f"  serial, one process       {serial:7.1f} s   1.00x")
        runs = [("local", args.workers, f"local pool, {args.workers} workers")]
        if not args.no_submitit:
            runs.append(("submitit-local", None, "submitit local executor"))
        for executor, workers, label in runs:
            seconds, board = timed_run(task, args, tmp / executor, executor, workers)
            same = board.equals(reference)
            print(f"  {label:<25} {seconds:7.1f} s   {serial / seconds:4.2f}x   leaderboard identical: {same}")


if __name__ == "__main__":
    main()
