"""Raw result files: one JSON per finished (or failed) unit, written atomically, validated on load.

A *unit* is one (task, model, source-class count, seed). Its result file holds everything the
leaderboard needs plus the per-episode accuracies (for paired comparisons), the layer curves and the
training curve. This module is the one place that defines that record: :class:`Result` and its parts
(:class:`UnitKey`, :class:`Provenance`, :class:`EpisodeScore`), the :class:`Status` values, the
:data:`SCHEMA` version, the file's path and its validation. The JSON form (``Result.to_dict``)::

    {"schema": 1, "status": "ok" | "failed", "error": str | null,
     "unit": {"task", "task_version", "model", "backbone", "source_classes", "seed", "config_hash"},
     "provenance": {"checkpoint", "checkpoint_sha256", "ncbench_version", "git_commit" (null outside git),
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
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterator

from ncbench.files import atomic_write_text
from ncbench.names import check_name, inside, name_problem

SCHEMA = 1

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
    count, seed and config hash (everything that determines its numbers)."""

    task: str
    task_version: int
    model: str
    backbone: str
    source_classes: int
    seed: int
    config_hash: str

    def path(self, results_dir: Path) -> Path:
        """The unit's result file under ``results_dir``."""
        check_name(self.task, "unit.task")
        check_name(self.model, "unit.model")
        return inside(results_dir, self.task, self.model,
                      f"s{self.source_classes}-seed{self.seed}-{self.config_hash}.json")

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "UnitKey":
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(d, dict) or any(k not in d for k in names):
            raise ResultError(f"{where}: unit: expected a mapping with {', '.join(names)}")
        for k in ("task_version", "source_classes", "seed"):
            _check_int(d[k], f"{where}: unit.{k}")
        for k in ("task", "model"):  # names become folders and leaderboard cells (ncbench.names)
            problem = name_problem(d[k])
            if problem is not None:
                raise ResultError(f"{where}: unit.{k}: invalid name {d[k]!r}: {problem}")
        return cls(**{k: d[k] for k in names})


@dataclass(frozen=True)
class Provenance:
    """Where a result came from. ``checkpoint``: checkpoint name ``model.task-sS-seedN``;
    ``checkpoint_sha256``: of its weights (None for a unit that failed before having one); ``git_commit``:
    None outside a git checkout; ``device`` / ``world_size``: what pretrained the checkpoint (results written
    before ncbench recorded it: one process); ``date``: UTC, ISO 8601, when the unit finished;
    ``wall_time_s``: the unit's wall time; ``episodes``: shots (as a string) -> digest of its episodes."""

    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
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
        if len(d["per_episode"]) != d["n"]:
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


def result_path(results_dir: Path, unit: UnitKey) -> Path:
    return unit.path(results_dir)


def write_result(results_dir: Path, result: Result) -> Path:
    """Write ``result`` atomically to its path under ``results_dir``; returns the path."""
    record = result.to_dict()
    Result.from_dict(record, "<new result>")
    path = result.unit.path(results_dir)
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, allow_nan=False) + "\n")
    return path


def load_result(path: Path) -> Result:
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResultError(f"{path}: not a readable JSON result file ({e})") from None
    return Result.from_dict(rec, str(path))


def iter_results(results_dir: Path, task: str | None = None) -> Iterator[tuple[Path, Result]]:
    """Every valid result file under ``results_dir`` (optionally of one task), in sorted path order.
    Invalid files are logged and skipped: a unit without a valid file is simply re-run."""
    root = Path(results_dir) / task if task else Path(results_dir)
    for path in sorted(root.rglob("*.json")):
        try:
            yield path, load_result(path)
        except ResultError as e:
            log.warning("skipping invalid result file: %s", e)
