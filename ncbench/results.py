"""Raw result files: one JSON per finished (or failed) unit, written atomically, validated on load.

A *unit* is one (task, model, source-class count, seed). Its result file holds everything the
leaderboard needs plus the per-episode accuracies (for paired comparisons), the layer curves and the
training curve. This module is the one place that defines that record: :class:`Result` and its parts
(:class:`UnitKey`, :class:`Provenance`, :class:`EpisodeScore`), the :class:`Status` values, the
:data:`SCHEMA` version, the file's path and its validation. The JSON form (``Result.to_dict``)::

    {"schema": 1, "status": "ok" | "failed", "error": str | null,
     "unit": {"task", "task_version", "model", "backbone", "source_classes", "seed", "config_hash",
              "model_hash", "backbone_options", "pretrain"},
     "provenance": {"checkpoint", "checkpoint_sha256", "pretrained", "ncbench_version", "git_commit" (null outside git),
                    "torch_version", "device", "world_size", "date", "wall_time_s",
                    "episodes": {"<shots>": "<episodes digest>"}},
     # a finished ("ok") unit only:
     "source": {column: number | bool | null, ...},   # source-scope and layer-scope metric columns
     "target": {key: number | null, ...},             # target-scope metric columns (ncbench.metrics.columns)
     "layers": [{"layer", "variant", "ncc_error", "ncc_errors", "n", "cdnv"}, ...],
     "episodes": [{"head", "ways", "shots", "queries", "acc_mean", "acc_ci95", "n", "per_episode": [...]}, ...],
     "source_classes": [class name, ...],
     "training_curve": [{"epoch", <tracked values>...}, ...]}

Which keys ``source`` and ``target`` hold is decided by the task's ``metrics`` (the registry's columns of
the metrics listed); a metric not listed has no key, and an empty leaderboard cell. Numbers are JSON
numbers, never strings; a non-finite value is ``null``. Paths are derived from the unit:
``<results>/<task>/<model>/s<S>-seed<N>-<config_hash>.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterator

from ncbench.files import atomic_write_text
from ncbench.stats import mean_ci95
from ncbench.names import check_name, inside, name_problem

SCHEMA = 1
INT64 = (-2**63, 2**63 - 1)  # integers outside int64 are refused: no reader (pandas, numpy) could hold them
TOLERANCE = 1e-9  # acc_mean and acc_ci95 against the values recomputed from per_episode

log = logging.getLogger(__name__)


class Status(str, Enum):
    """A unit's status. A result file holds ``OK`` or ``FAILED`` (:data:`RESULT_STATUSES`); ``LOST`` (its
    process or job died before writing one) and ``SUBMITTED`` (its Slurm job is queued) describe a unit
    of an executor run that has no result file yet."""

    OK = "ok"
    FAILED = "failed"
    LOST = "lost"
    SUBMITTED = "submitted"

    def __str__(self) -> str:
        return self.value


RESULT_STATUSES = (Status.OK, Status.FAILED)


class ResultError(ValueError):
    """A result file is missing fields, has wrong types, or is not valid JSON; names the file and field."""


def _check_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ResultError(f"{where}: expected an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class UnitKey:
    """What a unit is: its task (name and version), model (leaderboard name), backbone spec, source-class
    count, seed and config hash (everything that determines its numbers); the model hash binds the model
    name to its configuration (``ncbench.unit.Unit.model_hash``), and the backbone options let a reader
    recompute the config hash from the task file, with the model's pretraining overrides (``pretrain``). They are
    None in results written before ncbench stored them."""

    task: str
    task_version: int
    model: str
    backbone: str
    source_classes: int
    seed: int
    config_hash: str
    model_hash: str | None = None                    # hash of the model's configuration (None: older results)
    backbone_options: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    pretrain: dict[str, Any] | None = field(default=None, hash=False, compare=False)  # the model's overrides

    def path(self, results_dir: Path) -> Path:
        """The unit's result file under ``results_dir``."""
        check_name(self.task, "unit.task")
        check_name(self.model, "unit.model")
        return inside(results_dir, self.task, self.model,
                      f"s{self.source_classes}-seed{self.seed}-{self.config_hash}.json")

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "UnitKey":
        names = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        if not isinstance(d, dict) or any(k not in d for k in names):
            raise ResultError(f"{where}: unit: expected a mapping with {', '.join(names)}")
        for k in ("task_version", "source_classes", "seed"):
            _check_int(d[k], f"{where}: unit.{k}")
        for k in ("task", "model"):  # names become folders and leaderboard cells (ncbench.names)
            problem = name_problem(d[k])
            if problem is not None:
                raise ResultError(f"{where}: unit.{k}: invalid name {d[k]!r}: {problem}")
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass(frozen=True)
class Provenance:
    """Where a result came from. ``checkpoint``: checkpoint name ``model.task-sS-seedN``;
    ``checkpoint_sha256``: of its weights (None for a unit that failed before having one); ``pretrained``:
    True when ncbench pretrained the checkpoint for this unit, False when a given checkpoint was evaluated
    (``ncbench evaluate --checkpoint``, ``ncbench.evaluate``; ``checkpoint`` is then its path); ``git_commit``:
    None outside a git checkout; ``device`` / ``world_size``: what pretrained the checkpoint (results written
    before ncbench recorded it: one process); ``date``: UTC, ISO 8601, when the unit finished;
    ``wall_time_s``: the unit's wall time; ``episodes``: shots (as a string) -> digest of its episodes."""

    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    pretrained: bool = True
    ncbench_version: str | None = None
    git_commit: str | None = None
    torch_version: str | None = None
    device: str | None = None
    world_size: int = 1
    date: str | None = None
    wall_time_s: float | None = None
    episodes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Provenance":
        if not isinstance(d, dict):
            raise ResultError(f"{where}: provenance: expected a dict")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class EpisodeScore:
    """One (head, shots) of a unit: mean query accuracy over ``n`` episodes, its 95 % half-width (None for
    one episode) and the per-episode accuracies (for paired comparisons)."""

    head: str
    ways: int
    shots: int
    queries: int
    acc_mean: float | None
    acc_ci95: float | None
    n: int
    per_episode: list[float]

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "EpisodeScore":
        for k in ("head", "shots", "acc_mean", "acc_ci95", "n", "per_episode"):
            if not isinstance(d, dict) or k not in d:
                raise ResultError(f"{where}.{k}: missing")
        if not isinstance(d["per_episode"], list) or len(d["per_episode"]) != d["n"]:
            raise ResultError(f"{where}.per_episode: {len(d['per_episode'])} values, n = {d['n']}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"ways": None, "queries": None, **{k: v for k, v in d.items() if k in names}})


@dataclass(frozen=True)
class Result:
    """One unit's result. A ``FAILED`` result has its ``error`` and provenance only."""

    status: Status
    unit: UnitKey
    provenance: Provenance
    error: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    episodes: list[EpisodeScore] = field(default_factory=list)
    source_classes: list[str] = field(default_factory=list)
    training_curve: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (see the module docstring)."""
        out = {"schema": SCHEMA, "status": self.status.value, "error": self.error,
               "unit": dataclasses.asdict(self.unit), "provenance": dataclasses.asdict(self.provenance)}
        if self.ok:
            out.update(source=dict(self.source), target=dict(self.target), layers=list(self.layers),
                       episodes=[dataclasses.asdict(e) for e in self.episodes], source_classes=list(self.source_classes),
                       training_curve=list(self.training_curve))
        return out

    @classmethod
    def from_dict(cls, rec: Any, where: str = "<result>") -> "Result":
        """Validate a JSON record; raise :class:`ResultError` naming ``where`` and the field."""
        if not isinstance(rec, dict):
            raise ResultError(f"{where}: expected a JSON object")
        if rec.get("schema") != SCHEMA:
            raise ResultError(f"{where}: schema: expected {SCHEMA}, got {rec.get('schema')!r}")
        values = tuple(s.value for s in RESULT_STATUSES)
        if rec.get("status") not in values:
            raise ResultError(f"{where}: status: expected one of {values}, got {rec.get('status')!r}")
        status, unit = Status(rec["status"]), UnitKey.from_dict(rec.get("unit"), where)
        if status != Status.OK:
            return cls(status, unit, Provenance.from_dict(rec.get("provenance") or {}, where), rec.get("error"))
        for k, kind in (("source", dict), ("target", dict), ("episodes", list), ("layers", list), ("provenance", dict)):
            if not isinstance(rec.get(k), kind):
                raise ResultError(f"{where}: {k}: expected a {kind.__name__} in a finished result")
        episodes = [EpisodeScore.from_dict(ep, f"{where}: episodes[{i}]") for i, ep in enumerate(rec["episodes"])]
        return cls(status, unit, Provenance.from_dict(rec["provenance"], where), rec.get("error"), rec["source"],
                   rec["target"], rec["layers"], episodes, rec.get("source_classes", []), rec.get("training_curve", []))


@dataclass(frozen=True)
class Canon:
    """What a task's file says its results must hold (``ncbench.leaderboard.canon`` builds it from the task):
    its name and version, every (head, shots) with the episodes' ways / queries / count, the episodes
    digest of each shots (None: not computed) and, per unit, the config hash it must have
    (``config_hash(unit)`` -> hash, or None when the record lacks what the hash covers)."""

    task: str
    version: int
    heads: tuple[str, ...]
    shots: tuple[int, ...]
    ways: int
    queries: int
    count: int
    episodes: dict[str, str] | None = None
    config_hash: Any = None  # Callable[[UnitKey], str | None] | None


def _number(value: Any, where: str, *, lo: float | None = None, hi: float | None = None,
            none: bool = True) -> None:
    """A JSON number (not a bool, not a string), finite, within int64 when an integer, within [lo, hi]."""
    if value is None:
        if not none:
            raise ResultError(f"{where}: expected a number, got null")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResultError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        raise ResultError(f"{where}: integer {value} is outside int64")
    if isinstance(value, float) and not math.isfinite(value):
        raise ResultError(f"{where}: expected a finite number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ResultError(f"{where}: {value!r} is outside [{lo}, {hi}]")


def _integer(value: Any, where: str, lo: int = INT64[0], none: bool = False) -> None:
    if value is None and none:
        return
    _check_int(value, where)
    _number(value, where, lo=lo)


def _string(value: Any, where: str, none: bool = False) -> None:
    if value is None and none:
        return
    if not isinstance(value, str) or not value:
        raise ResultError(f"{where}: expected a non-empty string, got {value!r}")


def _is_accuracy(key: str) -> bool:
    return key == "acc" or key.endswith("_acc") or key.startswith("acc_")


def _check_values(r: "Result", where: str, canon: Canon | None) -> None:
    """The value checks of :func:`validate_record` on a structurally valid result."""
    u, prov = r.unit, r.provenance
    for k in ("task", "model", "backbone", "config_hash"):
        _string(getattr(u, k), f"{where}: unit.{k}")
    _integer(u.task_version, f"{where}: unit.task_version", 0)
    _integer(u.source_classes, f"{where}: unit.source_classes", 1)
    _integer(u.seed, f"{where}: unit.seed")
    _string(u.model_hash, f"{where}: unit.model_hash", none=True)
    for k in ("backbone_options", "pretrain"):
        if getattr(u, k) is not None and not isinstance(getattr(u, k), dict):
            raise ResultError(f"{where}: unit.{k}: expected a mapping, got {getattr(u, k)!r}")
    _integer(prov.world_size, f"{where}: provenance.world_size", 1)
    _number(prov.wall_time_s, f"{where}: provenance.wall_time_s", lo=0)
    for k in ("checkpoint", "checkpoint_sha256", "ncbench_version", "git_commit", "torch_version", "device", "date"):
        if getattr(prov, k) is not None and not isinstance(getattr(prov, k), str):
            raise ResultError(f"{where}: provenance.{k}: expected a string or null, got {getattr(prov, k)!r}")
    if not isinstance(prov.episodes, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in prov.episodes.items()):
        raise ResultError(f"{where}: provenance.episodes: expected a mapping of shots to digests")
    if canon is not None:
        if u.task != canon.task or u.task_version != canon.version:
            raise ResultError(f"{where}: unit: task {u.task!r} version {u.task_version} is not the task file's "
                              f"{canon.task!r} version {canon.version}")
        expected = canon.config_hash(u) if canon.config_hash is not None else None
        if expected is not None and u.config_hash != expected:
            raise ResultError(f"{where}: unit.config_hash: {u.config_hash} is not the canonical {expected} of the "
                              "task file with this unit's backbone, options, source classes and seed")
    if not r.ok:
        _string(r.error, f"{where}: error")
        return
    for scope, values in (("source", r.source), ("target", r.target)):
        for k, v in values.items():
            if not isinstance(v, bool):
                _number(v, f"{where}: {scope}.{k}", **({"lo": 0, "hi": 1} if _is_accuracy(k) else {}))
    for i, row in enumerate(r.layers):
        if not isinstance(row, dict):
            raise ResultError(f"{where}: layers[{i}]: expected a mapping")
        _number(row.get("ncc_error"), f"{where}: layers[{i}].ncc_error", lo=0, hi=1)
        _number(row.get("cdnv"), f"{where}: layers[{i}].cdnv", lo=0)
    if not r.episodes:
        raise ResultError(f"{where}: episodes: a finished result needs at least one (head, shots) block")
    for i, ep in enumerate(r.episodes):
        _check_episode(ep, f"{where}: episodes[{i}]")
    blocks = Counter((ep.head, ep.shots) for ep in r.episodes)
    twice = sorted(b for b, n in blocks.items() if n > 1)
    if twice:
        raise ResultError(f"{where}: episodes: more than one block for (head, shots) {twice[0]}")
    shots = {str(ep.shots) for ep in r.episodes}
    if set(prov.episodes) != shots:
        raise ResultError(f"{where}: provenance.episodes: digests for shots {sorted(prov.episodes)}, episode blocks "
                          f"for shots {sorted(shots)}")
    if canon is None:
        return
    want = {(h, s) for h in canon.heads for s in canon.shots}
    if set(blocks) != want:
        diff = sorted(want ^ set(blocks), key=str)
        raise ResultError(f"{where}: episodes: expected one block per (head, shots) of the task file, "
                          f"{len(want)} in all; {diff[0]} is {'missing' if diff[0] in want else 'not in the task'}")
    for i, ep in enumerate(r.episodes):
        got = (ep.ways, ep.queries, ep.n)
        if got != (canon.ways, canon.queries, canon.count):
            raise ResultError(f"{where}: episodes[{i}]: ways, queries, n = {got}, the task file says "
                              f"{(canon.ways, canon.queries, canon.count)}")
    if canon.episodes is not None:
        for k, digest in sorted(prov.episodes.items()):
            if canon.episodes.get(k) != digest:
                raise ResultError(f"{where}: provenance.episodes[{k!r}]: digest {digest} is not the task's "
                                  f"canonical {canon.episodes.get(k)}: other episodes were scored")


def _check_episode(ep: "EpisodeScore", where: str) -> None:
    _string(ep.head, f"{where}.head")
    for k in ("ways", "shots", "queries"):
        _integer(getattr(ep, k), f"{where}.{k}", 1, none=k != "shots")
    _integer(ep.n, f"{where}.n", 1)
    if not isinstance(ep.per_episode, list):
        raise ResultError(f"{where}.per_episode: expected a list")
    for j, a in enumerate(ep.per_episode):
        _number(a, f"{where}.per_episode[{j}]", lo=0, hi=1, none=False)
    _number(ep.acc_mean, f"{where}.acc_mean", lo=0, hi=1, none=False)
    _number(ep.acc_ci95, f"{where}.acc_ci95", lo=0)
    mean, ci, n = mean_ci95(ep.per_episode)
    if abs(ep.acc_mean - mean) > TOLERANCE:
        raise ResultError(f"{where}.acc_mean: {ep.acc_mean!r} is not the mean of per_episode ({mean!r})")
    if n == 1:
        if ep.acc_ci95 is not None:
            raise ResultError(f"{where}.acc_ci95: expected null for one episode, got {ep.acc_ci95!r}")
    elif ep.acc_ci95 is None or abs(ep.acc_ci95 - ci) > TOLERANCE:
        raise ResultError(f"{where}.acc_ci95: {ep.acc_ci95!r} is not the 95 % half-width of per_episode ({ci!r})")


def validate_record(rec: Any, where: str = "<result>", canon: Canon | None = None) -> "Result":
    """The :class:`Result` of JSON record ``rec``, after checking it whole; raise :class:`ResultError` naming
    ``where`` and the field otherwise. Checks: the schema and types; integers within int64, numbers finite;
    ranges (accuracies in [0, 1], CI ≥ 0, counts ≥ 1); each ``acc_mean`` equal to the mean of its
    ``per_episode`` and ``acc_ci95`` to its recomputed 95 % half-width (within :data:`TOLERANCE`); a finished
    result holds at least one episode block, at most one per (head, shots), and an episodes digest per
    shots. With ``canon`` (from the task file): the task name and version, exactly one block per
    (head, shots) of the task with its ways / queries / episode count, the canonical episodes digests and
    config hash."""
    r = Result.from_dict(rec, where)
    _check_values(r, where, canon)
    return r


def result_path(results_dir: Path, unit: UnitKey) -> Path:
    return unit.path(results_dir)


def write_result(results_dir: Path, result: Result) -> Path:
    """Write ``result`` atomically to its path under ``results_dir``; returns the path."""
    record = result.to_dict()
    path = result.unit.path(results_dir)
    validate_record(json.loads(json.dumps(record, allow_nan=False)), f"{path} (not written)")
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, allow_nan=False) + "\n")
    return path


def load_result(path: Path, canon: Canon | None = None) -> Result:
    """Read and :func:`validate_record` a result file; ResultError naming the file otherwise."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:  # ValueError: bad JSON, bad UTF-8, numbers too deep to parse
        raise ResultError(f"{path}: not a readable JSON result file ({e})") from None
    result = validate_record(rec, str(path), canon)
    path, unit = Path(path), result.unit
    expected = unit.path(Path("<results>"))
    if (path.name, path.parent.name, path.parent.parent.name) != (expected.name, unit.model, unit.task):
        raise ResultError(f"{path}: file name does not match its unit (expected {expected})")
    return result


def iter_results(results_dir: Path, task: str | None = None, canon: Canon | None = None) -> Iterator[tuple[Path, Result]]:
    """Every valid result file under ``results_dir`` (optionally of one task, checked against its ``canon``),
    in sorted path order. Invalid files are logged by name and skipped, never raised: a unit without a
    valid file is simply re-run, a leaderboard built without it."""
    root = Path(results_dir) / task if task else Path(results_dir)
    for path in sorted(root.rglob("*.json")):
        try:
            yield path, load_result(path, canon)
        except ResultError as e:
            log.warning("skipping invalid result file: %s", e)


class NameTakenError(ResultError):
    """A model name already holds results of another configuration (backbone, options, ...)."""


def bind_model_name(results_dir: Path, unit: UnitKey, replace: bool = False) -> list[Path]:
    """Check that ``unit.model`` on ``unit.task`` has no result file of another configuration: another
    ``model_hash`` (results written before ncbench stored it: another backbone spec). Raise
    :class:`NameTakenError` (one line) naming the model, unless ``replace``: then those files are removed
    (the caller re-runs the model under its new configuration) and returned."""
    folder = Path(results_dir) / unit.task / unit.model
    other = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            old = load_result(path).unit
        except ResultError as e:
            log.warning("skipping invalid result file: %s", e)
            continue
        same = old.model_hash == unit.model_hash if old.model_hash is not None else old.backbone == unit.backbone
        if not same:
            other.append((path, old))
    if other and not replace:
        path, old = other[0]
        raise NameTakenError(f"model name {unit.model!r} is already taken on task {unit.task!r} by another "
                             f"configuration (backbone {old.backbone!r}, model hash {old.model_hash}; this one: "
                             f"{unit.backbone!r}, {unit.model_hash}) in {path}: choose another name, or pass "
                             "--replace to drop its results")
    for path, _ in other:
        log.warning("--replace: removing %s (model %r under another configuration)", path, unit.model)
        path.unlink()
    return [p for p, _ in other]
