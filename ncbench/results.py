"""Raw result files: one JSON per finished (or failed) unit, written atomically, validated on load.

A *unit* is one (task, model, source-class count, seed). Its result file holds everything the
leaderboard needs plus the per-episode accuracies (for paired comparisons) and the layer curves:

```
{"schema": 1, "status": "ok" | "failed", "error": str | null,
 "unit": {"task", "task_version", "model", "backbone", "source_classes", "seed", "config_hash"},
 "provenance": {"ncbench_version", "git_commit", "torch_version", "device", "checkpoint",
                "checkpoint_sha256", "date", "wall_time_s", "episodes": {"<shots>": "<episodes digest>"}},
 "source": {metric: float, ...},               # source train/test collapse, accuracies, effective depth
 "target": {"cdnv": float, "ncc_acc": float},
 "layers": [{"layer", "variant", "ncc_error", "cdnv"}, ...],
 "episodes": [{"head", "ways", "shots", "queries", "acc_mean", "acc_ci95", "n", "per_episode": [...]}, ...]}
```
Paths are derived from the unit: ``<results>/<task>/<model>/s<S>-seed<N>-<config_hash>.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

from ncbench.files import atomic_write_text

SCHEMA = 1
STATUSES = ("ok", "failed")
UNIT_KEYS = ("task", "task_version", "model", "backbone", "source_classes", "seed", "config_hash")

log = logging.getLogger(__name__)


class ResultError(ValueError):
    """A result file is missing fields, has wrong types, or is not valid JSON."""


def result_path(results_dir: Path, unit: dict[str, Any]) -> Path:
    return (Path(results_dir) / unit["task"] / unit["model"]
            / f"s{unit['source_classes']}-seed{unit['seed']}-{unit['config_hash']}.json")


def write_result(results_dir: Path, record: dict[str, Any]) -> Path:
    validate_record(record, "<new result>")
    path = result_path(results_dir, record["unit"])
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, allow_nan=False) + "\n")
    return path


def validate_record(rec: Any, where: str) -> dict[str, Any]:
    """Check the fields the leaderboard relies on; raise :class:`ResultError` naming file and field."""
    if not isinstance(rec, dict):
        raise ResultError(f"{where}: expected a JSON object")
    if rec.get("schema") != SCHEMA:
        raise ResultError(f"{where}: schema: expected {SCHEMA}, got {rec.get('schema')!r}")
    if rec.get("status") not in STATUSES:
        raise ResultError(f"{where}: status: expected one of {STATUSES}, got {rec.get('status')!r}")
    unit = rec.get("unit")
    if not isinstance(unit, dict) or any(k not in unit for k in UNIT_KEYS):
        raise ResultError(f"{where}: unit: expected a mapping with {', '.join(UNIT_KEYS)}")
    for k in ("task_version", "source_classes", "seed"):
        if not isinstance(unit[k], int) or isinstance(unit[k], bool):
            raise ResultError(f"{where}: unit.{k}: expected an integer, got {unit[k]!r}")
    if rec["status"] == "ok":
        for k, kind in (("source", dict), ("target", dict), ("episodes", list), ("layers", list), ("provenance", dict)):
            if not isinstance(rec.get(k), kind):
                raise ResultError(f"{where}: {k}: expected a {kind.__name__} in a finished result")
        for i, ep in enumerate(rec["episodes"]):
            for k in ("head", "shots", "acc_mean", "acc_ci95", "n", "per_episode"):
                if k not in ep:
                    raise ResultError(f"{where}: episodes[{i}].{k}: missing")
            if len(ep["per_episode"]) != ep["n"]:
                raise ResultError(f"{where}: episodes[{i}].per_episode: {len(ep['per_episode'])} values, n = {ep['n']}")
    return rec


def load_result(path: Path) -> dict[str, Any]:
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResultError(f"{path}: not a readable JSON result file ({e})") from None
    return validate_record(rec, str(path))


def iter_results(results_dir: Path, task: str | None = None) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every valid result file under ``results_dir`` (optionally of one task), in sorted path order.
    Invalid files are logged and skipped: a unit without a valid file is simply re-run."""
    root = Path(results_dir) / task if task else Path(results_dir)
    for path in sorted(root.rglob("*.json")):
        try:
            yield path, load_result(path)
        except ResultError as e:
            log.warning("skipping invalid result file: %s", e)
