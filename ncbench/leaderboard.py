"""Leaderboards: ``leaderboards/<task>.csv`` derived from the raw result files by one command.

One row per (model, source_classes, seed, head, shots) of a finished unit, and one row (head and shots
empty) per failed unit, so failures are never silently missing. Rows are sorted by their key and floats
written with a fixed format, so rebuilding from the same result files gives the same bytes. A rebuild
reads the result files and writes the file atomically while holding ``<task>.csv.lock``, so concurrent
rebuilds cannot tear it, and none can overwrite a newer rebuild with rows read before it: every process
writes its result file before rebuilding, so the last rebuild to take the lock holds every row.
Columns: :func:`columns` (the metric columns come from the metric registry); their meanings:
``leaderboards/README.md``, checked against :func:`columns` by the tests.

Integrity: every result file is validated (``ncbench.results.validate_record``; against the task file's
:func:`canon` when the task is known) and a bad one is reported by name and left out, never crashing the
build. Beside each CSV, ``<task>.sha256`` lists the sha256 of every result file the CSV was built from
(``sha256sum`` format: ``<sha256>  <path relative to the results folder>``, sorted by path). A rebuild
checks the files against it first: a listed file whose bytes changed, or that disappeared, is reported
(:class:`ManifestError`, exit 2 from ``ncbench leaderboard``) unless ``update_manifest`` is given
(``--update-manifest``); files not listed yet are new results and are simply added.
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

from ncbench import ranking, verify
from ncbench.analysis import write_analysis
from ncbench.data import DatasetError
from ncbench.episodes import sample_episodes
from ncbench.files import atomic_write_text, sha256_file
from ncbench.heads import head_label
from ncbench.metrics import columns as metric_columns
from ncbench.names import check_name, inside, is_valid_name
from ncbench.results import Canon, Provenance, Result, Status, UnitKey, iter_results
from ncbench.tasks import Task
from ncbench.unit import RunOptions, Unit, unit_data

log = logging.getLogger(__name__)

KEY = ["task", "model", "source_classes", "seed", "head", "shots"]
# columns added after leaderboards were first written, with the value every row of an older CSV has
LATER_COLUMNS = {"pretrained": "True"}
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


MANIFEST_SUFFIX = ".sha256"


class ManifestError(ValueError):
    """Result files differ from the manifest a leaderboard was built from; names them."""


def canon(task: Task, data_root: str | None = None, episodes: bool = True) -> Canon:
    """What ``task``'s file says its results hold (:class:`ncbench.results.Canon`): heads, shots, episode
    sizes, the config hash of a unit, and (``episodes``) the digest of each shots' episodes, drawn as
    ``ncbench run`` draws them (``ncbench.run.episode_scores``). That loads the task's dataset (from its
    cache); when it cannot be loaded here the digests are not checked (logged)."""
    digests = None
    if episodes:  # the episodes depend on the task only: plan its first unit's data, as run does
        unit = Unit(task, "canon", task.backbone, task.backbone_options, task.source_classes[0], task.seeds[0])
        try:
            data = unit_data(unit, RunOptions(data_root=data_root))
        except (DatasetError, OSError) as e:
            log.warning("task %s: dataset not available here (%s); episode digests not checked", task.name, e)
        else:
            ep = task.episodes
            digests = {str(s): sample_episodes(data.target_dataset.labels, data.target_pool, ep.ways, s, ep.queries,
                                               ep.count, ep.seed).digest for s in ep.shots}

    def config_hash(key: UnitKey) -> str | None:
        zoo = task.models.get(key.model)
        if zoo is not None and zoo.backbone == key.backbone:  # a zoo model: its spec is in the task file
            return Unit(task, key.model, zoo.backbone, zoo.backbone_options, key.source_classes, key.seed,
                        zoo.pretrain).config_hash
        if key.backbone_options is None:  # written before results kept the options: cannot recompute
            return None
        return Unit(task, key.model, key.backbone, key.backbone_options, key.source_classes, key.seed,
                    key.pretrain or {}).config_hash

    ep = task.episodes
    return Canon(task.name, task.version, tuple(head_label(h) for h in task.heads), tuple(ep.shots), ep.ways,
                 ep.queries, ep.count, digests, config_hash)


def build(results_dir: Path, task: str, canon: Canon | None = None) -> pd.DataFrame:
    """The leaderboard of ``task`` from every valid result file under ``results_dir/task`` (checked against
    the task file's ``canon`` when given); invalid files are logged by name and left out."""
    return _build(results_dir, task, canon)[0]


def _build(results_dir: Path, task: str, canon: Canon | None) -> tuple[pd.DataFrame, list[Path]]:
    rows, used = [], []
    for path, rec in iter_results(results_dir, task, canon):
        used.append(path)
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
    return df, used


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


def manifest_path(leaderboards_dir: Path, task: str) -> Path:
    return Path(leaderboards_dir) / f"{task}{MANIFEST_SUFFIX}"


def manifest_text(results_dir: Path, files: list[Path]) -> str:
    """``<sha256>  <path relative to results_dir>`` per file, sorted by path (``sha256sum -c`` reads it from
    the results folder)."""
    rel = sorted(Path(f).relative_to(results_dir).as_posix() for f in files)
    return "".join(f"{sha256_file(Path(results_dir) / r)}  {r}\n" for r in rel)


def read_manifest(path: Path) -> dict[str, str]:
    """A manifest as {relative path: sha256}; ManifestError naming the file and line when malformed."""
    out = {}
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not rel:
            raise ManifestError(f"{path}: line {i}: expected '<sha256>  <relative path>', got {line[:100]!r}")
        out[rel] = digest
    return out


def check_manifest(results_dir: Path, leaderboards_dir: Path, task: str) -> list[str]:
    """Problems of the task's result files against its manifest: a listed file changed or missing (one
    line each); empty when they match or there is no manifest yet."""
    path = manifest_path(leaderboards_dir, task)
    if not path.is_file():
        return []
    problems = []
    for rel, digest in sorted(read_manifest(path).items()):
        f = Path(results_dir) / rel
        if not f.is_file():
            problems.append(f"{rel}: listed in {path} but missing")
        elif sha256_file(f) != digest:
            problems.append(f"{rel}: sha256 differs from {path}")
    return problems


def rebuild(results_dir: Path, leaderboards_dir: Path, tasks: list[str] | None = None, *,
            canons: dict[str, Canon] | None = None, update_manifest: bool = True,
            readme: Path | None = None) -> list[Path]:
    """Rebuild ``leaderboards_dir/<task>.csv``, its manifest, its ranked view ``<task>.md``
    (:mod:`ncbench.ranking`, derived from the CSV as written) and its ``<task>-analysis.csv``
    (:mod:`ncbench.analysis`) for the given tasks (default: every task with results), checking each task's
    results against ``canons[task]`` when given; returns the CSV paths. ``readme``: a README whose marked
    ranked-view blocks of these tasks are refreshed too. Result files that differ
    from the existing manifest are reported: logged when ``update_manifest`` (the writers, ``run`` and
    ``submit``, rewrite results they ran), raised as :class:`ManifestError` otherwise (``ncbench leaderboard``
    without ``--update-manifest``), before anything is written."""
    results_dir = Path(results_dir)
    if tasks is None:
        tasks = sorted(p.name for p in results_dir.iterdir() if p.is_dir()) if results_dir.is_dir() else []
        for bad in [t for t in tasks if not is_valid_name(t)]:
            log.warning("skipping results folder %s: %r is not a valid task name", results_dir / bad, bad)
        tasks = [t for t in tasks if is_valid_name(t)]
    written, views = [], []
    for task in tasks:
        path = inside(leaderboards_dir, f"{check_name(task, 'task')}.csv")
        with lock(path):  # read and write under one lock: a rebuild that read fewer files cannot write last
            problems = check_manifest(results_dir, leaderboards_dir, task)
            if problems and not update_manifest:
                raise ManifestError(f"{len(problems)} result files of task {task!r} differ from the manifest "
                                    f"{manifest_path(leaderboards_dir, task)}: {problems[0]}"
                                    + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                                    + "; check them, then rebuild with --update-manifest to accept them")
            for p in problems:
                log.warning("result file %s (manifest updated)", p)
            df, used = _build(results_dir, task, (canons or {}).get(task))
            atomic_write_text(path, to_csv_text(df))
            atomic_write_text(manifest_path(leaderboards_dir, task), manifest_text(results_dir, used))
            board = read(path)  # both derived views read the CSV as written
            view = _write_view(board, task, path, results_dir, leaderboards_dir)
            write_analysis(task, board, leaderboards_dir)  # <task>-analysis.csv: does collapse predict transfer?
        views.append(view)
        written.append(path)
        log.info("leaderboard %s: %d rows (%d failed units)", written[-1], len(df), int(df["status"].eq(Status.FAILED.value).sum()))
    if readme is not None and ranking.update_readme(readme, views):
        log.info("refreshed the ranked tables of %s", readme)
    return written


def refresh_view(results_dir: Path, leaderboards_dir: Path, task: str) -> Path | None:
    """Rewrite the ranked view ``<task>.md`` from the task's leaderboard CSV as it is and its verification rows
    (``ncbench verify`` calls this after writing them); None when the task has no leaderboard CSV."""
    path = inside(leaderboards_dir, f"{check_name(task, 'task')}.csv")
    if not path.is_file():
        return None
    with lock(path):
        _write_view(read(path), task, path, results_dir, leaderboards_dir)
    return path.with_suffix(".md")


def _write_view(board: pd.DataFrame, task: str, path: Path, results_dir: Path,
                leaderboards_dir: Path) -> ranking.RankedView:
    """Write the ranked view of leaderboard ``board`` (read from ``path``) with the task's verification marks
    to ``path`` with suffix ``.md``; return the view."""
    view = ranking.ranked_view(board, task, verification=verify.marks(leaderboards_dir, results_dir, task))
    ranking.write_markdown(view, path.with_suffix(".md"))
    return view


def read(path: Path) -> pd.DataFrame:
    """Read a leaderboard CSV with its column types; raise ValueError naming the file and column on a
    missing column or a value of the wrong type."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path}: cannot read leaderboard CSV ({e})") from None
    kinds = columns()
    for c, value in LATER_COLUMNS.items():
        if c not in df.columns:  # a CSV written before the column existed
            df[c] = value
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
