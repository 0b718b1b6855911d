"""Run an untrusted backbone's code in a child process, with a wall-clock timeout and a memory limit.

A backbone spec that is not a registered ncbench backbone (``module:callable``, ``file.py[:callable]``, an
entry point) is *untrusted*: the work that executes its code — checking it on a dummy batch, pretraining,
feature extraction — runs in ``python -m ncbench.sandbox JOB.json``, a child process in its own process
group with ``RLIMIT_AS`` set to the memory limit. The child writes only JSON (``outcome.json``, and the
checkpoint's card and curves) and safetensors (the checkpoint, ``features.safetensors``); the parent reads
back those files, never a pickled object. A crash (signal or nonzero exit), a timeout (the child's whole
process group is killed) or an exhausted memory limit raises :class:`SandboxError` saying which, so
``run_task`` records a ``failed`` row and goes on with the next unit.

Job folder (a fresh temporary folder under the run's ``out``, removed afterwards)::

    job.json               {"kind": "check" | "pretrain" | "features", "memory_gb", "log_level", ...}
    outcome.json           {"ok": true} or {"ok": false, "error": "Type: message", "memory": bool}
    features.safetensors   "features" jobs: keys train / test / target, metadata "layer_curves" (JSON)
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import safetensors
import safetensors.torch
import torch

from ncbench.backbones import BackboneError, build_backbone
from ncbench.files import atomic_write, write_json
from ncbench.layerwise import LayerCurves
from ncbench.registry import BACKBONES
from ncbench.runtime import DEFAULT_MEMORY_GB, DEFAULT_TIMEOUT_S, check_limits, keep_freed_memory
from ncbench.tasks import parse_task
from ncbench.unit import RunOptions, Unit, UnitFeatures, checkpoint_dir, features_here, pretrain_here, unit_data

log = logging.getLogger(__name__)

JOB_FILE, OUTCOME_FILE, FEATURES_FILE = "job.json", "outcome.json", "features.safetensors"
MEMORY_EXIT = 3  # the child's exit code when an allocation failed under the memory limit


class SandboxError(ValueError):
    """An untrusted backbone crashed, timed out, ran out of its memory limit or raised in its child process."""


def is_trusted(spec: str) -> bool:
    """True for a backbone registered by ncbench itself (its code ships with the harness)."""
    return isinstance(spec, str) and spec in BACKBONES


# ----------------------------------------------------------------------------------------- parent side
def _unit_json(unit: Unit, opts: RunOptions) -> dict[str, Any]:
    return {"task": unit.task.raw, "task_path": unit.task.path, "model": unit.model, "backbone": unit.backbone,
            "backbone_options": unit.backbone_options, "source_classes": unit.source_classes, "seed": unit.seed,
            "pretrain": unit.pretrain, "config_hash": unit.config_hash, "out": str(Path(opts.out).resolve()),
            "data_root": opts.data_root, "checkpoint_path": unit.checkpoint_path,
            "checkpoint_sha256": unit.checkpoint_sha256}


def _run_job(job: dict[str, Any], spec: str, timeout_s: float, memory_gb: float, workdir_parent: Path,
             read: Callable[[Path], Any] = lambda d: None) -> Any:
    """Run ``job`` in a child process and return ``read(job folder)`` when it succeeds; else raise SandboxError."""
    check_limits(timeout_s, memory_gb)
    Path(workdir_parent).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=workdir_parent, prefix=".sandbox-"))
    try:
        job = {**job, "memory_gb": memory_gb, "log_level": logging.getLogger("ncbench").getEffectiveLevel(),
               "parent_pid": os.getpid()}
        write_json(workdir / JOB_FILE, job)
        # stdout=2: the child's prints and progress bars go to our stderr, never into our stdout
        proc = subprocess.Popen([sys.executable, "-m", "ncbench.sandbox", str(workdir / JOB_FILE)],
                                stdin=subprocess.DEVNULL, stdout=2, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except BaseException as e:  # timeout, or Ctrl-C (the child's own session does not get it)
            os.killpg(proc.pid, signal.SIGKILL)  # the group holds the child and anything it started
            proc.wait()
            if not isinstance(e, subprocess.TimeoutExpired):
                raise
            raise SandboxError(f"backbone {spec!r}: timeout after {timeout_s:g} s ({job['kind']}; "
                               "raise the limit with --timeout-s)") from None
        try:
            outcome = json.loads((workdir / OUTCOME_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            outcome = {}
        if rc == 0 and outcome.get("ok") is True:
            return read(workdir)
        if rc == MEMORY_EXIT or outcome.get("memory"):
            raise SandboxError(f"backbone {spec!r}: memory limit {memory_gb:g} GB exceeded ({job['kind']}; "
                               f"raise it with --memory-gb): {outcome.get('error', '')}")
        if outcome.get("error"):
            raise SandboxError(f"backbone {spec!r} failed in its sandbox ({job['kind']}): {outcome['error']}")
        if rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
            raise SandboxError(f"backbone {spec!r}: crashed with signal {name} ({job['kind']})")
        raise SandboxError(f"backbone {spec!r}: crashed with exit code {rc} ({job['kind']})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def check_backbone(spec: str, options: dict[str, Any], *, timeout_s: float = DEFAULT_TIMEOUT_S,
                   memory_gb: float = DEFAULT_MEMORY_GB, workdir_parent: Path = Path("runs")) -> None:
    """``build_backbone(spec, **options)`` (resolve, build, validate on a dummy batch) in a child process.
    Any failure there (a BackboneError, a crash, a timeout, the memory limit) is raised here as BackboneError
    with the sandbox's message, so ``ncbench submit`` exits with 2 naming the spec."""
    try:
        _run_job({"kind": "check", "backbone": spec, "backbone_options": options}, spec, timeout_s, memory_gb,
                 workdir_parent)
    except SandboxError as e:
        raise BackboneError(str(e)) from None


def pretrain(unit: Unit, opts: RunOptions) -> Path:
    """:func:`ncbench.unit.pretrain_here` of an untrusted unit, in a child process; returns the checkpoint folder."""
    _run_job({"kind": "pretrain", "unit": _unit_json(unit, opts)}, unit.backbone, opts.timeout_s, opts.memory_gb,
             opts.out)
    return checkpoint_dir(unit, opts)


def unit_features(unit: Unit, opts: RunOptions) -> UnitFeatures:
    """:func:`ncbench.unit.features_here` of an untrusted unit: pretraining and extraction run in a child
    process, the features come back through ``features.safetensors``."""
    return _run_job({"kind": "features", "unit": _unit_json(unit, opts)}, unit.backbone, opts.timeout_s,
                    opts.memory_gb, opts.out,
                    read=lambda d: load_features(d / FEATURES_FILE, checkpoint_dir(unit, opts)))


def save_features(path: Path, feats: UnitFeatures) -> None:
    """Write a unit's features (train [n, m], test, target) as one safetensors file, its layer curves as
    JSON metadata (``null`` when the unit computes none)."""
    tensors = {"train": feats.train, "test": feats.test, "target": feats.target}
    curves = None if feats.layers is None else {"rows": feats.layers.rows, "eps": feats.layers.eps}
    data = safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()},
                                  metadata={"layer_curves": json.dumps(curves)})
    atomic_write(Path(path), data)


def load_features(path: Path, checkpoint: Path) -> UnitFeatures:
    """Read back :func:`save_features` output (tensors and JSON only, nothing unpickled); checks names,
    shapes, that the values are finite float32 and that the layer curves are well-formed, raising
    SandboxError naming the file."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            curves = json.loads((f.metadata() or {}).get("layer_curves", '"missing"'))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise SandboxError(f"features file {str(path)!r} from the sandbox is unreadable: {type(e).__name__}: {e}") from e
    expected = {"train", "test", "target"}
    if set(tensors) != expected:
        raise SandboxError(f"features file {str(path)!r}: expected tensors {sorted(expected)}, got {sorted(tensors)}")
    m = tensors["train"].shape[1] if tensors["train"].ndim == 2 else None
    for k, v in tensors.items():
        if v.dtype != torch.float32 or v.ndim != 2 or v.shape[1] != m:
            raise SandboxError(f"features file {str(path)!r}: {k}: expected float32 [N, {m}], got {v.dtype} {list(v.shape)}")
        if not torch.isfinite(v).all():
            raise SandboxError(f"features file {str(path)!r}: {k} holds NaN or inf values")
    try:
        layers = None if curves is None else LayerCurves(curves["rows"], curves["eps"])
    except (TypeError, KeyError, ValueError) as e:
        raise SandboxError(f"features file {str(path)!r}: layer_curves metadata is malformed: {e}") from None
    return UnitFeatures(Path(checkpoint), tensors["train"], tensors["test"], layers, tensors["target"])


# ------------------------------------------------------------------------------------------ child side
def _unit_from_json(d: dict[str, Any]) -> tuple[Unit, RunOptions]:
    unit = Unit(parse_task(d["task"], d["task_path"]), d["model"], d["backbone"], d["backbone_options"],
                d["source_classes"], d["seed"], d["pretrain"], d.get("checkpoint_path"), d.get("checkpoint_sha256"))
    if unit.config_hash != d["config_hash"]:
        raise RuntimeError(f"sandbox job: unit config hash {unit.config_hash} != {d['config_hash']} sent by the parent")
    return unit, RunOptions(out=Path(d["out"]), data_root=d["data_root"], isolate=False)


def _job_check(job: dict[str, Any], workdir: Path) -> None:
    build_backbone(job["backbone"], **job["backbone_options"])


def _job_pretrain(job: dict[str, Any], workdir: Path) -> None:
    pretrain_here(*_unit_from_json(job["unit"]))


def _job_features(job: dict[str, Any], workdir: Path) -> None:
    unit, opts = _unit_from_json(job["unit"])
    save_features(workdir / FEATURES_FILE, features_here(unit, opts, unit_data(unit, opts)))


JOBS = {"check": _job_check, "pretrain": _job_pretrain, "features": _job_features}


def _is_memory_error(e: BaseException) -> bool:
    # numpy raises MemoryError; torch's CPU allocator a RuntimeError "DefaultCPUAllocator: can't allocate memory"
    return isinstance(e, MemoryError) or "can't allocate memory" in str(e) or "Cannot allocate memory" in str(e)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel SIGKILL this process when the harness dies (PR_SET_PDEATHSIG), so a killed
    run leaves no orphan still writing into its folders. Elsewhere a no-op."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m ncbench.sandbox JOB.json``. Returns the exit code."""

    job_file = Path((sys.argv[1:] if argv is None else argv)[0])
    workdir = job_file.parent
    job = json.loads(job_file.read_text())
    _die_with_parent(job["parent_pid"])
    limit = int(job["memory_gb"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.basicConfig(level=job["log_level"], format="%(asctime)s %(levelname)s %(name)s [sandbox]: %(message)s",
                        datefmt="%H:%M:%S")
    keep_freed_memory()
    try:
        JOBS[job["kind"]](job, workdir)
    except Exception as e:  # reported to the parent as data (its one-line error); the traceback with --verbose
        memory = _is_memory_error(e)
        log.debug("sandbox job %s failed: %s: %s", job["kind"], type(e).__name__, e, exc_info=not memory)
        write_json(workdir / OUTCOME_FILE, {"ok": False, "error": f"{type(e).__name__}: {e}", "memory": memory})
        return MEMORY_EXIT if memory else 1
    write_json(workdir / OUTCOME_FILE, {"ok": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
