"""Compare leaderboards of one task: two models (:func:`compare_models`), or two CSVs row by row (:func:`compare`).

**Model against model** (``ncbench compare X.csv --models A B``, or ``A.csv B.csv --model-a A --model-b B``):
per (source_classes, head, shots) row, the per-episode accuracy differences B − A on identical episodes
(equal ``episodes_hash``), averaged per episode over the seeds both models have, a paired t-test over the
episodes, Holm's correction across the rows and a better / worse / tied verdict per row; see
:func:`compare_models` and ``docs/compare.md``.

**Two versions of a leaderboard** (``ncbench compare A.csv B.csv``): deltas (B − A), rank changes and
significance of Δacc for the same models. Rows are joined on their key without the task (``model, source_classes, seed, head, shots``; finished
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

**Reproduction** (``--reproduce``, what ``make bench`` ends with: A = the committed, claimed leaderboard, B =
this machine's run): ``within_ci`` is ``|Δacc| <= acc_ci95_a`` (B's accuracy lies inside the claimed row's
95 % CI over episodes); ``bit_identical`` is True when the per-episode accuracies of both result files are
equal (same machine kind and thread count; across CPU models only ``within_ci`` can be expected).

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
def _read_checked(path: Path, context: str) -> pd.DataFrame:
    """One leaderboard, typed and checked: readable, the rows of one task, no duplicate keys; errors start
    with ``context`` and name ``path``."""
    try:
        df = leaderboard.read(path)
    except ValueError as e:
        raise ValueError(f"{context}: {e}") from None
    tasks = sorted(df["task"].dropna().unique())
    if len(tasks) != 1:
        raise ValueError(f"{context}: {path} holds tasks {tasks} (expected the rows of exactly one task)")
    ok = df[df["status"].eq(Status.OK.value)]
    dup = ok.duplicated(JOIN_KEY, keep=False)
    if dup.any():
        first = ok.loc[dup, JOIN_KEY].iloc[0].to_dict()
        raise ValueError(f"{context}: {path} has several finished rows with the key "
                         f"{first} (expected one per key: rebuild it with `ncbench leaderboard`)")
    return df


def _read_pair(a_path: Path, b_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both leaderboards, typed and checked: readable, one task, the same task, no duplicate keys."""
    frames = [_read_checked(path, f"cannot compare {a_path} with {b_path}") for path in (a_path, b_path)]
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
    # reproduction: does B's accuracy lie within A's (the claimed row's) 95 % CI; are the per-episode scores equal?
    out["within_ci"] = pd.array([pd.NA] * len(out), dtype="boolean")
    claimed = both & out["acc_ci95_a"].notna()
    out.loc[claimed, "within_ci"] = (out.loc[claimed, "acc_mean_delta"].abs()
                                     <= out.loc[claimed, "acc_ci95_a"] * (1 + ACC_REL_TOL))
    out["bit_identical"] = pd.array([pd.NA] * len(out), dtype="boolean")
    for i in out.index[both & same]:
        ea, eb = (_per_episode(out.loc[i], sfx, dirs, cache) for sfx, dirs in (("_a", dirs_a), ("_b", dirs_b)))
        if ea is not None and eb is not None:
            out.loc[i, "bit_identical"] = bool(ea.shape == eb.shape and np.array_equal(ea, eb))
    log.info("compared %d joined rows: %d paired, %d from the CIs, %d significant", int(both.sum()),
             int(out["test"].eq("paired").sum()), int(out["test"].eq("ci").sum()), int(out["significant"].sum()))

    failed = [df.loc[df["status"].eq(Status.FAILED.value), ["model", "source_classes", "seed", "error"]].assign(status=s)
              for df, s in ((a, "failed_a"), (b, "failed_b"))]
    out = pd.concat([out, *failed], ignore_index=True)
    out["status"] = out["status"].astype("string")
    order = pd.Categorical(out["status"], categories=STATUSES, ordered=True)
    out = (out.assign(_order=order).sort_values(["_order"] + JOIN_KEY, na_position="first", kind="mergesort")
           .drop(columns="_order").reset_index(drop=True))
    columns = (JOIN_KEY + ["status", "test", "significant", "acc_delta_ci95", "same_episodes", "within_ci", "bit_identical",
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


def reproduction_line(df: pd.DataFrame) -> str:
    """One line summing up a :func:`compare` of a claimed leaderboard (A) and a re-run (B)."""
    both = df[df["status"].eq("both")]
    within, ident = int(both["within_ci"].eq(True).sum()), int(both["bit_identical"].eq(True).sum())
    failed = int(df["status"].eq("failed_b").sum())
    return (f"reproduced {within}/{len(both)} rows within the claimed 95 % CI ({ident} bit-identical"
            f"{': other CPU or thread count' if ident < len(both) else ''})"
            + (f"; {failed} units failed here" if failed else ""))


def reproduced(df: pd.DataFrame) -> bool:
    """Whether a re-run (B) reproduced every claimed row it re-ran within the claimed CI, with no failed unit."""
    both = df[df["status"].eq("both")]
    return bool(len(both)) and bool(both["within_ci"].eq(True).all()) and not df["status"].eq("failed_b").any()


def format_reproduction(df: pd.DataFrame) -> str:
    """The claimed-vs-reproduced table: per joined row the claimed and reproduced accuracy, the paired delta
    on identical episodes with its 95 % interval, and whether it lies within the claimed CI; then a legend and
    :func:`reproduction_line`."""
    both = df[df["status"].eq("both")]
    table = pd.DataFrame({
        "model": both["model"], "s": both["source_classes"], "seed": both["seed"], "head": both["head"],
        "shots": both["shots"],
        "claimed": [f"{_fmt(a, '.4f')} ± {_fmt(c, '.4f')}" for a, c in zip(both["acc_mean_a"], both["acc_ci95_a"])],
        "reproduced": both["acc_mean_b"].map(lambda x: _fmt(x, ".4f")),
        "Δ (paired)": [f"{_fmt(d, '+.4f')} ± {_fmt(h, '.4f')}" for d, h in zip(both["acc_mean_delta"], both["acc_delta_ci95"])],
        "test": both["test"].fillna(""),
        "within CI": both["within_ci"].map({True: "yes", False: "NO"}).fillna("?"),
        "identical": both["bit_identical"].map({True: "yes", False: "no"}).fillna("?"),
    })
    legend = ("legend: claimed = the committed row's accuracy ± its 95 % CI over episodes; reproduced = this run's "
              "accuracy; Δ = reproduced − claimed ± the 95 % interval of the per-episode differences (test paired: "
              "same episodes, per-episode scores found; ci: from the two CIs); within CI = |Δ| ≤ the claimed CI; "
              "identical = every per-episode score equal (expected only on the same machine kind and thread count); "
              "? = not known (no per-episode data).")
    body = table.to_string(index=False) if len(table) else "(no rows in both files)"
    return "\n\n".join([body, legend, reproduction_line(df)])


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write a :func:`compare` result atomically: numbers as numbers, empty cells for missing values."""
    path = Path(path)
    atomic_write_text(path, df.to_csv(index=False, float_format=leaderboard.FLOAT_FORMAT, lineterminator="\n"))
    return path


# ------------------------------------------------------------------------------------------- model vs model
ALPHA = 0.05  # family-wise error rate of the verdicts
TEST = "paired t-test"
CONSTANT_STD = 1e-12  # per-episode differences with a smaller std are constant (float rounding only)
CORRECTION = "Holm"
MODEL_ROW = ["source_classes", "head", "shots"]
MODEL_STATUSES = ("tested", "untested", "only_a", "only_b", "failed_a", "failed_b")
VERDICT_SYMBOL = {"better": "▲", "worse": "▼", "tied": "="}
MODEL_COLUMNS = ["task", "model_a", "model_b", "source_classes", "head", "shots", "status", "n_seeds", "seeds",
                 "n_episodes", "acc_a", "acc_b", "delta", "ci95_low", "ci95_high", "t", "p_value", "p_holm",
                 "verdict", "test", "note"]


def holm(p_values: Any) -> np.ndarray:
    """Holm's step-down adjustment of ``p_values`` [n] (family-wise error control): the i-th smallest p is
    multiplied by n − i + 1 (i from 1), then made non-decreasing in that order and capped at 1. Returns [n]
    adjusted p-values in the input order; a verdict is significant when its adjusted p is below α."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values: expected a 1-D array, got shape {p.shape}")
    order = np.argsort(p, kind="mergesort")
    scaled = p[order] * (p.size - np.arange(p.size))
    out = np.empty_like(p)
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def paired_t_test(d: Any) -> tuple[float, float, float, float, float]:
    """Two-sided one-sample t-test of per-episode differences ``d`` [n] against 0 (= the paired t-test of
    the two accuracy vectors), with the t-based 95 % confidence interval of their mean. Returns
    (mean, ci95_low, ci95_high, t, p). Constant differences (std below :data:`CONSTANT_STD`, the float
    rounding of equal differences, e.g. a model planted 0.05 above another on every episode): the interval is the point; all 0: t = 0
    and p = 1; else t is infinite, returned as NaN (an empty cell, never ``inf``), and p = 0; fewer than 2 episodes: interval, t and p are NaN."""
    from scipy import stats  # lazy: scipy loads in ~0.3 s, needed by model comparisons only

    d = np.asarray(d, dtype=np.float64)
    mean = float(d.mean())
    if d.size < 2:
        return mean, math.nan, math.nan, math.nan, math.nan
    if float(d.std(ddof=1)) < CONSTANT_STD:
        return mean, mean, mean, (0.0 if mean == 0 else math.nan), (1.0 if mean == 0 else 0.0)
    res = stats.ttest_1samp(d, 0.0)
    ci = res.confidence_interval(1 - ALPHA)
    return mean, float(ci.low), float(ci.high), float(res.statistic), float(res.pvalue)


def _model_rows(df: pd.DataFrame, model: str, path: Path, context: str) -> pd.DataFrame:
    rows = df[df["model"].eq(model)]
    if rows.empty:
        models = sorted(df["model"].dropna().unique())
        raise ValueError(f"{context}: model {model!r} has no rows in {path} (its models: {', '.join(models)})")
    return rows


def compare_models(a_path: Path, model_a: str, model_b: str, b_path: Path | None = None, *,
                   results_dirs: list[Path] | None = None) -> pd.DataFrame:
    """Compare ``model_b`` with ``model_a`` of one task, paired on identical episodes.

    ``model_a`` is read from leaderboard ``a_path``, ``model_b`` from ``b_path`` (default: ``a_path`` too).
    For each (source_classes, head, shots) row both models have: the seeds both have with equal
    ``episodes_hash`` and per-episode data (from the result files, ``result_file`` under ``results_dirs``,
    default ``results/`` next to each CSV); per episode e, d_e = mean over those seeds of (acc_B − acc_A);
    ``delta`` = mean of d over the episodes, ``ci95_low``/``ci95_high`` its t-based 95 % interval, ``t`` and
    ``p_value`` of a two-sided :func:`paired_t_test` of d; ``p_holm``: :func:`holm` over every tested row;
    ``verdict``: ``better`` / ``worse`` (B than A) when ``p_holm`` < :data:`ALPHA`, else ``tied``.
    ``acc_a`` / ``acc_b``: mean accuracies over the same seeds and episodes (``delta`` = acc_b − acc_a).

    ``status``: ``tested``; ``untested`` (no seed with pairable per-episode data, ``note`` says why);
    ``only_a`` / ``only_b`` (the other model has no finished row there); ``failed_a`` / ``failed_b``: one row
    per failed unit (head and shots empty, ``seeds`` its seed, ``note`` its error).
    Raises ValueError naming the file on an invalid leaderboard, a model without rows, two tasks, or A = B.
    """
    a_path = Path(a_path)
    b_path = Path(b_path) if b_path is not None else a_path
    two = b_path != a_path
    context = f"cannot compare {model_a!r} of {a_path} with {model_b!r} of {b_path}"
    if not two and model_a == model_b:
        raise ValueError(f"{context}: the same model twice (give two different models, or two files)")
    a = _read_checked(a_path, context)
    b = _read_checked(b_path, context) if two else a
    task_a, task_b = a["task"].dropna().iloc[0], b["task"].dropna().iloc[0]
    if task_a != task_b:
        raise ValueError(f"{context}: different tasks ({task_a!r} in {a_path}, {task_b!r} in {b_path})")
    ra, rb = _model_rows(a, model_a, a_path, context), _model_rows(b, model_b, b_path, context)
    dirs_a = list(results_dirs) if results_dirs is not None else _default_results_dirs(a_path)
    dirs_b = list(results_dirs) if results_dirs is not None else _default_results_dirs(b_path)
    cache: dict[Path, Result | None] = {}
    ok_a, ok_b = (r[r["status"].eq(Status.OK.value)] for r in (ra, rb))
    keys = sorted(set(map(tuple, ok_a[MODEL_ROW].to_numpy().tolist())) | set(map(tuple, ok_b[MODEL_ROW].to_numpy().tolist())))
    out = []
    for key in keys:
        sel_a, sel_b = ({int(r["seed"]): r for _, r in ok[(ok[MODEL_ROW] == pd.Series(key, index=MODEL_ROW)).all(axis=1)].iterrows()}
                        for ok in (ok_a, ok_b))
        row: dict[str, Any] = dict(zip(MODEL_ROW, key))
        if not sel_a or not sel_b:
            row["status"] = "only_b" if not sel_a else "only_a"
            row["seeds"] = " ".join(map(str, sorted(sel_b if not sel_a else sel_a)))
            out.append(row)
            continue
        pairs, skipped = {}, []
        for seed in sorted(set(sel_a) & set(sel_b)):
            ea, eb = sel_a[seed], sel_b[seed]
            if ea["episodes_hash"] != eb["episodes_hash"]:
                skipped.append(f"seed {seed}: different episodes")
                continue
            acc_a, acc_b = _per_episode(ea, "", dirs_a, cache), _per_episode(eb, "", dirs_b, cache)
            if acc_a is None or acc_b is None or acc_a.shape != acc_b.shape:
                skipped.append(f"seed {seed}: no per-episode data")
                continue
            pairs[int(seed)] = (acc_a, acc_b)
        if not set(sel_a) & set(sel_b):
            skipped.append("no seed in common")
        row["note"] = "; ".join(skipped) or None
        if not pairs:
            row.update(status="untested")
            out.append(row)
            continue
        acc_a = np.mean([p[0] for p in pairs.values()], axis=0)  # [n] per-episode mean over seeds
        acc_b = np.mean([p[1] for p in pairs.values()], axis=0)
        mean, low, high, t, p = paired_t_test(np.mean([p[1] - p[0] for p in pairs.values()], axis=0))
        row.update(status="tested", n_seeds=len(pairs), seeds=" ".join(map(str, pairs)), n_episodes=int(acc_a.size),
                   acc_a=float(acc_a.mean()), acc_b=float(acc_b.mean()), delta=mean, ci95_low=low, ci95_high=high,
                   t=t, p_value=p, test=TEST)
        out.append(row)
    for rows, status in ((ra, "failed_a"), (rb, "failed_b")):
        for _, f in rows[rows["status"].eq(Status.FAILED.value)].iterrows():
            out.append({"source_classes": f["source_classes"], "status": status, "seeds": str(int(f["seed"])),
                        "note": f["error"]})
    df = pd.DataFrame(out, columns=MODEL_COLUMNS).assign(task=task_a, model_a=model_a, model_b=model_b)
    for c in ("task", "model_a", "model_b", "head", "status", "seeds", "verdict", "test", "note"):
        df[c] = df[c].astype("string")
    tested = df["status"].eq("tested") & df["p_value"].notna()
    df.loc[tested, "p_holm"] = holm(df.loc[tested, "p_value"].to_numpy(dtype=np.float64))
    sign = np.sign(df["delta"]) * (1 if higher_is_better(ACCURACY) else -1)
    significant = tested & (df["p_holm"] < ALPHA)
    df.loc[tested, "verdict"] = "tied"
    df.loc[significant & (sign > 0), "verdict"] = "better"
    df.loc[significant & (sign < 0), "verdict"] = "worse"
    for c in ("source_classes", "shots", "n_seeds", "n_episodes"):
        df[c] = pd.array(df[c], dtype="Int64")
    for c in ("acc_a", "acc_b", "delta", "ci95_low", "ci95_high", "t", "p_value", "p_holm"):
        df[c] = pd.to_numeric(df[c]).astype("float64")
    order = pd.Categorical(df["status"], categories=MODEL_STATUSES, ordered=True)
    df = (df.assign(_order=order).sort_values(["_order"] + MODEL_ROW, na_position="first", kind="mergesort")
          .drop(columns="_order").reset_index(drop=True))
    log.info("%s vs %s: %d rows tested (%s), %d better, %d worse", model_b, model_a, int(tested.sum()), TEST,
             int(df["verdict"].eq("better").sum()), int(df["verdict"].eq("worse").sum()))
    return df


def verdict_line(df: pd.DataFrame) -> str:
    """The one-line verdict of a :func:`compare_models` result, e.g. ``mynet better in 9, worse in 2, tied
    in 13 of 24 rows (Holm-adjusted paired t-test, α = 0.05)``."""
    tested = df[df["status"].eq("tested")]
    model_b = df["model_b"].iloc[0] if len(df) else "B"
    n = {v: int(tested["verdict"].eq(v).sum()) for v in ("better", "worse", "tied")}
    return (f"{model_b} better in {n['better']}, worse in {n['worse']}, tied in {n['tied']} of {len(tested)} rows "
            f"({CORRECTION}-adjusted {TEST}, α = {ALPHA:g})")


def _p(x: Any) -> str:
    return "" if pd.isna(x) else ("<1e-300" if x == 0 else format(x, ".2g"))


def format_models_table(df: pd.DataFrame) -> str:
    """A readable text table of a :func:`compare_models` result: tested rows, the one-line verdict, the
    legend, then rows not tested, rows one model lacks and failed units."""
    if df.empty:
        return "(no rows)"
    model_a, model_b, task = df["model_a"].iloc[0], df["model_b"].iloc[0], df["task"].iloc[0]
    tested = df[df["status"].eq("tested")]
    table = pd.DataFrame({
        "s": tested["source_classes"], "head": tested["head"], "shots": tested["shots"],
        "seeds": tested["n_seeds"], "episodes": tested["n_episodes"],
        "acc A": tested["acc_a"].map(lambda x: _fmt(x, ".4f")), "acc B": tested["acc_b"].map(lambda x: _fmt(x, ".4f")),
        "Δ B−A": tested["delta"].map(lambda x: _fmt(x, "+.4f")),
        "95 % CI": [f"[{_fmt(lo, '+.4f')}, {_fmt(hi, '+.4f')}]" for lo, hi in zip(tested["ci95_low"], tested["ci95_high"])],
        "p": tested["p_value"].map(_p), "p Holm": tested["p_holm"].map(_p),
        "verdict": tested["verdict"].map(lambda v: f"{VERDICT_SYMBOL[v]} {v}"),
    })
    parts = [f"task {task}: A = {model_a}, B = {model_b}; paired on identical episodes",
             table.to_string(index=False) if len(table) else "(no row could be tested)",
             verdict_line(df),
             "legend:\n"
             "  s, head, shots  the leaderboard row: source classes, few-shot head, support images per class\n"
             "  seeds           pretraining seeds both models have with the same episodes (episodes_hash) and per-episode data\n"
             "  episodes        number of episodes n paired\n"
             "  acc A, acc B    mean accuracy over those seeds and episodes\n"
             f"  Δ B−A           mean over episodes of d_e = mean over seeds of (acc_B − acc_A) on episode e; > 0: {model_b} more accurate\n"
             "  95 % CI         t-based 95 % confidence interval of Δ: Δ ± t(0.975, n−1)·std(d)/√n\n"
             f"  p               two-sided {TEST} of d over the n episodes (H0: Δ = 0)\n"
             f"  p Holm          p adjusted by the {CORRECTION} step-down correction over the {len(tested)} rows tested\n"
             f"  verdict         ▲ better / ▼ worse: {model_b} more / less accurate than {model_a} at p Holm < {ALPHA:g}; "
             "= tied: no significant difference"]
    untested = df[df["status"].eq("untested")]
    if len(untested):
        parts.append("not tested (no pairable per-episode data):\n"
                     + untested[MODEL_ROW + ["note"]].to_string(index=False))
    for status, label in (("only_a", f"only {model_a} (A) has"), ("only_b", f"only {model_b} (B) has")):
        rows = df[df["status"].eq(status)]
        if len(rows):
            parts.append(f"{label}:\n" + rows[MODEL_ROW + ["seeds"]].to_string(index=False))
    failed = df[df["status"].isin(["failed_a", "failed_b"])]
    if len(failed):
        parts.append("failed units:\n" + failed[["status", "source_classes", "seeds", "note"]]
                     .rename(columns={"seeds": "seed", "note": "error"}).to_string(index=False))
    return "\n\n".join(parts)
