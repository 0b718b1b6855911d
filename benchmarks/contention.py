"""How much ``ncbench run`` slows down beside a competing CPU load, with OpenMP's passive wait and without.

    python benchmarks/contention.py                                  # glyphs-smoke, 2 spinners, passive vs spin
    python benchmarks/contention.py --modes passive spin active      # also OpenMP's ACTIVE policy
    python benchmarks/contention.py --task my-task.yaml --spinners 1 --source-classes 4 --seeds 0

For each mode the task's grid runs twice as a fresh ``python -m ncbench run`` process: alone, then beside
``--spinners`` busy-looping processes (plain Python ``while True`` loops, one core each). The slowdown is
loaded / alone wall time; the target is <= 2.5x with the passive policy on a machine where the spinners
take half the cores (2 spinners, 2 cores: a fair share is 2x). Modes (how torch's OpenMP threads wait):

* ``passive``: ``OMP_WAIT_POLICY=PASSIVE``, ncbench's default (``ncbench.runtime.prepare_process_env``);
* ``spin``: ``GOMP_SPINCOUNT=300000`` and no ``OMP_WAIT_POLICY``: GNU libgomp's own default (spin about 3 ms
  before sleeping), what ncbench ran with before it set the passive policy;
* ``active``: ``OMP_WAIT_POLICY=ACTIVE`` (spin for minutes before sleeping).

Every run gets its own empty folder (``NCBENCH_CACHE``, ``--out``, ``--results``, ``--leaderboards``), so
nothing is reused between runs: the dataset render and the pretraining happen in each. Wall time is the
figure; the CPU seconds of the run (user + system) are printed too: spinning shows as CPU time with no
progress. On a machine that other jobs share, compare the ratios of one invocation, not absolute times.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {"passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin": {"GOMP_SPINCOUNT": "300000"},
         "active": {"OMP_WAIT_POLICY": "ACTIVE"}}
TARGET = 2.5  # slowdown allowed with the passive policy


def spin() -> None:
    """Busy-loop forever (one core's worth of competing load)."""
    while True:
        pass


def run_once(args: argparse.Namespace, mode: str, folder: Path) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds (user + system), exit code) of ``ncbench run`` of the task in ``folder``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(MODES[mode], NCBENCH_CACHE=str(folder / "cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    argv = [sys.executable, "-m", "ncbench", "run", args.task, "--out", str(folder / "runs"),
            "--results", str(folder / "results"), "--leaderboards", str(folder / "leaderboards")]
    if args.source_classes:
        argv += ["--source-classes", *map(str, args.source_classes)]
    if args.seeds:
        argv += ["--seeds", *map(str, args.seeds)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        code = subprocess.run(argv, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, timeout=args.timeout_s).returncode
    except subprocess.TimeoutExpired:
        code = -1
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), code


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="glyphs-smoke", help="task name or task file (default: glyphs-smoke)")
    p.add_argument("--source-classes", type=int, nargs="+", help="passed to ncbench run (default: the task's)")
    p.add_argument("--seeds", type=int, nargs="+", help="passed to ncbench run (default: the task's)")
    p.add_argument("--spinners", type=int, default=2, help="busy-looping processes of the competing load (default: 2)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=["passive", "spin"],
                   help="OpenMP wait behaviours to compare (default: passive spin)")
    p.add_argument("--timeout-s", type=float, default=900, help="give up on one run after this long (default: 900)")
    a = p.parse_args()
    if a.spinners < 1:
        p.error(f"--spinners must be >= 1, got {a.spinners}")
    print(f"ncbench run {a.task}: alone, then beside {a.spinners} busy-looping process(es); "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the start")
    ctx = multiprocessing.get_context("spawn")
    ratios, times = {}, {}
    with tempfile.TemporaryDirectory(prefix="ncbench-contention-") as tmp:
        for mode in a.modes:
            runs = []
            for loaded in (False, True):
                folder = Path(tmp) / f"{mode}-{'loaded' if loaded else 'alone'}"
                folder.mkdir()
                spinners = [ctx.Process(target=spin, daemon=True) for _ in range(a.spinners if loaded else 0)]
                for s in spinners:
                    s.start()
                try:
                    runs.append(run_once(a, mode, folder))
                finally:
                    for s in spinners:
                        s.terminate()
                        s.join()
            (alone, alone_cpu, c1), (busy, busy_cpu, c2) = runs
            failed = "" if c1 == c2 == 0 else f"   FAILED (exit codes {c1}, {c2}; -1: timeout)"
            # a run that timed out took longer than its time: its figures are lower bounds (">")
            at_least = lambda code: ">" if code == -1 else " "
            times[mode] = (alone, busy)
            ratio = "n/a (a run timed out)" if -1 in (c1, c2) else f"{busy / alone:5.2f}x"
            if -1 not in (c1, c2):
                ratios[mode] = busy / alone
            print(f"{mode:8s} {' '.join(f'{k}={v}' for k, v in MODES[mode].items()):24s} alone {at_least(c1)}{alone:7.1f} s "
                  f"(cpu {alone_cpu:6.1f} s)   loaded {at_least(c2)}{busy:7.1f} s (cpu {busy_cpu:6.1f} s)   "
                  f"slowdown {ratio}{failed}")
    if "passive" in ratios:
        verdict = "within" if ratios["passive"] <= TARGET else "above"
        print(f"passive slowdown {ratios['passive']:.2f}x: {verdict} the {TARGET}x target")
        (alone, busy) = times["passive"]
        for mode in [m for m in times if m != "passive"]:
            bound = "" if mode in ratios else " at most (a run timed out)"
            print(f"passive against {mode}: alone {alone / times[mode][0]:.2f}x the time (the passive policy's "
                  f"cost on an idle machine), loaded {busy / times[mode][1]:.2f}x the time{bound}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")


if __name__ == "__main__":
    main()
