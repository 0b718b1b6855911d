"""Compare two leaderboard CSVs of one task: deltas (B − A), rank changes and significance of Δacc.

Rows are joined on their key without the task (``model, source_classes, seed, head, shots``; finished
rows only). For each joined row:

- ``<col>_a``, ``<col>_b``, ``<col>_delta`` (B − A) for every :func:`headline` column (the few-shot
  accuracy and the metric columns the registry marks ``headline``);
- ``rank_a``, ``rank_b``: rank of the model by ``acc_mean`` among the models of that file in the same
  (source_classes, seed, head, shots) group (1 = best, ties share the lower rank); ``rank_delta`` = B − A,
  so a negative value means the model moved up;
- the significance of ``acc_mean_delta``. **paired** when both result files are found and hold per-episode
  accuracies over the same episodes (equal ``episodes_hash``): the interval is mean ± 1.96·std/√n of the
  per-episode differences. **ci** otherwise: ``|Δ| > sqrt(ci_a² + ci_b²)``. ``acc_delta_ci95`` is that
  half-width; ``significant`` is ``|Δ| > acc_delta_ci95`` (empty when the half-width is undefined);
  ``same_episodes`` is False when the episode hashes differ (such rows are never paired).

Keys present in one file only have ``status`` ``only_a`` / ``only_b``; failed units are listed once per
file (``failed_a`` / ``failed_b``, head and shots empty, with their ``error``): nothing is dropped silently.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ncbench import leaderboard
from ncbench.metrics import columns as metric_columns
from ncbench.metrics import metric_of
from ncbench.files import atomic_write_text
from ncbench.results import Result, ResultError, Status, load_result
from ncbench.stats import mean_ci95

log = logging.getLogger(__name__)

JOIN_KEY = [k for k in leaderboard.KEY if k != "task"]
GROUP = [k for k in JOIN_KEY if k != "model"]
ACCURACY = "acc_mean"  # the few-shot accuracy: the column models are ranked by (higher is better)


def headline() -> list[str]:
    """The columns compared: the few-shot accuracy, then every metric column marked ``headline`` in the
    metric registry (``ncbench.metrics.Column``), in leaderboard order."""
    return [ACCURACY] + [c.name for c in metric_columns(("target", "source", "layer")) if c.headline]


STATUSES = ("both", "only_a", "only_b", "failed_a", "failed_b")
ACC_REL_TOL = 1e-6  # leaderboard floats are written with %.8g


def higher_is_better(column: str) -> bool | None:
    """Direction of a leaderboard column: True for the few-shot accuracy, else the ``higher_is_better`` of
    the registered metric producing it (None: a diagnostic, or no metric produces it)."""
    if column == ACCURACY:
        return True
    info = metric_of(column)
    return None if info is None else info.higher_is_better


def arrow(column: str) -> str:
    return {True: "↑", False: "↓", None: ""}[higher_is_better(column)]


# ------------------------------------------------------------------------------------------- loading
def _read_pair(a_path: Path, b_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both leaderboards, typed and checked: readable, one task, the same task, no duplicate keys."""
    frames = []
    for path in (a_path, b_path):
        try:
            df = leaderboard.read(path)
        except ValueError as e:
            raise ValueError(f"cannot compare {a_path} with {b_path}: {e}") from None
        tasks = sorted(df["task"].dropna().unique())
        if len(tasks) != 1:
            raise ValueError(f"cannot compare {a_path} with {b_path}: {path} holds tasks {tasks} "
                             f"(expected the rows of exactly one task)")
        ok = df[df["status"].eq(Status.OK.value)]
        dup = ok.duplicated(JOIN_KEY, keep=False)
        if dup.any():
            first = ok.loc[dup, JOIN_KEY].iloc[0].to_dict()
            raise ValueError(f"cannot compare {a_path} with {b_path}: {path} has several finished rows with the key "
                             f"{first} (expected one per key: rebuild it with `ncbench leaderboard`)")
        frames.append(df)
    task_a, task_b = (f["task"].dropna().iloc[0] for f in frames)
    if task_a != task_b:
        raise ValueError(f"cannot compare {a_path} with {b_path}: different tasks ({task_a!r} in {a_path}, "
                         f"{task_b!r} in {b_path}); compare leaderboards of the same task")
    versions = [sorted(f["task_version"].dropna().unique()) for f in frames]
    if versions[0] != versions[1]:
        log.warning("task %r: versions %s in %s and %s in %s; episodes differ, so no row is paired",
                    task_a, versions[0], a_path, versions[1], b_path)
    return frames[0], frames[1]


def _default_results_dirs(csv_path: Path) -> list[Path]:
    dirs = [Path(csv_path).parent / "results", Path("leaderboards") / "results"]
    return list(dict.fromkeys(d.resolve() for d in dirs))


def _per_episode(row: pd.Series, suffix: str, dirs: list[Path], cache: dict[Path, Result | None]) -> np.ndarray | None:
    """Per-episode accuracies ``[n] float`` of one leaderboard row, from the first results dir whose file at
    ``result_file`` is the row's own (same unit, head, shots, acc_mean and episodes); None when none is."""
    rel = row[f"result_file{suffix}"]
    if pd.isna(rel):
        return None
    for d in dirs:
        path = Path(d) / rel
        if path not in cache:
            try:
                cache[path] = load_result(path) if path.is_file() else None
            except ResultError as e:
                log.warning("no per-episode data from %s", e)
                cache[path] = None
        rec = cache[path]
        if rec is None or not rec.ok:
            continue
        unit = rec.unit
        if (unit.model, unit.source_classes, unit.seed) != (row["model"], row["source_classes"], row["seed"]):
            continue
        if rec.provenance.episodes.get(str(row["shots"])) != row[f"episodes_hash{suffix}"]:
            continue
        for ep in rec.episodes:
            if (ep.head == row["head"] and ep.shots == row["shots"]
                    and math.isclose(ep.acc_mean, row[f"acc_mean{suffix}"], rel_tol=ACC_REL_TOL, abs_tol=1e-12)):
                return np.asarray(ep.per_episode, dtype=np.float64)
    return None


# ------------------------------------------------------------------------------------------- compare
def _ranks(ok: pd.DataFrame) -> pd.Series:
    """Rank of each row's model by acc_mean within its (source_classes, seed, head, shots) group."""
    return (ok.groupby(GROUP, dropna=False)["acc_mean"]
            .rank(method="min", ascending=not higher_is_better(ACCURACY))
            .astype("Int64"))


def _significance(row: pd.Series, same_episodes: bool, dirs_a: list[Path], dirs_b: list[Path],
                  cache: dict) -> tuple[str, float]:
    """(test, half-width) of the 95 % interval of acc_mean B − A for one joined row."""
    if same_episodes:
        a = _per_episode(row, "_a", dirs_a, cache)
        b = _per_episode(row, "_b", dirs_b, cache)
        if a is not None and b is not None and a.shape == b.shape:
            _, half, _ = mean_ci95(b - a)
            return "paired", half
    return "ci", math.hypot(row["acc_ci95_a"], row["acc_ci95_b"])


def compare(a_path: Path, b_path: Path, *, results_dirs: list[Path] | None = None) -> pd.DataFrame:
    """Compare leaderboard CSV ``b_path`` against ``a_path`` (deltas are B − A); see the module docstring
    for the columns. ``results_dirs``: folders the ``result_file`` column is relative to, searched in
    order for per-episode data (default: ``results/`` next to each CSV, then ``leaderboards/results``).

    Raises ValueError naming both files when either is not a valid leaderboard (missing column, value of
    the wrong type), when they hold different tasks, or when a file has two finished rows with one key.
    """
    a_path, b_path = Path(a_path), Path(b_path)
    a, b = _read_pair(a_path, b_path)
    dirs_a = list(results_dirs) if results_dirs is not None else _default_results_dirs(a_path)
    dirs_b = list(results_dirs) if results_dirs is not None else _default_results_dirs(b_path)

    compared = headline()
    carried = compared + ["acc_ci95", "n_episodes", "episodes_hash", "result_file"]
    sides = []
    for df in (a, b):
        ok = df[df["status"].eq(Status.OK.value)]
        sides.append(ok[JOIN_KEY + carried].assign(rank=_ranks(ok)))
    out = sides[0].merge(sides[1], on=JOIN_KEY, how="outer", suffixes=("_a", "_b"), indicator=True)
    merged = {"both": "both", "left_only": "only_a", "right_only": "only_b"}
    out["status"] = out.pop("_merge").map(merged).astype("string")
    for col in compared:
        out[f"{col}_delta"] = out[f"{col}_b"] - out[f"{col}_a"]
    out["rank_delta"] = out["rank_b"] - out["rank_a"]

    both = out["status"].eq("both")
    hashes_known = out["episodes_hash_a"].notna() & out["episodes_hash_b"].notna()
    out["same_episodes"] = pd.array([pd.NA] * len(out), dtype="boolean")
    out.loc[both & hashes_known, "same_episodes"] = out["episodes_hash_a"] == out["episodes_hash_b"]
    n_mismatch = int(out["same_episodes"].eq(False).sum())
    if n_mismatch:
        log.warning("%d joined rows ran on different episodes (episodes_hash differs): tested from the CIs", n_mismatch)

    cache: dict[Path, Result | None] = {}
    same = out["same_episodes"].fillna(False).astype(bool)
    out["test"] = pd.array([pd.NA] * len(out), dtype="string")
    out["acc_delta_ci95"] = np.nan
    for i in out.index[both]:
        out.loc[i, "test"], out.loc[i, "acc_delta_ci95"] = _significance(out.loc[i], same[i], dirs_a, dirs_b, cache)
    defined = both & out["acc_delta_ci95"].notna()
    out["significant"] = pd.array([pd.NA] * len(out), dtype="boolean")
    out.loc[defined, "significant"] = out.loc[defined, "acc_mean_delta"].abs() > out.loc[defined, "acc_delta_ci95"]
    log.info("compared %d joined rows: %d paired, %d from the CIs, %d significant", int(both.sum()),
             int(out["test"].eq("paired").sum()), int(out["test"].eq("ci").sum()), int(out["significant"].sum()))

    failed = [df.loc[df["status"].eq(Status.FAILED.value), ["model", "source_classes", "seed", "error"]].assign(status=s)
              for df, s in ((a, "failed_a"), (b, "failed_b"))]
    out = pd.concat([out, *failed], ignore_index=True)
    out["status"] = out["status"].astype("string")
    order = pd.Categorical(out["status"], categories=STATUSES, ordered=True)
    out = (out.assign(_order=order).sort_values(["_order"] + JOIN_KEY, na_position="first", kind="mergesort")
           .drop(columns="_order").reset_index(drop=True))
    columns = (JOIN_KEY + ["status", "test", "significant", "acc_delta_ci95", "same_episodes",
                           "rank_a", "rank_b", "rank_delta", "acc_ci95_a", "acc_ci95_b", "n_episodes_a", "n_episodes_b"]
               + [f"{c}_{s}" for c in compared for s in ("a", "b", "delta")]
               + ["episodes_hash_a", "episodes_hash_b", "result_file_a", "result_file_b", "error"])
    return out[columns]


# ------------------------------------------------------------------------------------------- output
def _fmt(x: Any, spec: str) -> str:
    return "" if pd.isna(x) else format(x, spec)


def format_table(df: pd.DataFrame) -> str:
    """A readable text table of a :func:`compare` result: joined rows with their deltas, significance
    (``*``) and rank changes, then rows found in one file only and failed units, then a summary line."""
    both = df[df["status"].eq("both")]
    table = pd.DataFrame({
        "model": both["model"], "s": both["source_classes"], "seed": both["seed"], "head": both["head"],
        "shots": both["shots"],
        "acc A": both["acc_mean_a"].map(lambda x: _fmt(x, ".4f")),
        "acc B": both["acc_mean_b"].map(lambda x: _fmt(x, ".4f")),
        f"Δacc {arrow('acc_mean')}": [f"{_fmt(d, '+.4f')} ± {_fmt(h, '.4f')}{' *' if s else ''}"
                                      for d, h, s in zip(both["acc_mean_delta"], both["acc_delta_ci95"],
                                                         both["significant"].fillna(False))],
        "test": both["test"].fillna(""),
        "rank A→B": [f"{_fmt(ra, 'd')}→{_fmt(rb, 'd')}" for ra, rb in zip(both["rank_a"], both["rank_b"])],
        **{f"Δ{c} {arrow(c)}": both[f"{c}_delta"].map(lambda x: _fmt(x, "+.4g")) for c in headline()[1:]},
        "episodes": both["same_episodes"].eq(False).fillna(False).map({True: "differ", False: ""}),
    })
    parts = [table.to_string(index=False) if len(table) else "(no rows in both files)"]
    for status, label in (("only_a", "only in A"), ("only_b", "only in B")):
        rows = df[df["status"].eq(status)]
        if len(rows):
            parts.append(f"{label}:\n" + rows[JOIN_KEY].to_string(index=False))
    failed = df[df["status"].isin(["failed_a", "failed_b"])]
    if len(failed):
        columns = ["status", "model", "source_classes", "seed", "error"]
        parts.append("failed units:\n" + failed[columns].to_string(index=False))
    sign = np.sign(both["acc_mean_delta"]) * (1 if higher_is_better(ACCURACY) else -1)
    sig = both["significant"].fillna(False).astype(bool)
    n = {k: int(mask.sum()) for k, mask in {
        "better": sig & (sign > 0), "worse": sig & (sign < 0), "paired": both["test"].eq("paired"),
        "ci": both["test"].eq("ci"), "differ": both["same_episodes"].eq(False),
        "only_a": df["status"].eq("only_a"), "only_b": df["status"].eq("only_b")}.items()}
    parts.append(f"{len(both)} rows in both: {n['better']} significantly better in B, {n['worse']} significantly "
                 f"worse ({n['paired']} paired, {n['ci']} from CIs; {n['differ']} on different episodes); "
                 f"{n['only_a']} only in A, {n['only_b']} only in B, {len(failed)} failed units")
    return "\n\n".join(parts)


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write a :func:`compare` result atomically: numbers as numbers, empty cells for missing values."""
    path = Path(path)
    atomic_write_text(path, df.to_csv(index=False, float_format=leaderboard.FLOAT_FORMAT, lineterminator="\n"))
    return path
