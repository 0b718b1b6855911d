"""Run an untrusted backbone's code isolated: a bubblewrap sandbox, a timeout, a memory limit, no secrets.

A backbone spec that is not a registered ncbench backbone (``module:callable``, ``file.py[:callable]``, an
entry point) is *untrusted*: the work that executes its code — checking it on a dummy batch, pretraining,
feature extraction — runs in ``python -m ncbench.sandbox JOB.json`` inside bubblewrap (``bwrap``):

* no network (``--unshare-net``: a private network namespace holding only loopback);
* the whole file system read-only (``--ro-bind / /``), the user's home folder and ``/tmp`` hidden behind
  empty read-only tmpfs (only the paths the job needs — Python, ncbench, the backbone file, the task file, the data
  and its cache — are bound back, read-only); the *job folder* is the only writable bind, so the child can
  never rewrite a result file, a leaderboard or another model's checkpoint;
* its own PID, IPC and UTS namespaces (``--unshare-pid``: when the job's process ends, the kernel kills
  everything it started, ``setsid`` daemons included), ``--die-with-parent`` (a killed harness takes the
  sandbox down), ``--new-session``, every capability dropped (``--cap-drop ALL``);
* a scrubbed environment (``--clearenv`` and :data:`ENV_ALLOW`; ``HOME`` is the job folder), so a user's
  tokens and keys never reach the submission;
* ``RLIMIT_AS`` set to the memory limit, and the whole process group killed at the timeout.

The child writes only JSON (``outcome.json``, the checkpoint's card and curves) and safetensors (the
checkpoint's weights, ``features.safetensors``) into the job folder; the parent reads back those files
only (regular files, never symlinks), validates them, and copies the checkpoint into ``<out>/checkpoints``
itself; nothing is unpickled. An error text coming back is cut to :data:`MAX_ERROR_CHARS` characters and
every value of the parent's environment in it is replaced by ``[redacted]``. A crash (signal or nonzero
exit), a timeout or an exhausted memory limit raises :class:`SandboxError` saying which, so ``run_task``
records a ``failed`` row and goes on with the next unit. The job folder is removed afterwards, also when the
harness is stopped by SIGINT or SIGTERM.

Where bubblewrap is missing or cannot create its namespaces, untrusted code is refused
(:func:`require_isolation`) unless the user passes ``--trust-backbone`` (its code then runs in the harness
process, unisolated).

Job folder (a fresh temporary folder under the run's ``out``, removed afterwards)::

    job.json               {"kind": "check" | "pretrain" | "features", "memory_gb", "log_level", ...}
    outcome.json           {"ok": true} or {"ok": false, "error": "Type: message", "memory": bool}
    features.safetensors   "features" jobs: keys train / test / target, metadata "layer_curves" (JSON)
    out/checkpoints/NAME   "pretrain" / "features" jobs: the unit's checkpoint (a copy of the existing one
                           going in, so a finished checkpoint is reused)
"""

from __future__ import annotations

import functools
import json
import logging
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import safetensors
import safetensors.torch
import torch

import ncbench
from ncbench.backbones import BackboneError, build_backbone
from ncbench.checkpoint import CheckpointError, load_classifier
from ncbench.runtime import default_cache_dir
from ncbench.files import atomic_folder, atomic_write, write_json
from ncbench.layerwise import LayerCurves
from ncbench.registry import BACKBONES
from ncbench.runtime import (DEFAULT_MEMORY_GB, DEFAULT_TIMEOUT_S, THREADS_ENV, check_limits, default_threads,
                             keep_freed_memory)
from ncbench.tasks import parse_task
from ncbench.unit import (RunOptions, Unit, UnitFeatures, checkpoint_dir, dataset_for, features_here, pretrain_here,
                          unit_data)

log = logging.getLogger(__name__)

JOB_FILE, OUTCOME_FILE, FEATURES_FILE, JOB_OUT = "job.json", "outcome.json", "features.safetensors", "out"
MEMORY_EXIT = 3  # the child's exit code when an allocation failed under the memory limit
MAX_ERROR_CHARS = 2000  # an error text from the sandbox is cut to this many characters
REDACTED = "[redacted]"
MIN_REDACT_CHARS = 6  # shorter environment values ("1", "C") are not secrets, and would mangle every message
# environment variables the sandbox keeps (when set in the parent); everything else is cleared
ENV_ALLOW = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG")
# bubblewrap's isolation, whatever the job (the file-system binds are added per job)
BWRAP_FLAGS = ("--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
               "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv")
HIDDEN = ("/tmp", "/var/tmp")  # hidden behind empty read-only tmpfs, with the user's home (--dev: a private /dev/shm)


class SandboxError(ValueError):
    """An untrusted backbone crashed, timed out, ran out of its memory limit or raised in its child process,
    or cannot be isolated here."""


def is_trusted(spec: str) -> bool:
    """True for a backbone registered by ncbench itself (its code ships with the harness)."""
    return isinstance(spec, str) and spec in BACKBONES


# ----------------------------------------------------------------------------------------- bubblewrap
@functools.lru_cache(maxsize=1)
def _bwrap() -> tuple[tuple[str, ...] | None, str | None]:
    """(bwrap command with its base flags, None) when bubblewrap works here, else (None, why not). Tries
    bwrap as it is, then with a user namespace (``--unshare-user``, for an unprivileged, non-setuid bwrap)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return None, "bubblewrap (bwrap) is not installed"
    why = ""
    for extra in ((), ("--unshare-user",)):
        cmd = (exe, *extra, *BWRAP_FLAGS)
        try:
            r = subprocess.run([*cmd, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--", "true"],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            why = f"{type(e).__name__}: {e}"
            continue
        if r.returncode == 0:
            return cmd, None
        why = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit code {r.returncode}"
    return None, f"bubblewrap (bwrap) cannot create its namespaces here ({why})"


def bwrap_problem() -> str | None:
    """Why untrusted code cannot be isolated on this machine, or None when bubblewrap works."""
    return _bwrap()[1]


def require_isolation(spec: str) -> None:
    """Raise SandboxError (one line) when ``spec`` would run in a sandbox that cannot be made here."""
    problem = bwrap_problem()
    if problem is not None:
        raise SandboxError(f"backbone {spec!r} is untrusted code and {problem}: refusing to run it; install "
                           "bubblewrap (apt-get install bubblewrap), or pass --trust-backbone to run it unisolated")


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _bwrap_command(workdir: Path, needed: list[Path], argv: list[str]) -> list[str]:
    """The bwrap command line that runs ``argv`` with ``workdir`` as its only writable folder; ``needed``:
    paths the job reads, bound back read-only when they lie under a hidden folder."""
    base, problem = _bwrap()
    if base is None:
        raise SandboxError(problem)
    home = Path.home().resolve()
    hidden = [Path(h) for h in HIDDEN if Path(h).is_dir()]
    if home != Path("/") and home.is_dir():
        hidden.append(home)
    cmd = [*base, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    for dev in sorted(Path("/dev").glob("nvidia*")):  # the GPU, when there is one
        cmd += ["--dev-bind", str(dev), str(dev)]
    for h in hidden:
        cmd += ["--tmpfs", str(h)]
    binds = set()
    for p in needed:
        p = Path(p).resolve()
        if p.exists() and any(_under(p, h) for h in hidden) and not _under(p, workdir):
            binds.add(p)
    for p in sorted(binds):
        cmd += ["--ro-bind", str(p), str(p)]
    cmd += ["--bind", str(workdir), str(workdir), "--chdir", str(Path.cwd())]  # the cwd is in ``needed``
    for h in hidden:  # the hiding tmpfs read-only too (the binds under it are mounts of their own)
        cmd += ["--remount-ro", str(h)]
    for k, v in _sandbox_env(workdir).items():
        cmd += ["--setenv", k, v]
    return [*cmd, "--", *argv]


def _sandbox_env(workdir: Path) -> dict[str, str]:
    """The child's whole environment: :data:`ENV_ALLOW` from ours, and what ncbench itself sets."""
    env = {k: os.environ[k] for k in ENV_ALLOW if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    python_path = [str(Path(ncbench.__file__).resolve().parents[1])]
    python_path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(HOME=str(workdir), TMPDIR=str(workdir), PYTHONPATH=os.pathsep.join(python_path),
               NCBENCH_CACHE=str(default_cache_dir().resolve()), PYTHONDONTWRITEBYTECODE="1",
               MPLCONFIGDIR=str(workdir / ".matplotlib"))
    env[THREADS_ENV] = str(default_threads())
    return env


def _secret(name: str, value: str) -> bool:
    """Whether the value of our environment variable ``name`` is redacted from the sandbox's error texts:
    every value of :data:`MIN_REDACT_CHARS` characters or more, except those of :data:`ENV_ALLOW` and plain
    paths (one or more existing absolute paths, as in ``HOME``, ``PWD`` or ``PYTHONPATH``: redacting them
    would mangle every file name in a message, and they hold no secret)."""
    if name in ENV_ALLOW or len(value) < MIN_REDACT_CHARS:
        return False
    parts = [p for p in value.split(os.pathsep) if p]
    return not (parts and all(os.path.isabs(p) and os.path.exists(p) for p in parts))


def clean_error(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` with every secret value of this process's environment (:func:`_secret`) replaced by
    ``[redacted]``, cut to ``limit`` characters."""
    for v in sorted({v for k, v in os.environ.items() if _secret(k, v)}, key=len, reverse=True):
        text = text.replace(v, REDACTED)
    if len(text) > limit:
        text = text[:limit] + f" [... {len(text) - limit} more characters cut]"
    return text


# ----------------------------------------------------------------------------------------- parent side
def _unit_json(unit: Unit, opts: RunOptions, workdir: Path) -> dict[str, Any]:
    return {"task": unit.task.raw, "task_path": unit.task.path, "model": unit.model, "backbone": unit.backbone,
            "backbone_options": unit.backbone_options, "source_classes": unit.source_classes, "seed": unit.seed,
            "pretrain": unit.pretrain, "config_hash": unit.config_hash, "out": str(workdir / JOB_OUT),
            "data_root": opts.data_root, "checkpoint_path": unit.checkpoint_path,
            "checkpoint_sha256": unit.checkpoint_sha256}


def _needed_paths(job: dict[str, Any]) -> list[Path]:
    """What the job reads: Python and its packages, ncbench, the backbone file, the task file, the data."""
    paths = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sys.executable).resolve().parent,
             Path(ncbench.__file__).resolve().parents[1], Path.cwd(), default_cache_dir()]
    paths += [Path(p) for p in sys.path if p]
    spec = job.get("backbone") or job["unit"]["backbone"]
    file = spec.rsplit(":", 1)[0] if ":" in spec and spec.split(":", 1)[0].endswith(".py") else spec
    if file.endswith(".py"):
        paths.append(Path(file).resolve().parent)
    unit = job.get("unit") or {}
    if unit.get("task_path"):
        paths.append(Path(unit["task_path"]).resolve().parent)
    for key in ("data_root", "checkpoint_path"):  # read-only: the data, a given checkpoint
        if unit.get(key):
            paths.append(Path(unit[key]))
    return paths


def _regular_file(path: Path) -> Path:
    """``path`` when it is a regular file (not a symlink the child planted to make us read elsewhere)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        raise SandboxError(f"sandbox file {str(path)!r} is missing") from None
    if not stat.S_ISREG(mode):
        raise SandboxError(f"sandbox file {str(path)!r} is not a regular file")
    return path


def _read_outcome(workdir: Path) -> dict[str, Any]:
    try:
        outcome = json.loads(_regular_file(workdir / OUTCOME_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return outcome if isinstance(outcome, dict) else {}


class _Terminated(SystemExit):
    """SIGTERM while a sandbox job runs: unwinds like Ctrl-C so the job folder is removed."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated(128 + signum)


def _run_job(job: dict[str, Any], spec: str, timeout_s: float, memory_gb: float, workdir_parent: Path,
             read: Callable[[Path], Any] = lambda d: None, unit: tuple[Unit, RunOptions] | None = None) -> Any:
    """Run ``job`` in a bubblewrap sandbox and return ``read(job folder)`` when it succeeds; else raise
    SandboxError. With ``unit``, the job gets the unit (writing into the job folder) and a copy of its
    existing checkpoint."""
    check_limits(timeout_s, memory_gb)
    require_isolation(spec)
    Path(workdir_parent).mkdir(parents=True, exist_ok=True)
    main_thread = threading.current_thread() is threading.main_thread()  # handlers can only be set there
    if main_thread:
        restore = signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(dir=workdir_parent, prefix=".sandbox-")).resolve()
    try:
        if unit is not None:
            job = {**job, "unit": _unit_json(*unit, workdir)}
            _copy_in(*unit, workdir)
        job = {**job, "memory_gb": memory_gb, "log_level": logging.getLogger("ncbench").getEffectiveLevel()}
        write_json(workdir / JOB_FILE, job)
        cmd = _bwrap_command(workdir, _needed_paths(job),
                             [sys.executable, "-m", "ncbench.sandbox", str(workdir / JOB_FILE)])
        # stdout=2: the child's prints and progress bars go to our stderr, never into our stdout
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=2, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except BaseException as e:  # timeout, Ctrl-C (the child's own session does not get it) or SIGTERM
            os.killpg(proc.pid, signal.SIGKILL)  # bwrap; its namespace's processes die with it
            proc.wait()
            if not isinstance(e, subprocess.TimeoutExpired):
                raise
            raise SandboxError(f"backbone {spec!r}: timeout after {timeout_s:g} s ({job['kind']}; "
                               "raise the limit with --timeout-s)") from None
        outcome = _read_outcome(workdir)
        error = clean_error(str(outcome.get("error") or ""))
        if rc == 0 and outcome.get("ok") is True:
            return read(workdir)
        if rc == MEMORY_EXIT or outcome.get("memory"):
            raise SandboxError(f"backbone {spec!r}: memory limit {memory_gb:g} GB exceeded ({job['kind']}; "
                               f"raise it with --memory-gb): {error}")
        if error:
            raise SandboxError(f"backbone {spec!r} failed in its sandbox ({job['kind']}): {error}")
        if rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
            raise SandboxError(f"backbone {spec!r}: crashed with signal {name} ({job['kind']})")
        if rc > 128 and rc - 128 in signal.valid_signals():  # bwrap's init reports a killed child as 128 + signal
            raise SandboxError(f"backbone {spec!r}: crashed with signal {signal.Signals(rc - 128).name} ({job['kind']})")
        raise SandboxError(f"backbone {spec!r}: crashed with exit code {rc} ({job['kind']})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if main_thread:  # None: a handler not set from Python; the default is the closest
            signal.signal(signal.SIGTERM, signal.SIG_DFL if restore is None else restore)


def _job_checkpoint(workdir: Path, unit: Unit) -> Path:
    return workdir / JOB_OUT / "checkpoints" / checkpoint_dir(unit, RunOptions()).name


def _copy_in(unit: Unit, opts: RunOptions, workdir: Path) -> None:
    """Copy the unit's existing checkpoint (finished, or a resume point) into the job folder, and make sure
    the dataset is in the cache the sandbox reads (it cannot write it)."""
    dataset_for(unit.task, opts.data_root)
    src = checkpoint_dir(unit, opts)
    if src.is_dir():
        shutil.copytree(src, _job_checkpoint(workdir, unit), symlinks=True)


def _copy_out(unit: Unit, opts: RunOptions, workdir: Path) -> Path:
    """Validate the checkpoint the sandbox wrote (regular files only; card and weights sha256) and put it in
    place as the unit's checkpoint; return that folder."""
    src, target = _job_checkpoint(workdir, unit), checkpoint_dir(unit, opts)
    for p in [src, *src.rglob("*")] if src.is_dir() else [src]:
        mode = os.lstat(p).st_mode if os.path.lexists(p) else None
        if mode is None or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            raise SandboxError(f"sandbox checkpoint {str(p)!r} is missing or not a regular file")
    try:
        load_classifier(src)  # the card parses, the weights are safetensors with the card's sha256
    except CheckpointError as e:
        raise SandboxError(f"the checkpoint the sandbox wrote is invalid: {e}") from None
    if target.is_dir() and _same_tree(src, target):
        return target
    old = target.with_name(target.name + ".old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    with atomic_folder(target) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _same_tree(a: Path, b: Path) -> bool:
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    return files(a) == files(b)


def check_backbone(spec: str, options: dict[str, Any], *, timeout_s: float = DEFAULT_TIMEOUT_S,
                   memory_gb: float = DEFAULT_MEMORY_GB, workdir_parent: Path = Path("runs")) -> None:
    """``build_backbone(spec, **options)`` (resolve, build, validate on a dummy batch) in a sandbox.
    Any failure there (a BackboneError, a crash, a timeout, the memory limit) is raised here as BackboneError
    with the sandbox's message, so ``ncbench submit`` exits with 2 naming the spec."""
    try:
        _run_job({"kind": "check", "backbone": spec, "backbone_options": options}, spec, timeout_s, memory_gb,
                 workdir_parent)
    except SandboxError as e:
        raise BackboneError(str(e)) from None


def pretrain(unit: Unit, opts: RunOptions) -> Path:
    """:func:`ncbench.unit.pretrain_here` of an untrusted unit, in a sandbox; returns the checkpoint folder
    (validated, then copied from the job folder to ``<out>/checkpoints``)."""
    return _run_job({"kind": "pretrain"}, unit.backbone, opts.timeout_s, opts.memory_gb, opts.out,
                    read=lambda d: _copy_out(unit, opts, d), unit=(unit, opts))


def unit_features(unit: Unit, opts: RunOptions) -> UnitFeatures:
    """:func:`ncbench.unit.features_here` of an untrusted unit: pretraining and extraction run in a child
    process, the features come back through ``features.safetensors``."""
    def read(workdir: Path) -> UnitFeatures:
        feats = load_features(_regular_file(workdir / FEATURES_FILE), checkpoint_dir(unit, opts))
        _copy_out(unit, opts, workdir)
        return feats

    return _run_job({"kind": "features"}, unit.backbone, opts.timeout_s, opts.memory_gb, opts.out, read=read,
                    unit=(unit, opts))


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


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m ncbench.sandbox JOB.json``. Returns the exit code."""

    job_file = Path((sys.argv[1:] if argv is None else argv)[0])
    workdir = job_file.parent
    job = json.loads(job_file.read_text())
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
