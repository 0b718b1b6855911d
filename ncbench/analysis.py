"""Does collapse predict transfer? Rank correlations between source-side collapse and target transfer.

Across the *units* of a task — one unit is one pretrained backbone, a (model, seed, source_classes s) —
each source-side collapse measure (:data:`MEASURES`: train and test CDNV, the NC1 variants comparable
across s, NCC test accuracy, ε-effective depth; at fixed s also raw NC1 and strong and weak test
collapse) is rank-correlated with each target outcome (:func:`outcomes`: few-shot accuracy per
(head, shots), target CDNV, target NCC accuracy). Three scopes (:data:`SCOPES`):

- ``all`` (group ``all``): every finished unit of the task (models × seeds × s);
- ``model`` (group = the model name): the units of one model, across s and seeds;
- ``source_classes`` (group = s): the units at one s, across models and seeds. Only here are raw ``nc1``
  and strong / weak test collapse correlated too: NC1-type quantities (eq. 4) grow with the number of
  classes by themselves (``leaderboards/README.md``), so they are compared at equal s only.

Each (scope, group, measure, outcome) gives n (units with both values), Spearman's ρ and Kendall's τ-b
(``scipy.stats``) and percentile 95 % bootstrap intervals: :data:`N_BOOT` resamples of the group's units
with replacement, from a generator seeded by :data:`SEED` and the row's key (so a row's interval does not
change when other rows are added). Fewer than :data:`MIN_UNITS` units, or a constant measure or outcome,
give empty (NaN) statistics, never an error; resamples in which a side is constant are left out of the
interval. Signs are those of the raw values: CDNV, NC1 variants, test collapse and effective depth are
*lower* under more collapse, NCC accuracy *higher* (column ``more_collapse``), so "more collapse goes with
better few-shot accuracy" is a negative ρ for CDNV and a positive one for NCC test accuracy.

The table (:func:`analyze`) is written as ``<task>-analysis.csv`` next to the leaderboard
(:func:`write_analysis`, called by ``ncbench leaderboard`` and ``ncbench analyze``): rows sorted by
scope, group, measure and outcome, floats with a fixed format, so the same result files give the same
bytes. ``docs/analysis.md`` describes it for users.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ncbench.files import atomic_write_text
from ncbench.metrics.info import metric_of
from ncbench.results import Status

N_BOOT = 2000
SEED = 0
MIN_UNITS = 3
FLOAT_FORMAT = "%.8g"
UNIT = ["model", "seed", "source_classes"]
SCOPES = ("all", "model", "source_classes")
STATS = ["n", "spearman", "spearman_lo", "spearman_hi", "kendall", "kendall_lo", "kendall_hi"]
COLUMNS = ["scope", "group", "measure", "outcome", "more_collapse"] + STATS
SUFFIX = "-analysis.csv"


@dataclass(frozen=True)
class Measure:
    """A source-side collapse measure: ``column`` of the leaderboard; ``fixed_s_only``: comparable only at
    equal s (correlated in the ``source_classes`` scope alone); ``more_collapse``: ``lower`` or ``higher``,
    which values mean more collapse (None: from the metric registry's ``higher_is_better``)."""

    column: str
    fixed_s_only: bool = False
    more_collapse: str | None = None

    def direction(self) -> str:
        if self.more_collapse is not None:
            return self.more_collapse
        info = metric_of(self.column)
        if info is None or info.higher_is_better is None:
            raise ValueError(f"measure {self.column!r}: give more_collapse (the registry has no direction)")
        return "higher" if info.higher_is_better else "lower"


MEASURES = (
    Measure("cdnv_train"), Measure("cdnv_test"), Measure("nc1_quotient"), Measure("nc1_subset5"),
    Measure("nc1", fixed_s_only=True), Measure("ncc_test_acc"),
    # NC1-type (eq. 4 with test features): grow with the number of classes by themselves, like nc1
    Measure("strong_test_collapse", fixed_s_only=True), Measure("weak_test_collapse", fixed_s_only=True),
    # a shallower layer already separating the classes by their means = collapse reached earlier
    Measure("effective_depth", more_collapse="lower"),
)
UNIT_OUTCOMES = ("target_cdnv", "target_ncc_acc")


def accuracy_outcome(head: str, shots: int) -> str:
    """The outcome name of few-shot accuracy with ``head`` at ``shots`` shots: ``acc:<head>:<shots>shot``."""
    return f"acc:{head}:{int(shots)}shot"


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"].eq(Status.OK.value) & df["head"].notna()]


def outcomes(df: pd.DataFrame) -> list[str]:
    """The outcomes present in leaderboard ``df``: accuracy per (head, shots) of its finished rows (sorted by
    head, then shots), then the per-unit target columns that have a value."""
    ok = _ok(df)
    pairs = sorted({(str(h), int(k)) for h, k in zip(ok["head"], ok["shots"])})
    return [accuracy_outcome(h, k) for h, k in pairs] + [c for c in UNIT_OUTCOMES if ok[c].notna().any()]


def unit_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per finished unit of leaderboard ``df`` (columns :data:`UNIT`, sorted), with the
    :data:`MEASURES` columns and one column per :func:`outcomes` entry (accuracy: that row's ``acc_mean``)."""
    ok = _ok(df)
    measures = [m.column for m in MEASURES]
    units = ok.drop_duplicates(UNIT)[UNIT + measures + list(UNIT_OUTCOMES)].set_index(UNIT)
    for (h, k), g in ok.groupby(["head", "shots"], sort=True):
        units[accuracy_outcome(h, k)] = g.set_index(UNIT)["acc_mean"]
    units = units.astype("float64").sort_index().reset_index()
    units["seed"] = units["seed"].astype("int64")
    units["source_classes"] = units["source_classes"].astype("int64")
    return units


# ------------------------------------------------------------------------------------------- statistics
def _point(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's ρ and Kendall's τ-b of the paired values x, y: [n] (NaN when either side is constant)."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return np.nan, np.nan
    return (float(stats.spearmanr(x, y).statistic),
            float(stats.kendalltau(x, y, method="asymptotic").statistic))  # τ-b; its p-value is not used


def resampled(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman's ρ and Kendall's τ-b of bootstrap resamples given by their multiplicities.

    x, y: [n] paired values; counts: [B, n] how often each pair occurs in each resample (rows sum to the
    resample size). Returns (spearman: [B], kendall: [B]), NaN where a resample is constant on a side.
    Equal to ``scipy.stats.spearmanr`` / ``kendalltau`` of ``x[idx], y[idx]`` for each resample, without
    materialising it: a resampled unit's average rank is ``counts @ below.T + 1/2`` and the tie-aware pair
    sums of τ-b are quadratic forms ``counts @ P @ counts.T`` of the units' pair-sign matrices.
    """
    c = counts.astype(np.float64)
    middle = (c.sum(axis=1, keepdims=True) + 1) / 2  # the mean of the average ranks 1..size
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        # average ranks: (number below) + (number equal + 1) / 2, counted with multiplicity
        dx = c @ ((sx > 0) + 0.5 * (sx == 0)).T + 0.5 - middle
        dy = c @ ((sy > 0) + 0.5 * (sy == 0)).T + 0.5 - middle
        spearman = np.einsum("bi,bi,bi->b", c, dx, dy) / np.sqrt(
            np.einsum("bi,bi,bi->b", c, dx, dx) * np.einsum("bi,bi,bi->b", c, dy, dy))
        concordance = np.einsum("bi,bi->b", c @ (sx * sy), c)
        kendall = concordance / np.sqrt(np.einsum("bi,bi->b", c @ np.abs(sx), c)
                                        * np.einsum("bi,bi->b", c @ np.abs(sy), c))
    return np.clip(spearman, -1.0, 1.0), np.clip(kendall, -1.0, 1.0)


def _interval(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not values.size:
        return np.nan, np.nan
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def correlate(x, y, key: str = "", n_boot: int = N_BOOT, seed: int = SEED) -> dict[str, float | int]:
    """Rank correlation of paired values with bootstrap 95 % intervals.

    x, y: [n] numbers (pairs with a NaN on either side are dropped). key: mixed into the seed (each table row
    gets its own stream). Returns :data:`STATS` as a dict: n (pairs used), spearman, kendall (scipy) and
    their 2.5 / 97.5 percentiles over ``n_boot`` resamples of the pairs with replacement; the statistics
    are NaN when n < :data:`MIN_UNITS` or a side is constant.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    out: dict[str, float | int] = {"n": n, **{k: np.nan for k in STATS[1:]}}
    if n < MIN_UNITS:
        return out
    out["spearman"], out["kendall"] = _point(x, y)
    if np.isnan(out["spearman"]):
        return out
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n).reshape(n_boot, n)
    rho, tau = resampled(x, y, counts)
    out["spearman_lo"], out["spearman_hi"] = _interval(rho)
    out["kendall_lo"], out["kendall_hi"] = _interval(tau)
    return out


# ------------------------------------------------------------------------------------------- the table
def _groups(units: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    out = [("all", "all", units)]
    out += [("model", str(m), g) for m, g in units.groupby("model", sort=True)]
    out += [("source_classes", str(s), g) for s, g in units.groupby("source_classes", sort=True)]
    return out


def analyze(df: pd.DataFrame, n_boot: int = N_BOOT, seed: int = SEED) -> pd.DataFrame:
    """The correlation table of leaderboard ``df`` (one task): one row per (scope, group, measure, outcome)
    with :data:`COLUMNS`. Measures and outcomes without a single value in the task are left out; a group
    with too few units is a row with n and empty statistics. Rows are in scope order (:data:`SCOPES`), then
    group (model names sorted, s ascending), measure (:data:`MEASURES` order), outcome (:func:`outcomes`
    order)."""
    units = unit_table(df)
    names = outcomes(df)
    measures = [m for m in MEASURES if units[m.column].notna().any()]
    rows = []
    for scope, group, g in _groups(units):
        for m in measures:
            if m.fixed_s_only and scope != "source_classes":
                continue
            for o in names:
                key = "\0".join((scope, group, m.column, o))
                rows.append({"scope": scope, "group": group, "measure": m.column, "outcome": o,
                             "more_collapse": m.direction(),
                             **correlate(g[m.column].to_numpy(), g[o].to_numpy(), key, n_boot, seed)})
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["n"] = out["n"].astype("int64")
    for c in STATS[1:]:
        out[c] = out[c].astype("float64")
    return out


def analysis_path(out_dir: Path, task: str) -> Path:
    """Where the analysis of ``task`` lives: ``out_dir/<task>-analysis.csv``."""
    return Path(out_dir) / f"{task}{SUFFIX}"


def is_analysis_file(path: Path) -> bool:
    """Whether ``path`` is named like an analysis CSV (``*-analysis.csv``), not a leaderboard."""
    return Path(path).name.endswith(SUFFIX)


def to_csv_text(table: pd.DataFrame) -> str:
    return table.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n")


def write_analysis(task: str, rows_df: pd.DataFrame, out_dir: Path) -> Path:
    """Write :func:`analyze` of the leaderboard ``rows_df`` of ``task`` to ``out_dir/<task>-analysis.csv``
    (atomically); return the path."""
    path = analysis_path(out_dir, task)
    atomic_write_text(path, to_csv_text(analyze(rows_df)))
    return path


def read_analysis(path: Path) -> pd.DataFrame:
    """Read an analysis CSV; ValueError naming the file on a missing column or a non-numeric statistic."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"scope": str, "group": str, "measure": str, "outcome": str,
                                         "more_collapse": str}, keep_default_na=False, na_values=[""])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path}: cannot read analysis CSV ({e})") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing analysis columns {missing} (expected {COLUMNS})")
    for c in STATS:
        if not pd.api.types.is_numeric_dtype(table[c]):
            raise ValueError(f"{path}: column {c!r}: expected numbers")
    return table[COLUMNS]


def _ci(value: float, lo: float, hi: float) -> str:
    if pd.isna(value):
        return "-"
    return f"{value:+.2f} [{lo:+.2f}, {hi:+.2f}]" if pd.notna(lo) else f"{value:+.2f}"


def format_table(table: pd.DataFrame, scope: str = "all") -> str:
    """Plain-text view of the rows of ``scope`` of an analysis table: one line per (group, measure, outcome)
    with n, Spearman's ρ and Kendall's τ with their 95 % intervals (``-`` where undefined)."""
    rows = table[table["scope"].eq(scope)]
    if not len(rows):
        return f"no correlations in scope {scope!r} (no finished units with collapse measures and outcomes)"
    view = pd.DataFrame({
        "group": rows["group"], "measure": rows["measure"], "more collapse": rows["more_collapse"],
        "outcome": rows["outcome"], "n": rows["n"],
        "spearman [95% CI]": [_ci(*v) for v in rows[["spearman", "spearman_lo", "spearman_hi"]].to_numpy()],
        "kendall [95% CI]": [_ci(*v) for v in rows[["kendall", "kendall_lo", "kendall_hi"]].to_numpy()],
    })
    return view.to_string(index=False)
