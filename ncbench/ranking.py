"""The ranked view of a leaderboard: ``leaderboards/<task>.md``, one line per model, written by ``ncbench leaderboard``.

**Headline score** (:data:`HEADLINE_HEAD`, :data:`HEADLINE_SHOTS`): the ``ridge`` head's 5-shot accuracy
(``acc_mean``), averaged over the task's source-class sweep (every s of ``Task.source_classes``) within each
pretraining seed; a model's score is the mean of those per-seed values over the task's seeds, shown with their
standard deviation over seeds (``ddof=1``; undefined for one seed). Models are ranked by the mean score, higher
first; equal scores share the lower rank.

Only a model with a **complete grid** is ranked: a finished unit, with its headline row, for every
(s, seed) of ``Task.source_classes × Task.seeds`` at the task file's current ``version``. A model with a
missing or failed unit, or units of another task version only, is listed apart, unranked, with what is
missing (a *partial* model). The grid comes from the task file (:func:`ncbench.tasks.find_task`); for a task
without a task file, from the source-class counts and seeds present in the leaderboard's rows.

Beside the score, the collapse columns that compare across source-class counts (:data:`COMPARABLE`, see
``leaderboards/README.md``), each the mean over the model's grid units (per seed over s, then over seeds:
the same for a complete grid); a column no unit of the task fills is left out.

The view is a function of the leaderboard CSV alone: fixed float formats, models in a fixed order, no dates,
so rebuilding from the same result files gives the same bytes. :func:`readme_block` is the same table for
the top-level README (between ``<!-- ranked-view TASK -->`` marker comments, refreshed by
``ncbench leaderboard --readme README.md``).

**Checks** (:mod:`ncbench.verify`). When the task has a ``<task>-verified.csv``, the view is also a function of
it: a ``verified`` column counts each ranked model's grid units whose every row ``ncbench verify`` reproduced
(rows whose result file changed since count as stale), and a *Checks* section lists the units that did not
verify (mismatch, memorised, stale). Rows that are implausible (:func:`ncbench.verify.implausible`: accuracy
≈ 1 with NC1 ≈ 0) are listed there too. Without either, the view is what it was before verification existed.
The README block leaves the verification out (its table is the leaderboard's alone) but keeps the flags.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ncbench.files import atomic_write_text
from ncbench.metrics import metric_of
from ncbench.results import Status
from ncbench.tasks import TaskError, find_task, task_files
from ncbench.verify import PLAUSIBILITY_FLAG, STALE, implausible, unit_verdicts

log = logging.getLogger(__name__)

HEADLINE_HEAD = "ridge"
HEADLINE_SHOTS = 5
# the collapse / accuracy columns comparable across source-class counts (leaderboards/README.md), in table order
COMPARABLE = ("source_test_acc", "ncc_test_acc", "target_ncc_acc", "cdnv_train", "cdnv_test", "target_cdnv",
              "nc1_quotient", "nc1_subset5", "nc4", "effective_depth")
SCORE_FORMAT = ".4f"  # headline score and its std
COLUMN_FORMAT = ".4g"  # collapse columns
EMPTY = "–"


@dataclass(frozen=True)
class Grid:
    """The units a model must have to be ranked: every (s, seed) of ``source_classes × seeds``, of task
    version ``version`` (None: any). ``origin`` says where the grid came from (the task file or the rows)."""

    source_classes: tuple[int, ...]
    seeds: tuple[int, ...]
    version: int | None
    origin: str

    @property
    def units(self) -> list[tuple[int, int]]:
        return [(s, seed) for s in self.source_classes for seed in self.seeds]


@dataclass(frozen=True)
class Entry:
    """One model of the view. ``score``: mean over seeds of the per-seed headline (None when unranked);
    ``score_std``: their std over seeds (None for one seed); ``columns``: collapse column -> mean over the
    grid units (None when some unit lacks it); ``missing`` / ``failed`` / ``stale``: the grid's (s, seed)
    units without a finished headline row, with a failed unit, or with a unit of another task version."""

    model: str
    rank: int | None
    score: float | None
    score_std: float | None
    seeds: tuple[int, ...]
    columns: dict[str, float | None]
    done: int
    missing: tuple[tuple[int, int], ...] = ()
    failed: tuple[tuple[int, int], ...] = ()
    stale: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class RankedView:
    """The ranked view of one task: ranked models (best first), unranked (partial) models by name, and the
    collapse columns shown."""

    task: str
    grid: Grid
    ranked: list[Entry]
    unranked: list[Entry]
    columns: list[str]
    verification: dict[str, dict[str, int]] | None = None  # model -> verdict -> grid units (None: no file)
    problems: tuple[str, ...] = ()                          # "model: s=S seed N: verdict" of units not verified
    implausible: dict[str, int] | None = None               # model -> implausible rows (only models with some)


# ------------------------------------------------------------------------------------------- building
def task_grid(task: str, df: pd.DataFrame) -> Grid:
    """The expected grid of ``task``: from its task file when there is a valid one (source classes, seeds,
    version), else from the (source_classes, seed) values present in ``df`` (any task version)."""
    if task in task_files():
        try:
            t = find_task(task)
            return Grid(tuple(t.source_classes), tuple(t.seeds), t.version, f"tasks/{task}.yaml")
        except TaskError as e:  # the CSV is already written: rank from the rows instead of failing the rebuild
            log.warning("ranked view of %r: invalid task file (%s); the grid is taken from the rows",
                        task, "; ".join(e.problems))
    else:
        log.info("task %r has no task file: its ranking grid is the source classes and seeds of its rows", task)
    s = sorted(int(x) for x in df["source_classes"].dropna().unique())
    seeds = sorted(int(x) for x in df["seed"].dropna().unique())
    return Grid(tuple(s), tuple(seeds), None, "the leaderboard rows")


def _unit_status(rows: pd.DataFrame, version: int | None) -> str:
    """'ok', 'failed', 'stale' or 'missing' for the rows of one (model, s, seed)."""
    current = rows if version is None else rows[rows["task_version"].eq(version)]
    if len(current) == 0:
        return "stale" if len(rows) else "missing"
    ok = current[current["status"].eq(Status.OK.value)]
    head = ok[ok["head"].eq(HEADLINE_HEAD) & ok["shots"].eq(HEADLINE_SHOTS) & ok["acc_mean"].notna()]
    if len(head):
        return "ok"
    return "failed" if current["status"].eq(Status.FAILED.value).any() else "missing"


def _mean_over_grid(values: dict[tuple[int, int], float | None], grid: Grid) -> float | None:
    """Mean over seeds of the mean over s; None when a unit has no value."""
    if any(values.get(u) is None or pd.isna(values.get(u)) for u in grid.units):
        return None
    per_seed = [float(np.mean([values[(s, seed)] for s in grid.source_classes])) for seed in grid.seeds]
    return float(np.mean(per_seed))


def ranked_view(df: pd.DataFrame, task: str, grid: Grid | None = None,
                verification: pd.DataFrame | None = None) -> RankedView:
    """The ranked view of leaderboard ``df`` (as :func:`ncbench.leaderboard.read` returns it) of ``task``;
    ``grid`` defaults to :func:`task_grid`; ``verification``: the task's verification rows as
    :func:`ncbench.verify.current` returns them (None: the task has none). See the module docstring."""
    df = df[df["task"].eq(task)]
    grid = grid if grid is not None else task_grid(task, df)
    headline = df[df["status"].eq(Status.OK.value) & df["head"].eq(HEADLINE_HEAD) & df["shots"].eq(HEADLINE_SHOTS)]
    if grid.version is not None:
        headline = headline[headline["task_version"].eq(grid.version)]
    shown = [c for c in COMPARABLE if c in df.columns and headline[c].notna().any()]
    ranked, unranked = [], []
    for model in sorted(df["model"].dropna().unique()):
        rows = df[df["model"].eq(model)]
        status = {u: _unit_status(rows[rows["source_classes"].eq(u[0]) & rows["seed"].eq(u[1])], grid.version)
                  for u in grid.units}
        by = {k: tuple(u for u in grid.units if status[u] == k) for k in ("missing", "failed", "stale")}
        done = sum(st == "ok" for st in status.values())
        if done < len(grid.units) or not grid.units:
            unranked.append(Entry(model, None, None, None, (), {}, done, by["missing"], by["failed"], by["stale"]))
            continue
        mine = headline[headline["model"].eq(model)].set_index(["source_classes", "seed"])
        per_seed = [float(np.mean([mine.loc[(s, seed), "acc_mean"] for s in grid.source_classes])) for seed in grid.seeds]
        std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None
        cols = {c: _mean_over_grid({u: mine.loc[u, c] for u in grid.units}, grid) for c in shown}
        ranked.append(Entry(model, None, float(np.mean(per_seed)), std, grid.seeds, cols, done))
    ranked.sort(key=lambda e: (-e.score, e.model))
    ranked = [replace(e, rank=1 + sum(o.score > e.score for o in ranked)) for e in ranked]
    flagged = df[implausible(df)].groupby("model").size()
    checks: dict = {"implausible": {str(m): int(n) for m, n in flagged.items()} or None}
    if verification is not None:
        units = unit_verdicts(verification[verification["task"].eq(task)])
        in_grid = [(int(s), int(seed)) in set(grid.units) for s, seed in zip(units["source_classes"], units["seed"])]
        units = units[in_grid] if len(units) else units
        checks["verification"] = {str(m): {str(v): int(n) for v, n in g["verdict"].value_counts().items()}
                                  for m, g in units.groupby("model")}
        bad = units[~units["verdict"].isin(["verified", "unverifiable"])]
        checks["problems"] = tuple(f"{r.model}: s={r.source_classes} seed {r.seed}: {r.verdict}" for r in bad.itertuples())
    return RankedView(task, grid, ranked, unranked, shown, **checks)


# ------------------------------------------------------------------------------------------- rendering
def _arrow(column: str) -> str:
    info = metric_of(column)
    return {True: " ↑", False: " ↓", None: ""}[None if info is None else info.higher_is_better]


def _fmt(x: float | None, spec: str) -> str:
    return EMPTY if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _units(units: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(f"s={s} seed {seed}" for s, seed in units) or EMPTY


def _join(values) -> str:
    return ", ".join(str(v) for v in values)


def render_body(view: RankedView) -> str:
    """The view as Markdown without a title: the headline definition, the ranked table, the unranked models
    and a legend. Deterministic: fixed formats, ranked by score then name, unranked by name."""
    g = view.grid
    lines = [
        f"Headline score: `{HEADLINE_HEAD}` head, {HEADLINE_SHOTS}-shot accuracy, averaged over the source-class "
        f"sweep s ∈ {{{_join(g.source_classes)}}} within each seed, then mean ± std over seeds "
        f"{{{_join(g.seeds)}}} (grid from {g.origin}" + (f", task version {g.version}" if g.version is not None else "")
        + "). Only models with every (s, seed) unit of the grid finished are ranked.",
        "",
    ]
    header = ["rank", "model", "score ↑", "± std", "seeds"] + [f"{c}{_arrow(c)}" for c in view.columns]
    checked = view.verification is not None
    header += ["verified"] if checked else []
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---:", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    for e in view.ranked:
        cells = [str(e.rank), e.model, _fmt(e.score, SCORE_FORMAT), _fmt(e.score_std, SCORE_FORMAT), str(len(e.seeds))]
        cells += [_fmt(e.columns[c], COLUMN_FORMAT) for c in view.columns]
        cells += [_verified_cell(view.verification.get(e.model, {}), len(g.units))] if checked else []
        lines.append("| " + " | ".join(cells) + " |")
    if not view.ranked:
        lines.append("| " + " | ".join([EMPTY, "(no model has a complete grid)"] + [""] * (len(header) - 2)) + " |")
    if view.unranked:
        n = len(g.units)
        lines += ["", f"**Not ranked** (partial: incomplete grid of {n} units):", "",
                  "| model | units done | missing | failed | other task version |", "|---|---:|---|---|---|"]
        for e in view.unranked:
            lines.append(f"| {e.model} | {e.done} of {n} | {_units(e.missing)} | {_units(e.failed)} | {_units(e.stale)} |")
    lines += _checks(view)
    lines += ["", "Legend: **score** — the headline score above (fraction of query images classified correctly); "
              "**± std** — standard deviation of the per-seed scores over seeds (" + EMPTY + " with one seed); "
              "**seeds** — number of seeds averaged; the other columns are the leaderboard columns that compare "
              "across source-class counts (leaderboards/README.md), each the mean over the model's grid units; "
              "↑ higher is better, ↓ lower is better, no arrow: a diagnostic; " + EMPTY + " no value."
              + (" **units done** — finished units of the grid with a headline row; **missing** — units without "
                 "a finished result holding a ridge 5-shot row; **failed** — units whose run failed (their `error` is in the CSV); **other task "
                 "version** — units run with another version of the task file, whose episodes differ."
                 if view.unranked else "")
              + (" **verified** — grid units whose every row `ncbench verify` re-extracted from the stored checkpoint "
                 f"and reproduced within tolerance (`{view.task}-verified.csv`; docs/reliability.md, \"Verification\"); "
                 "✓ when all are." if checked else "")]
    return "\n".join(lines) + "\n"


def _verified_cell(counts: dict[str, int], n: int) -> str:
    """``k/n`` verified grid units, ✓ when all, and the units with another verdict."""
    done = counts.get("verified", 0)
    other = [f"{counts[v]} {v}" for v in ("mismatch", "memorised", STALE, "unverifiable") if counts.get(v)]
    return f"{done}/{n}" + (" ✓" if n and done == n else "") + ("".join(f", {o}" for o in other))


def _checks(view: RankedView) -> list[str]:
    """The *Checks* section: implausible rows per model and units that did not verify; none without either."""
    items = [f"- **{m}**: {k} row{'s' * (k > 1)} with {PLAUSIBILITY_FLAG} (implausible: perfect transfer from "
             "perfectly collapsed features — a lookup of the public images, or test images in training)"
             for m, k in sorted((view.implausible or {}).items())]
    items += [f"- {p}" for p in view.problems]
    if not items:
        return []
    return ["", "**Checks** (`ncbench verify`; docs/reliability.md, \"Verification\"):", ""] + items


def render_markdown(view: RankedView) -> str:
    """The content of ``leaderboards/<task>.md``."""
    return (f"# {view.task}: ranked view\n\nGenerated by `ncbench leaderboard` from `{view.task}.csv`; "
            f"do not edit.\n\n" + render_body(view))


def write_markdown(view: RankedView, path: Path) -> Path:
    atomic_write_text(Path(path), render_markdown(view))
    return Path(path)


# ------------------------------------------------------------------------------------------- README block
def markers(task: str) -> tuple[str, str]:
    """The comment lines around ``task``'s generated table in a README."""
    return (f"<!-- ranked-view {task}: generated by `ncbench leaderboard --readme`; do not edit -->",
            f"<!-- /ranked-view {task} -->")


def readme_block(view: RankedView) -> str:
    """What stands between the markers of ``view.task`` (markers excluded)."""
    body = render_body(replace(view, verification=None, problems=()))  # the leaderboard's table alone
    return f"\n{body}\nFull view: [leaderboards/{view.task}.md](leaderboards/{view.task}.md).\n\n"


def blocks_in(text: str) -> dict[str, str]:
    """task -> the text between its markers, for every marked block of ``text``."""
    found = re.finditer(r"<!-- ranked-view ([\w.-]+): [^\n]*-->(.*?)<!-- /ranked-view \1 -->", text, flags=re.S)
    return {m.group(1): m.group(2) for m in found}


def update_readme(path: Path, views: list[RankedView]) -> bool:
    """Replace the marked block of each view's task in README ``path``; True when the file changed. A task
    without markers in the file is left alone (add the two :func:`markers` lines where the table should go)."""
    path = Path(path)
    text = old = path.read_text()
    for view in views:
        start, end = markers(view.task)
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.S)
        text = pattern.sub(lambda _: start + readme_block(view) + end, text)
    if text != old:
        atomic_write_text(path, text)
    return text != old
