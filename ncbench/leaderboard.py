"""Leaderboards: ``leaderboards/<task>.csv`` derived from the raw result files by one command.

One row per (model, source_classes, seed, head, shots) of a finished unit, and one row (head and shots
empty) per failed unit, so failures are never silently missing. Rows are sorted by their key and floats
written with a fixed format, so rebuilding from the same result files gives the same bytes. A rebuild
reads the result files and writes the file atomically while holding ``<task>.csv.lock``, so concurrent
rebuilds cannot tear it, and none can overwrite a newer rebuild with rows read before it: every process
writes its result file before rebuilding, so the last rebuild to take the lock holds every row.
Column meanings: ``leaderboards/README.md``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock

from ncbench.files import atomic_write_text
from ncbench.results import Result, Status, iter_results

log = logging.getLogger(__name__)

KEY = ["task", "model", "source_classes", "seed", "head", "shots"]
SOURCE_METRICS = ["source_train_acc", "source_test_acc", "cdnv_train", "cdnv_test", "nc1", "nc1_quotient",
                  "nc1_subset5", "nc_rank_limited", "nc2", "nc2_equinorm",
                  "nc2_equiangularity", "nc3", "nc4", "ncc_train_acc", "ncc_test_acc", "strong_test_collapse",
                  "weak_test_collapse", "effective_depth", "effective_depth_reached"]
PROVENANCE = ["episodes_hash", "config_hash", "checkpoint", "checkpoint_sha256", "ncbench_version", "git_commit",
              "torch_version", "device", "world_size", "date", "wall_time_s"]
COLUMNS = (KEY + ["task_version", "backbone", "status", "ways", "queries", "acc_mean", "acc_ci95", "n_episodes",
                  "target_cdnv", "target_ncc_acc"] + SOURCE_METRICS + PROVENANCE + ["error", "result_file"])
INT_COLUMNS = ["source_classes", "seed", "task_version", "shots", "ways", "queries", "n_episodes", "effective_depth",
               "world_size"]
STR_COLUMNS = ["task", "model", "head", "backbone", "status", "episodes_hash", "config_hash", "checkpoint",
               "checkpoint_sha256", "ncbench_version", "git_commit", "torch_version", "device", "date", "error",
               "result_file"]
BOOL_COLUMNS = ["nc_rank_limited", "effective_depth_reached"]
FLOAT_FORMAT = "%.8g"


def rows_from_record(rec: Result, result_file: str = "") -> list[dict[str, Any]]:
    """Flatten one result into leaderboard rows (dicts keyed by :data:`COLUMNS`)."""
    prov = rec.provenance
    base = dataclasses.asdict(rec.unit)
    base.update({k: getattr(prov, k) for k in PROVENANCE if k not in ("episodes_hash", "config_hash")})
    base.update(status=rec.status.value, error=rec.error, result_file=result_file)
    if not rec.ok:
        return [base]
    base.update({k: rec.source.get(k) for k in SOURCE_METRICS})
    base.update(target_cdnv=rec.target.get("cdnv"), target_ncc_acc=rec.target.get("ncc_acc"))
    return [{**base, "head": ep.head, "shots": ep.shots, "ways": ep.ways, "queries": ep.queries,
             "acc_mean": ep.acc_mean, "acc_ci95": ep.acc_ci95, "n_episodes": ep.n,
             "episodes_hash": prov.episodes.get(str(ep.shots))} for ep in rec.episodes]


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> typed, sorted DataFrame with exactly :data:`COLUMNS` (nullable ints, strings, floats)."""
    df = pd.DataFrame(rows, columns=COLUMNS)
    for c in INT_COLUMNS:
        df[c] = pd.array(df[c], dtype="Int64")
    for c in STR_COLUMNS:
        df[c] = df[c].astype("string")
    for c in BOOL_COLUMNS:
        df[c] = df[c].astype("boolean")
    for c in set(COLUMNS) - set(INT_COLUMNS) - set(STR_COLUMNS) - set(BOOL_COLUMNS):
        df[c] = pd.to_numeric(df[c]).astype("float64")
    return df.sort_values(KEY, na_position="first", kind="mergesort").reset_index(drop=True)


def build(results_dir: Path, task: str) -> pd.DataFrame:
    """The leaderboard of ``task`` from every valid result file under ``results_dir/task``."""
    rows = []
    for path, rec in iter_results(results_dir, task):
        try:
            rel = str(path.relative_to(results_dir))
        except ValueError:
            rel = str(path)
        rows.extend(rows_from_record(rec, rel))
    df = to_frame(rows)
    dup = df.duplicated(KEY, keep=False) & df["status"].eq(Status.OK.value)
    if dup.any():
        # two result files for one key: the same unit run with different configs (config_hash differs);
        # keep the newest and say so, instead of ranking both
        log.warning("%d leaderboard rows share a key; keeping the newest result of each", int(dup.sum()))
        df = df.sort_values("date").drop_duplicates(KEY, keep="last")
        df = df.sort_values(KEY, na_position="first", kind="mergesort").reset_index(drop=True)
    return df


def to_csv_text(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n")


def lock(path: Path) -> FileLock:
    """The lock of leaderboard CSV ``path`` (``<path>.lock``), creating its folder. An OS file lock: the
    kernel releases it when its holder dies, even by SIGKILL, so a killed rebuild never blocks the next."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


def rebuild(results_dir: Path, leaderboards_dir: Path, tasks: list[str] | None = None) -> list[Path]:
    """Rebuild ``leaderboards_dir/<task>.csv`` for the given tasks (default: every task with results)."""
    results_dir = Path(results_dir)
    if tasks is None:
        tasks = sorted(p.name for p in results_dir.iterdir() if p.is_dir()) if results_dir.is_dir() else []
    written = []
    for task in tasks:
        path = Path(leaderboards_dir) / f"{task}.csv"
        with lock(path):  # read and write under one lock: a rebuild that read fewer files cannot write last
            df = build(results_dir, task)
            atomic_write_text(path, to_csv_text(df))
        written.append(path)
        log.info("leaderboard %s: %d rows (%d failed units)", written[-1], len(df), int(df["status"].eq(Status.FAILED.value).sum()))
    return written


def read(path: Path) -> pd.DataFrame:
    """Read a leaderboard CSV with its column types; raise ValueError naming the file and column on a
    missing column or a value of the wrong type."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path}: cannot read leaderboard CSV ({e})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing leaderboard columns {missing} (expected the columns of leaderboards/README.md)")
    for c in BOOL_COLUMNS:
        bad = df[c].notna() & ~df[c].isin(["True", "False"])
        if bad.any():
            raise ValueError(f"{path}: column {c!r}: expected True or False, got {df.loc[bad, c].iloc[0]!r} "
                             f"(row {int(bad.idxmax()) + 2})")
        df[c] = df[c].map({"True": True, "False": False})
    for c in set(COLUMNS) - set(STR_COLUMNS) - set(BOOL_COLUMNS):
        conv = pd.to_numeric(df[c], errors="coerce")
        bad = (conv.isna() & df[c].notna()) | np.isinf(conv)
        kind = "numbers"
        if c in INT_COLUMNS:
            bad |= conv.notna() & (conv % 1 != 0)
            kind = "integers"
        if bad.any():
            raise ValueError(f"{path}: column {c!r}: expected {kind}, got {df.loc[bad, c].iloc[0]!r} "
                             f"(row {int(bad.idxmax()) + 2})")
        df[c] = conv
    return to_frame(df.to_dict("records"))
