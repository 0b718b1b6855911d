"""Start-up time of the ``ncbench`` commands that do little work: each command as a fresh process.

    python benchmarks/startup.py                          # this checkout, every command, best of 5
    python benchmarks/startup.py --root /path/to/other/checkout --repeat 3   # another checkout (a "before")
    python benchmarks/startup.py --only help list-tasks --repeat 1           # a quick run

Each command runs once untimed first (it fills the caches a second run finds: the glyphs font scan and
renders in ``$NCBENCH_CACHE``), then ``--repeat`` times; the fastest run is printed, as timeit does, to damp
noise from other processes. Every command runs in an empty temporary folder with ``--root`` first on
``PYTHONPATH``; ``validate`` checks ``--root``'s ``tasks/glyphs-smoke.yaml``. Two reference lines give the
floor: a bare interpreter, and one that imports torch (the commands whose registries hold torch modules,
``list backbones`` and ``validate``, cannot start faster than that).
"""

from __future__ import annotations

import argparse
import math
import os
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


def timed(argv: list[str], cwd: Path, env: dict[str, str], repeat: int) -> tuple[float, int]:
    """(fastest wall-clock seconds of ``repeat`` runs, the last run's exit code)."""
    best, code = math.inf, 0
    for _ in range(repeat):
        start = time.perf_counter()
        code = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        best = min(best, time.perf_counter() - start)
    return best, code


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=ROOT, help="checkout whose ncbench is timed (default: this one)")
    p.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per command; the fastest is printed")
    p.add_argument("--only", nargs="+", metavar="LABEL", help=f"commands to time (default: all of "
                                                              f"{', '.join(commands(ROOT))})")
    a = p.parse_args()
    table = commands(a.root.resolve())
    unknown = sorted(set(a.only or []) - set(table))
    if unknown:
        p.error(f"--only: unknown label(s) {', '.join(unknown)}; known: {', '.join(table)}")
    if a.repeat < 1:
        p.error(f"--repeat must be >= 1, got {a.repeat}")
    path = [str(a.root.resolve()), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    env.pop("NCBENCH_TASKS", None)
    print(f"ncbench start-up, {a.root.resolve()}: seconds per command, fastest of {a.repeat} (after one untimed run)")
    with tempfile.TemporaryDirectory(prefix="ncbench-startup-") as tmp:
        for label, args in table.items():
            if a.only and label not in a.only:
                continue
            argv = [a.python, *args]
            timed(argv, Path(tmp), env, 1)  # warm the caches (font scan, renders, the OS's file cache)
            seconds, code = timed(argv, Path(tmp), env, a.repeat)
            shown = "ncbench " + " ".join(args[2:]) if args[:2] == ["-m", "ncbench"] else "python " + " ".join(args)
            print(f"{label:18s} {seconds:6.2f} s   exit {code}   ({shown})")


if __name__ == "__main__":
    main()
