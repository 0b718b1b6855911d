"""Leaderboards: ``leaderboards/<task>.csv`` derived from the raw result files by one command.

One row per (model, source_classes, seed, head, shots) of a finished unit, and one row (head and shots
empty) per failed unit, so failures are never silently missing. Rows are sorted by their key and floats
written with a fixed format, so rebuilding from the same result files gives the same bytes. A rebuild
reads the result files and writes the file atomically while holding ``<task>.csv.lock``, so concurrent
rebuilds cannot tear it, and none can overwrite a newer rebuild with rows read before it: every process
writes its result file before rebuilding, so the last rebuild to take the lock holds every row.
Columns: :func:`columns` (the metric columns come from the metric registry); their meanings:
``leaderboards/README.md``, checked against :func:`columns` by the tests.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock

from ncbench.files import atomic_write_text
from ncbench.metrics import columns as metric_columns
from ncbench.names import check_name, inside, is_valid_name
from ncbench.results import Provenance, Result, Status, UnitKey, iter_results

log = logging.getLogger(__name__)

KEY = ["task", "model", "source_classes", "seed", "head", "shots"]
FLOAT_FORMAT = "%.8g"


def _kind(annotation: Any) -> type:
    """int, float or str: the leaderboard type of a typed field (``int``, ``float | None``, ``str | None``)."""
    args = typing.get_args(annotation) or (annotation,)
    return next((k for k in (bool, int, float) if k in args), str)


def columns() -> dict[str, type]:
    """Every leaderboard column, in order, with its type (str, int, float or bool): the key, the unit and
    episode columns, the metric columns of the registry (``ncbench.metrics.columns``: target scope, then
    source and layer scopes, each in registration order), the provenance (:class:`ncbench.results.Provenance`),
    then ``error`` and ``result_file``. Derived at call time, so a metric registered later has its columns."""
    unit = typing.get_type_hints(UnitKey)
    out = {k: _kind(unit.get(k, int if k == "shots" else str)) for k in KEY}
    out.update(task_version=int, backbone=str, status=str, ways=int, queries=int, acc_mean=float, acc_ci95=float,
               n_episodes=int)
    out.update({c.name: c.kind for c in metric_columns(("target", "source", "layer"))})
    out.update(episodes_hash=str, config_hash=str)
    out.update({k: _kind(t) for k, t in typing.get_type_hints(Provenance).items() if k != "episodes"})
    out.update(error=str, result_file=str)
    return out


def rows_from_record(rec: Result, result_file: str = "") -> list[dict[str, Any]]:
    """Flatten one result into leaderboard rows (dicts keyed by :func:`columns`)."""
    prov = rec.provenance
    base = {**dataclasses.asdict(rec.unit), **{k: v for k, v in dataclasses.asdict(prov).items() if k != "episodes"}}
    base.update(status=rec.status.value, error=rec.error, result_file=result_file)
    if not rec.ok:
        return [base]
    for c in metric_columns(("target", "source", "layer")):
        base[c.name] = (rec.target if c.scope == "target" else rec.source).get(c.key)
    return [{**base, "head": ep.head, "shots": ep.shots, "ways": ep.ways, "queries": ep.queries,
             "acc_mean": ep.acc_mean, "acc_ci95": ep.acc_ci95, "n_episodes": ep.n,
             "episodes_hash": prov.episodes.get(str(ep.shots))} for ep in rec.episodes]


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> typed, sorted DataFrame with exactly the :func:`columns` (nullable ints, strings, booleans, floats)."""
    kinds = columns()
    df = pd.DataFrame(rows, columns=list(kinds))
    for c, kind in kinds.items():
        if kind is int:
            df[c] = pd.array(df[c], dtype="Int64")
        elif kind is str:
            df[c] = df[c].astype("string")
        elif kind is bool:
            df[c] = df[c].astype("boolean")
        else:
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


# a text cell a spreadsheet would run as a formula (=, +, -, @, tab, CR or LF first), possibly behind quotes
# already added by this rule: written with one more leading quote, which :func:`read` removes again
FORMULA = re.compile(r"'*[=+\-@\t\r\n]")


def neutralise(value: Any) -> Any:
    """A text cell with a leading ``'`` when a spreadsheet would read it as a formula (CSV injection), and
    its carriage returns written as line feeds (the CSV's line terminator is ``\\n``: a bare CR would not be
    quoted and would split the row)."""
    if not isinstance(value, str):
        return value
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    return "'" + value if FORMULA.match(value) else value


def _restore(value: Any) -> Any:
    return value[1:] if isinstance(value, str) and value.startswith("'") and FORMULA.match(value) else value


def to_csv_text(df: pd.DataFrame) -> str:
    """The CSV text of a leaderboard: fixed float format; text cells go through :func:`neutralise` (numeric
    columns hold numbers, so a negative value stays a number)."""
    df = df.copy()
    for c, kind in columns().items():
        if kind is str and c in df.columns:
            df[c] = df[c].map(neutralise, na_action="ignore").astype("string")
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
        for bad in [t for t in tasks if not is_valid_name(t)]:
            log.warning("skipping results folder %s: %r is not a valid task name", results_dir / bad, bad)
        tasks = [t for t in tasks if is_valid_name(t)]
    written = []
    for task in tasks:
        path = inside(leaderboards_dir, f"{check_name(task, 'task')}.csv")
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
    kinds = columns()
    missing = [c for c in kinds if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing leaderboard columns {missing} (expected the columns of leaderboards/README.md)")
    for c in (c for c, kind in kinds.items() if kind is bool):
        bad = df[c].notna() & ~df[c].isin(["True", "False"])
        if bad.any():
            raise ValueError(f"{path}: column {c!r}: expected True or False, got {df.loc[bad, c].iloc[0]!r} "
                             f"(row {int(bad.idxmax()) + 2})")
        df[c] = df[c].map({"True": True, "False": False})
    for c in (c for c, kind in kinds.items() if kind in (int, float)):
        conv = pd.to_numeric(df[c], errors="coerce")
        bad = (conv.isna() & df[c].notna()) | np.isinf(conv)
        kind = "numbers"
        if kinds[c] is int:
            bad |= conv.notna() & (conv % 1 != 0)
            kind = "integers"
        if bad.any():
            raise ValueError(f"{path}: column {c!r}: expected {kind}, got {df.loc[bad, c].iloc[0]!r} "
                             f"(row {int(bad.idxmax()) + 2})")
        df[c] = conv
    for c in (c for c, kind in kinds.items() if kind is str):
        df[c] = df[c].map(_restore, na_action="ignore")
    return to_frame(df.to_dict("records"))
