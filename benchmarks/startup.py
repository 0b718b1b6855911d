"""Start-up time of the ``ncbench`` commands that do little work: each command as a fresh process.

    python benchmarks/startup.py                          # this checkout, every command, best of 5
    python benchmarks/startup.py --root /path/to/other/checkout --repeat 3   # another checkout
    python benchmarks/startup.py --baseline /path/to/main/checkout          # before (baseline) and after, side by side
    python benchmarks/startup.py --only help list-tasks --repeat 1           # a quick run

Wall-clock and CPU seconds (user + system of the command's process tree) are both printed: on a busy machine
the CPU time is the steadier figure. Each command runs once untimed first (it fills the caches a second run
finds: the glyphs font scan and renders in ``$NCBENCH_CACHE``), then ``--repeat`` times; the fastest run is
printed, as timeit does, to damp noise from other processes. With ``--baseline`` each run of a command
alternates between the baseline checkout and ``--root``, so that both see the same load, and the ratio
baseline / root is printed. Every command runs in an empty temporary folder with its checkout first on
``PYTHONPATH``; ``validate`` checks that checkout's ``tasks/glyphs-smoke.yaml``. Two reference lines give
the floor: a bare interpreter, and one that imports torch (the commands whose registries hold torch modules,
``list backbones`` and ``validate``, cannot start faster than that).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands(root: Path) -> dict[str, list[str]]:
    """label -> the arguments after ``python``."""
    task = str(root / "tasks" / "glyphs-smoke.yaml")
    ncbench = ["-m", "ncbench"]
    return {
        "python": ["-c", "pass"],
        "import-torch": ["-c", "import torch"],
        "help": [*ncbench, "--help"],
        "list-datasets": [*ncbench, "list", "datasets"],
        "list-tasks": [*ncbench, "list", "tasks"],
        "list-backbones": [*ncbench, "list", "backbones"],
        "validate-no-data": [*ncbench, "validate", "--no-data", task],
        "validate": [*ncbench, "validate", task],
    }


def once(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, int]:
    """(wall-clock seconds, CPU seconds (user + system), exit code) of one run. On a busy machine the CPU
    time is the steadier figure: the wall clock also counts the time spent waiting for a core."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    code = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), code


def environment(root: Path) -> dict[str, str]:
    """This environment with ``root`` first on PYTHONPATH and no task-folder override."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    env.pop("NCBENCH_TASKS", None)
    return env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=ROOT, help="checkout whose ncbench is timed (default: this one)")
    p.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per command; the fastest is printed")
    p.add_argument("--only", nargs="+", metavar="LABEL", help=f"commands to time (default: all of "
                                                              f"{', '.join(commands(ROOT))})")
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="also time this checkout (e.g. the main branch), alternating with --root, and print the ratio")
    a = p.parse_args()
    roots = [r.resolve() for r in ([a.baseline] if a.baseline else []) + [a.root]]
    tables = [commands(r) for r in roots]
    unknown = sorted(set(a.only or []) - set(tables[0]))
    if unknown:
        p.error(f"--only: unknown label(s) {', '.join(unknown)}; known: {', '.join(tables[0])}")
    if a.repeat < 1:
        p.error(f"--repeat must be >= 1, got {a.repeat}")
    envs = [environment(r) for r in roots]
    print(f"ncbench start-up: wall-clock (and CPU) seconds per command, fastest of {a.repeat} (after one untimed run); "
          + " | ".join(str(r) for r in roots))
    with tempfile.TemporaryDirectory(prefix="ncbench-startup-") as tmp:
        for label in tables[0]:
            if a.only and label not in a.only:
                continue
            argvs = [[a.python, *t[label]] for t in tables]
            for argv, env in zip(argvs, envs):
                once(argv, Path(tmp), env)  # warm the caches (font scan, renders, the OS's file cache)
            best, cpu, codes = [math.inf] * len(roots), [math.inf] * len(roots), [0] * len(roots)
            for _ in range(a.repeat):
                for i, (argv, env) in enumerate(zip(argvs, envs)):
                    seconds, cpu_s, codes[i] = once(argv, Path(tmp), env)
                    best[i], cpu[i] = min(best[i], seconds), min(cpu[i], cpu_s)
            args = tables[-1][label]
            shown = "ncbench " + " ".join(args[2:]) if args[:2] == ["-m", "ncbench"] else "python " + " ".join(args)
            times = "   ".join(f"{b:6.2f} s (cpu {c:5.2f} s) exit {e}" for b, c, e in zip(best, cpu, codes))
            ratio = (f"   baseline/root {best[0] / best[1]:5.1f}x (cpu {cpu[0] / max(cpu[1], 1e-9):4.1f}x)"
                     if a.baseline else "")
            print(f"{label:18s} {times}{ratio}   ({shown})")


if __name__ == "__main__":
    main()
