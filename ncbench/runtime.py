"""The process ncbench runs in: CPUs and torch threads, OpenMP waiting, malloc tuning, sandbox limits,
source version.

One home for the rules every entry point shares (the CLI, executor workers, sandbox children, Slurm jobs),
so pretraining, the executor and the sandbox cannot disagree on them. Importing this module is cheap (no
torch): the CLI reads its defaults before deciding what to import, and :func:`prepare_process_env` must run
before torch is imported.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import subprocess
from pathlib import Path
from typing import Any, MutableMapping

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


# OpenMP's wait policy when the user chose none (docs/scaling.md, "Threads and shared machines"): an idle
# thread of torch's OpenMP pool (GNU libgomp) sleeps at once instead of spinning for a core it may not get
WAIT_POLICY_ENV, SPINCOUNT_ENV = "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"
DEFAULT_WAIT_POLICY = "PASSIVE"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def prepare_process_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the environment rules of an ncbench process in ``environ`` (default: ``os.environ``, which child
    processes inherit) where the user has not decided them, and return what was added:
    ``OMP_WAIT_POLICY=PASSIVE`` unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set (either is the user's
    choice of how OpenMP threads wait). Call it before torch is imported: libgomp reads ``OMP_WAIT_POLICY``
    once, when torch loads it, so a later change has no effect in this process (only in the processes it
    starts)."""
    environ = os.environ if environ is None else environ
    if WAIT_POLICY_ENV in environ or SPINCOUNT_ENV in environ:
        return {}
    added = {WAIT_POLICY_ENV: DEFAULT_WAIT_POLICY}
    environ.update(added)
    return added


def shell_env_defaults() -> list[str]:
    """The rules of :func:`prepare_process_env` as POSIX shell lines, for a job script whose environment is
    not this one (a Slurm job submitted with ``--export=NONE``): each sets its variable unless the job's
    environment already decides it."""
    return [f'[ -n "${{{WAIT_POLICY_ENV}+x}}${{{SPINCOUNT_ENV}+x}}" ] || export {WAIT_POLICY_ENV}={DEFAULT_WAIT_POLICY}']


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):  # missing, unreadable (permissions), not a text file
        return None


def _quota_cpus(quota: float, period: float) -> int | None:
    """CPUs a CFS quota of ``quota`` µs per ``period`` µs allows: ceil(quota / period), at least 1; None when
    there is no quota (negative) or the numbers make no sense."""
    if not (quota > 0 and period > 0) or math.isinf(quota) or math.isinf(period):
        return None
    return max(1, math.ceil(quota / period))


def _v2_limit(folder: Path) -> int | None:
    """The quota of a cgroup v2 folder's ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"), as CPUs."""
    text = _read(folder / "cpu.max")
    parts = text.split() if text else []
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        return _quota_cpus(float(parts[0]), float(parts[1]))
    except ValueError:
        return None


def _v1_limit(folder: Path) -> int | None:
    """The quota of a cgroup v1 cpu-controller folder (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; -1: none)."""
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        return _quota_cpus(float(quota), float(period)) if quota and period else None
    except ValueError:
        return None


def _with_ancestors(mount: Path, cgroup: str) -> list[Path]:
    """``mount``/``cgroup`` and its parent cgroups up to ``mount`` (each one's quota also limits the process)."""
    parts = [p for p in cgroup.strip().split("/") if p]
    return [mount.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def cgroup_cpu_limit(root: Path | None = None, proc_cgroup: Path | None = None) -> int | None:
    """The CPUs this process's cgroup CPU quota allows, or None where there is none (or it cannot be read).

    ``proc_cgroup`` lists the process's cgroups (default :data:`PROC_CGROUP`, lines ``ID:CONTROLLERS:PATH``)
    and ``root`` is where the cgroup file systems are mounted (default :data:`CGROUP_ROOT`). cgroup v2 (line ``0::PATH``): ``cpu.max`` of
    ``root/PATH`` and of each parent; cgroup v1 (the line whose controllers include ``cpu``):
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in ``root/<controllers>/PATH`` (or ``root/cpu/PATH``) and
    its parents. Each quota allows ceil(quota / period) CPUs, at least 1; the smallest of them is returned.
    In a container with its own cgroup namespace PATH is ``/`` and the quota sits at the mount's top."""
    root = CGROUP_ROOT if root is None else Path(root)
    text = _read(PROC_CGROUP if proc_cgroup is None else Path(proc_cgroup))
    limits: list[int] = []
    for line in (text or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # cgroup v2, unified hierarchy
            folders, read = _with_ancestors(root, path), _v2_limit
        elif "cpu" in controllers.split(","):
            mounts = [root / controllers, *(root / c for c in controllers.split(",") if c == "cpu")]
            mount = next((m for m in mounts if m.is_dir()), mounts[0])
            folders, read = _with_ancestors(mount, path), _v1_limit
        else:
            continue
        limits += [n for n in map(read, folders) if n is not None]
    return min(limits) if limits else None


def available_cpus() -> int:
    """The CPUs this process may use: those of its affinity mask, fewer when its cgroup's CPU quota
    (:func:`cgroup_cpu_limit`: a container's ``--cpus``, a Slurm job's cgroup) allows fewer."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return max(1, min(cpus, quota) if quota is not None else cpus)


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
