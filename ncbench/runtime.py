"""The process ncbench runs in: CPUs and torch threads, malloc tuning, sandbox limits, source version.

One home for the rules every entry point shares (the CLI, executor workers, sandbox children, Slurm jobs),
so pretraining, the executor and the sandbox cannot disagree on them. Importing this module is cheap (no
torch): the CLI reads its defaults before deciding what to import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
from pathlib import Path
from typing import Any

THREADS_ENV = "NCBENCH_THREADS"  # torch CPU threads per process, when set (a positive integer)
THREADS_PER_WORKER = 4           # torch CPU threads per local worker process when the machine has enough CPUs

# Sandbox limits, sized for a 2-core, 24 GiB machine. The memory limit is on address space (RLIMIT_AS):
# importing torch and starting its thread pools reserves about 4 GiB of it before any tensor exists, so
# 16 GB leaves about 12.
DEFAULT_TIMEOUT_S = 7200.0
DEFAULT_MEMORY_GB = 16.0


def default_cache_dir() -> Path:
    """Where renders, extracted archives and the registry catalogue are cached: ``$NCBENCH_CACHE`` or
    ``~/.cache/ncbench``."""
    return Path(os.environ.get("NCBENCH_CACHE") or Path.home() / ".cache" / "ncbench")


def available_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads() -> int:
    """CPU threads for one training process when the recipe does not say: ``$NCBENCH_THREADS``, else Slurm's
    CPUs per task, else the CPUs this process may use shared by the processes of its node (``LOCAL_WORLD_SIZE``)."""
    for name in (THREADS_ENV, "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return max(1, available_cpus() // (int(local) if local.isdigit() and int(local) > 0 else 1))


def set_threads(num_threads: int | None = None) -> None:
    """Set torch's CPU threads to ``num_threads``, or :func:`default_threads` when None."""
    import torch  # lazy: importing this module (the CLI does, to start) stays free of torch

    n = num_threads or default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def default_workers(units: int, cpus: int | None = None) -> int:
    """Local worker processes for ``units`` units: one per :data:`THREADS_PER_WORKER` CPUs, at least one."""
    return max(1, min(units, (cpus or available_cpus()) // THREADS_PER_WORKER))


def keep_freed_memory() -> None:
    """Tell glibc's malloc to keep freed blocks instead of returning them to the OS after every
    convolution: torch's CPU training otherwise spends about a fifth of its time in page faults
    (measured here: 883 -> 1,127 images/s for Conv-4). A process setting, made by each entry point."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve blocks up to 1 GiB from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: do not trim the heap below 1 GiB of free space
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def check_limits(timeout_s: Any, memory_gb: Any) -> None:
    """Raise ValueError naming the option unless both sandbox limits are positive finite numbers."""
    for name, v in (("timeout_s", timeout_s), ("memory_gb", memory_gb)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
            raise ValueError(f"{name}: expected a positive number, got {v!r}")


def git_commit() -> str | None:
    """The commit of the git checkout holding the ncbench package, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
