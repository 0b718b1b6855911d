"""Plots and a self-contained HTML page from the leaderboards and the raw result files they point at.

The page (``<out>/index.html``) opens with a summary: per (task, model) the finished and failed units, the
source-class counts and the headline few-shot accuracy at the smallest and largest s; then, per task side by
side (in-domain and cross-domain tasks next to each other), Spearman's ρ between each collapse measure and
that accuracy over all units (:mod:`ncbench.analysis`). Then one section per task with these PNGs
(``<out>/<task>-*.png``):

- ``-accuracy``: target few-shot accuracy vs number of source classes (log x, linear y), one panel per
  (head, shots), one line per model: the mean over pretraining seeds, a shaded 95 % CI over episodes
  (√(Σ ci²)/n over the seeds' episode CIs) and error bars for the spread over seeds (± std);
  ``-target-cdnv``: target CDNV likewise, one line per model (review Fig. 10);
- ``-<model>-layers``: NCC train error and CDNV per probed layer (one column per variant: flat maps,
  pooled maps), one line per source-class count, mean over seeds (Fig. 9);
- ``-<model>-training``: collapse metrics against the fraction of pretraining done (epoch counts differ
  with s) from the result files' ``training_curve``, one panel per metric present, one line per
  source-class count; accuracies on a linear y axis, the other metrics on a log one;
- ``-scatter-<outcome>``: the analysis section's scatter plots, one panel per collapse measure against the
  headline accuracy and against target CDNV, one point per unit, with the panel's ρ and τ;

then the correlation table, the *Checks* (``ncbench verify``: the rows of ``<task>-verified.csv`` with their
verdicts, stale when their result file changed since, and the implausible rows, accuracy ≈ 1 with NC1 ≈ 0) and
the leaderboard table. Each model has one colour and marker on every plot
of the page (:func:`model_styles`; no two models share both), legends sit outside the axes, and model
names are drawn as plain text (a ``$`` is never read as mathtext). File names are made from names by
:func:`file_part`, which keeps distinct names distinct (``a/b`` and ``a_b`` give different files).

The series are computed by pure functions (:func:`accuracy_vs_source_classes` and friends) that return
DataFrames, so their numbers can be checked without looking at pixels. Missing data skips that plot with
a logged note (also listed on the page), never a crash. Files are written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import io
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, NullLocator

from ncbench import analysis, leaderboard, verify
from ncbench.compare import arrow, headline
from ncbench.files import atomic_write, atomic_write_text
from ncbench.metrics.info import selected
from ncbench.results import Result, ResultError, Status, load_result

log = logging.getLogger(__name__)



def curve_metrics() -> list[str]:
    """The training-curve values plotted over epochs: the curve names of the metric columns the registry
    marks ``plot`` (``ncbench.metrics.Column``), in registration order."""
    return [c.curve for m in selected() for c in m.columns if c.plot]


def table_columns() -> list[str]:
    """The leaderboard columns of the report's table: the row's key and status, the few-shot accuracy with
    its CI and count, the other :func:`ncbench.compare.headline` columns, the error."""
    return (["model", "source_classes", "seed", "head", "shots", "status", "acc_mean", "acc_ci95", "n_episodes"]
            + headline()[1:] + ["error"])
UNIT = ["model", "source_classes", "seed"]


# ------------------------------------------------------------------------------------------- series
def _over_seeds(rows: pd.DataFrame, value: str, by: list[str]) -> pd.DataFrame:
    """Mean, std (ddof=1; empty for one seed) and count over seeds of ``value`` per ``by`` + source_classes;
    one value per seed (rows repeating a unit's value are counted once)."""
    keys = by + ["source_classes"]
    rows = rows.dropna(subset=[value]).drop_duplicates(keys + ["seed"])
    out = rows.groupby(keys, sort=True)[value].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"mean": value, "std": f"{value}_std", "count": "n_seeds"})


def accuracy_vs_source_classes(df: pd.DataFrame) -> pd.DataFrame:
    """Target few-shot accuracy over seeds from a leaderboard: one row per (model, head, shots,
    source_classes) with ``acc_mean`` (mean over seeds of the per-seed acc_mean), ``acc_mean_std`` (the
    spread over seeds), ``acc_ci95`` (95 % CI half-width over episodes of that mean: √(Σ_seeds ci95²) / n,
    the seeds' episode sets being independent) and ``n_seeds``. Failed rows are ignored."""
    ok = df[df["status"].eq(Status.OK.value)]
    out = _over_seeds(ok, "acc_mean", ["model", "head", "shots"])
    keys = ["model", "head", "shots", "source_classes"]
    ci = ok.dropna(subset=["acc_mean"]).drop_duplicates(keys + ["seed"]).assign(sq=lambda d: d["acc_ci95"] ** 2)
    ci = ci.groupby(keys, sort=True).agg(sq=("sq", "sum"), n=("sq", "size")).reset_index()
    ci["acc_ci95"] = np.sqrt(ci["sq"]) / ci["n"]
    return out.merge(ci[keys + ["acc_ci95"]], on=keys, how="left")


def cdnv_vs_source_classes(df: pd.DataFrame) -> pd.DataFrame:
    """Target CDNV over seeds from a leaderboard: one row per (model, source_classes) with ``target_cdnv``,
    ``target_cdnv_std`` and ``n_seeds`` (the value is per unit, repeated on each head/shots row)."""
    return _over_seeds(df[df["status"].eq(Status.OK.value)], "target_cdnv", ["model"])


def layer_series(records: list[Result]) -> pd.DataFrame:
    """Per-layer curves from result records: one row per (model, variant, depth, layer, source_classes) with
    ``ncc_error``, ``cdnv`` (means over seeds) and ``n_seeds``; ``depth`` is the 1-based position of the
    layer among the record's layers of that variant."""
    rows = []
    for rec in records:
        unit = dataclasses.asdict(rec.unit)
        depth: dict[str, int] = {}
        for entry in rec.layers:
            depth[entry["variant"]] = depth.get(entry["variant"], 0) + 1
            rows.append({**{k: unit[k] for k in UNIT}, "variant": entry["variant"], "depth": depth[entry["variant"]],
                         "layer": entry["layer"], "ncc_error": entry["ncc_error"], "cdnv": entry["cdnv"]})
    keys = ["model", "variant", "depth", "layer", "source_classes"]
    if not rows:
        return pd.DataFrame(columns=keys + ["ncc_error", "cdnv", "n_seeds"])
    g = pd.DataFrame(rows).groupby(keys, sort=True)
    return g[["ncc_error", "cdnv"]].mean().join(g["seed"].nunique().rename("n_seeds")).reset_index()


def training_series(records: list[Result]) -> pd.DataFrame:
    """Collapse metrics over pretraining: long format, one row per (model, source_classes, metric, epoch)
    with ``fraction`` (epoch / the last epoch of the record's curve: the fraction of training done, so runs
    whose epoch counts differ share an x axis), ``value`` (mean over seeds) and ``n_seeds``, for the
    :func:`curve_metrics` present in the records' ``training_curve``. A checkpoint
    (``provenance.checkpoint``) is counted once even when several result files were evaluated from it."""
    rows, seen, plotted = [], set(), curve_metrics()
    for rec in records:
        ckpt = rec.provenance.checkpoint
        if ckpt in seen:
            continue
        seen.add(ckpt)
        unit = dataclasses.asdict(rec.unit)
        last = max((entry["epoch"] for entry in rec.training_curve), default=0) or 1
        for entry in rec.training_curve:
            for metric in plotted:
                if entry.get(metric) is not None:
                    rows.append({**{k: unit[k] for k in UNIT}, "metric": metric, "epoch": entry["epoch"],
                                 "fraction": entry["epoch"] / last, "value": float(entry[metric])})
    keys = ["model", "source_classes", "metric", "epoch"]
    if not rows:
        return pd.DataFrame(columns=keys + ["fraction", "value", "n_seeds"])
    g = pd.DataFrame(rows).groupby(keys, sort=True)
    return g[["fraction", "value"]].mean().join(g["seed"].nunique().rename("n_seeds")).reset_index()


def load_records(df: pd.DataFrame, results_dir: Path) -> list[Result]:
    """The finished result records a leaderboard's ``result_file`` column points at (each file once);
    files that are missing or invalid are logged and left out."""
    records = []
    for rel in df.loc[df["status"].eq(Status.OK.value), "result_file"].dropna().unique():
        try:
            records.append(load_result(Path(results_dir) / rel))
        except ResultError as e:
            log.info("left out of the report: %s", e)
    return records


def headline_outcome(names: list[str]) -> str | None:
    """The accuracy outcome the summary and scatter plots use (of :func:`ncbench.analysis.outcomes`): the
    ``ridge`` head if present (else the first head), at its largest shot count; None without accuracies."""
    acc = [n.split(":") for n in names if n.startswith("acc:")]
    if not acc:
        return None
    head = "ridge" if any(h == "ridge" for _, h, _ in acc) else acc[0][1]
    shots = max(int(k[:-len("shot")]) for _, h, k in acc if h == head)
    return analysis.accuracy_outcome(head, shots)


def outcome_label(outcome: str) -> str:
    """Axis text of an analysis outcome: ``acc:ridge:5shot`` -> ``few-shot accuracy (ridge, 5-shot)``."""
    if outcome.startswith("acc:"):
        _, head, shots = outcome.split(":")
        return f"few-shot accuracy ({head}, {shots[:-len('shot')]}-shot)"
    return {"target_cdnv": "target CDNV", "target_ncc_acc": "target NCC accuracy"}.get(outcome, outcome)


def summary(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The page's summary: one row per (task, model) of the leaderboards ``frames`` {task: leaderboard}
    with ``units_ok``, ``units_failed``, ``source_classes`` (the s with a finished unit, as text),
    ``outcome`` (:func:`headline_outcome` of the task) and its mean and std over seeds at the smallest and
    the largest s (``acc_s_min``, ``acc_s_min_std``, ``acc_s_max``, ``acc_s_max_std``)."""
    rows = []
    for task, df in frames.items():
        outcome = headline_outcome(analysis.outcomes(df))
        acc = accuracy_vs_source_classes(df)
        for model, g in df.groupby("model", sort=True):
            units = g.drop_duplicates(UNIT)
            ok = units[units["status"].eq(Status.OK.value)]
            row = {"task": task, "model": model, "units_ok": len(ok),
                   "units_failed": int(units["status"].eq(Status.FAILED.value).sum()),
                   "source_classes": " ".join(str(s) for s in sorted(ok["source_classes"].unique())),
                   "outcome": outcome or ""}
            if outcome:
                _, head, shots = outcome.split(":")
                a = acc[acc["model"].eq(model) & acc["head"].eq(head) & acc["shots"].eq(int(shots[:-4]))]
                a = a.sort_values("source_classes")
                for name, pick in (("acc_s_min", a.head(1)), ("acc_s_max", a.tail(1))):
                    row[name] = pick["acc_mean"].iloc[0] if len(pick) else np.nan
                    row[f"{name}_std"] = pick["acc_mean_std"].iloc[0] if len(pick) else np.nan
            rows.append(row)
    cols = ["task", "model", "units_ok", "units_failed", "source_classes", "outcome", "acc_s_min", "acc_s_min_std",
            "acc_s_max", "acc_s_max_std"]
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------------------- styles
COLOURS = list(colormaps["tab10"].colors)
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", "*"]  # 9, coprime with the 10 colours


def model_styles(models: list[str]) -> dict[str, tuple[tuple[float, ...], str]]:
    """One (colour, marker) per model, in sorted name order: model i gets colour i mod 10 and marker
    i mod 9, so up to 90 models no two share both (and neighbours differ in both); beyond 90 the colours
    are evenly spaced on a continuous colour map instead, one distinct colour per model."""
    names = sorted(set(models))
    if len(names) <= len(COLOURS) * len(MARKERS):
        return {m: (tuple(COLOURS[i % len(COLOURS)]), MARKERS[i % len(MARKERS)]) for i, m in enumerate(names)}
    cmap = colormaps["turbo"]
    return {m: (tuple(cmap(i / (len(names) - 1))), MARKERS[i % len(MARKERS)]) for i, m in enumerate(names)}


def plain(text: Any) -> str:
    """``text`` as matplotlib shows it verbatim: ``$`` escaped (no mathtext), and a leading ``_`` (which
    legends would hide) preceded by a zero-width space."""
    text = str(text).replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


def file_part(name: Any) -> str:
    """A file-name-safe form of ``name``: the name itself when it is made of letters, digits, ``.``, ``_``,
    ``-`` only, else those characters plus a hash of the name, so distinct names never share a file."""
    name = str(name)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "_"
    if slug == name:
        return slug
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _slug(name: str) -> str:
    """HTML anchor of a task name."""
    return file_part(name)


def _s_colours(values) -> dict[Any, tuple[float, ...]]:
    """A sequential colour per source-class count (ordered: light to dark as s grows)."""
    values = sorted(set(values))
    cmap = colormaps["viridis"]
    return {v: tuple(cmap(0.85 * (1 - i / max(len(values) - 1, 1)))) for i, v in enumerate(values)}


# ------------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write(path, buf.getvalue())
    return path


def _legend(fig: Figure, axes, title: str | None = None) -> None:
    """One legend for the figure, outside the axes on the right (handles deduplicated by label)."""
    handles: dict[str, Any] = {}
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize="small",
                   title=title, title_fontsize="small")


def _finish_panels(fig: Figure, axes, used: int, legend_title: str, title: str) -> Figure:
    """Hide the grid's unused panels (``axes[used:]``), add the one legend and the title; return ``fig``."""
    for ax in axes[used:]:
        ax.set_visible(False)
    _legend(fig, axes[:used], legend_title)
    fig.suptitle(plain(title))
    return fig


def _log_y(ax, values: pd.Series) -> None:
    """Log y-axis when some value is positive (non-positive values are then not drawn), else linear."""
    if (pd.to_numeric(values, errors="coerce") > 0).any():
        ax.set_yscale("log")


def _s_axis(ax, counts) -> None:
    counts = sorted(set(int(c) for c in counts))
    ax.set_xscale("log")
    ax.set_xticks(counts, [str(c) for c in counts], minor=False)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("number of source classes s")


def _plot_accuracy(acc: pd.DataFrame, styles: dict, title: str) -> Figure:
    """One panel per (head, shots): mean over seeds per model, shaded episode CI, seed-std error bars."""
    panels = list(acc.groupby(["head", "shots"], sort=True))
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = _figure(4.2 * ncols + 2.0, 3.4 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    for ax, ((head, shots), p) in zip(axes, panels):
        for model, g in p.groupby("model", sort=True):
            colour, marker = styles[model]
            x, y = g["source_classes"].to_numpy(float), g["acc_mean"].to_numpy(float)
            ci = g["acc_ci95"].fillna(0.0).to_numpy(float)
            ax.fill_between(x, y - ci, y + ci, color=colour, alpha=0.2, linewidth=0)
            ax.errorbar(x, y, yerr=g["acc_mean_std"].fillna(0.0).to_numpy(float), color=colour, marker=marker,
                        capsize=3, label=plain(model))
        _s_axis(ax, p["source_classes"])
        ax.set_title(plain(f"{head}, {shots}-shot"))
        ax.set_ylabel("target few-shot accuracy")
        ax.yaxis.set_tick_params(labelleft=True)
        ax.grid(alpha=0.3)
    return _finish_panels(fig, axes, len(panels), "model", title)


def _plot_target_cdnv(cd: pd.DataFrame, styles: dict, title: str) -> Figure:
    fig = _figure(6.8, 4.0)
    ax = fig.add_subplot()
    for model, g in cd.groupby("model", sort=True):
        colour, marker = styles[model]
        ax.errorbar(g["source_classes"], g["target_cdnv"], yerr=g["target_cdnv_std"].fillna(0.0), color=colour,
                    marker=marker, capsize=3, label=plain(model))
    _s_axis(ax, cd["source_classes"])
    _log_y(ax, cd["target_cdnv"])
    ax.set(ylabel="target CDNV (log)", title=plain(title))
    ax.grid(alpha=0.3)
    _legend(fig, [ax], "model")
    return fig


def _plot_layers(curves: pd.DataFrame, title: str) -> Figure:
    variants = sorted(curves["variant"].unique())
    fig = _figure(4.5 * len(variants) + 1.2, 6.4)
    axes = fig.subplots(2, len(variants), squeeze=False)
    colours = _s_colours(curves["source_classes"])
    for col, variant in enumerate(variants):
        cv = curves[curves["variant"].eq(variant)]
        names = cv.drop_duplicates("depth").sort_values("depth")
        for row, (metric, label) in enumerate((("ncc_error", "NCC train error"), ("cdnv", "CDNV (log)"))):
            ax = axes[row][col]
            for s, g in cv.groupby("source_classes", sort=True):
                ax.plot(g["depth"], g[metric], marker="o", color=colours[s], label=f"s = {s}")
            ax.set_xticks(names["depth"], [plain(n) for n in names["layer"]], rotation=30, ha="right",
                          fontsize="small")
            if metric == "cdnv":
                _log_y(ax, cv[metric])
            ax.set(ylabel=label, title=plain(f"{variant} features") if row == 0 else None)
            ax.grid(alpha=0.3)
    _legend(fig, axes, "source classes")
    fig.suptitle(plain(title))
    return fig


def _is_accuracy(metric: str) -> bool:
    """Accuracy-like curve values (``train_acc``, ``test_acc``, ...): plotted on a linear axis."""
    return metric.endswith("acc")


def _plot_training(curves: pd.DataFrame, title: str) -> Figure:
    metrics = [m for m in curve_metrics() if m in set(curves["metric"])]
    ncols = min(4, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig = _figure(3.6 * ncols + 1.2, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colours = _s_colours(curves["source_classes"])
    for ax, metric in zip(axes, metrics):
        cm = curves[curves["metric"].eq(metric)]
        for s, g in cm.groupby("source_classes", sort=True):
            ax.plot(g["fraction"], g["value"], color=colours[s], label=f"s = {s}")
        if _is_accuracy(metric):
            ax.set_ylabel(plain(metric))
        else:
            _log_y(ax, cm["value"])
            ax.set_ylabel(plain(metric) + (" (log)" if ax.get_yscale() == "log" else ""))
        ax.set(xlabel="fraction of training done", title=plain(metric), xlim=(0, 1))
        ax.grid(alpha=0.3)
    return _finish_panels(fig, axes, len(metrics), "source classes", title)


def _plot_scatter(units: pd.DataFrame, table: pd.DataFrame, outcome: str, styles: dict, title: str) -> Figure:
    """One panel per collapse measure with values: x = measure (log when all positive), y = ``outcome``,
    one point per unit in its model's style; the panel title gives ρ and τ over all units."""
    measures = [m.column for m in analysis.MEASURES if not m.fixed_s_only and units[m.column].notna().any()]
    ncols = min(3, len(measures))
    nrows = -(-len(measures) // ncols)
    fig = _figure(3.6 * ncols + 1.6, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    for ax, measure in zip(axes, measures):
        for model, g in units.groupby("model", sort=True):
            colour, marker = styles[model]
            ax.scatter(g[measure], g[outcome], color=colour, marker=marker, s=22, label=plain(model))
        x = units[measure].dropna()
        if len(x) and (x > 0).all() and x.max() > 10 * x.min():  # log only over more than a decade
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        r = table[table["scope"].eq("all") & table["measure"].eq(measure) & table["outcome"].eq(outcome)]
        rho, tau = (r["spearman"].iloc[0], r["kendall"].iloc[0]) if len(r) else (np.nan, np.nan)
        stat = "ρ, τ undefined" if pd.isna(rho) else f"ρ = {rho:+.2f}, τ = {tau:+.2f}"
        ax.set_title(f"{plain(measure)}: {stat}", fontsize="medium")
        ax.set_xlabel(plain(measure))
        ax.set_ylabel(plain(outcome_label(outcome)))
        ax.yaxis.set_tick_params(labelleft=True)
        ax.grid(alpha=0.3)
    return _finish_panels(fig, axes, len(measures), "model", title)


def _task_plots(task: str, df: pd.DataFrame, results_dir: Path, out_dir: Path, styles: dict,
                table: pd.DataFrame) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]:
    """Write the task's PNGs; return ([(file name, caption)] of the results, [(file name, caption)] of the
    analysis scatter plots, [notes on skipped plots])."""
    plots, scatters, notes = [], [], []
    stem = file_part(task)

    def skip(note: str) -> None:
        log.info("report %s: %s; plot skipped", task, note)
        notes.append(note)

    def save(fig: Figure, name: str, caption: str, into: list) -> None:
        _save(fig, out_dir / name)
        into.append((name, caption))

    acc = accuracy_vs_source_classes(df)
    if len(acc):
        save(_plot_accuracy(acc, styles, f"{task}: few-shot accuracy (mean over seeds; band: 95 % CI over "
                                         f"episodes; bars: ± std over seeds)"),
             f"{stem}-accuracy.png", "Target few-shot accuracy vs number of source classes", plots)
    else:
        skip("no finished rows with an accuracy")
    cd = cdnv_vs_source_classes(df)
    if len(cd):
        save(_plot_target_cdnv(cd, styles, f"{task}: target CDNV (mean ± std over seeds)"),
             f"{stem}-target-cdnv.png", "Target CDNV vs number of source classes", plots)
    else:
        skip("no target CDNV values")

    units = analysis.unit_table(df)
    outcome = headline_outcome(analysis.outcomes(df))
    has_measure = any(units[m.column].notna().any() for m in analysis.MEASURES if not m.fixed_s_only)
    for target in [o for o in (outcome, "target_cdnv") if o and o in units and units[o].notna().any()]:
        if not has_measure:
            skip("no source-side collapse measures (scatter plots)")
            break
        save(_plot_scatter(units, table, target, styles, f"{task}: collapse measures vs {outcome_label(target)}, one point per "
                                                          f"unit (model, seed, s)"),
             f"{stem}-scatter-{file_part(target)}.png", f"Source collapse vs {target}, one point per unit", scatters)

    records = load_records(df, results_dir)
    if not records:
        skip(f"no result files found under {results_dir} (layer and training curves)")
        return plots, scatters, notes
    layers, curves = layer_series(records), training_series(records)
    for model in sorted(df.loc[df["status"].eq(Status.OK.value), "model"].unique()):
        lm = layers[layers["model"].eq(model)]
        if len(lm):
            save(_plot_layers(lm, f"{task}: {model}, per-layer collapse (mean over seeds)"),
                 f"{stem}-{file_part(model)}-layers.png", f"{model}: NCC train error and CDNV per layer", plots)
        else:
            skip(f"{model}: no layer curves in the result files")
        tm = curves[curves["model"].eq(model)]
        if len(tm):
            save(_plot_training(tm, f"{task}: {model}, collapse over pretraining (mean over seeds)"),
                 f"{stem}-{file_part(model)}-training.png",
                 f"{model}: collapse metrics against the fraction of pretraining done", plots)
        else:
            skip(f"{model}: no training curve in the result files")
    return plots, scatters, notes


# ------------------------------------------------------------------------------------------- HTML
STYLE = ("body{font-family:sans-serif;margin:2em;max-width:90em}table{border-collapse:collapse;font-size:90%;"
         "margin-bottom:1em}th,td{border:1px solid #ccc;padding:2px 6px}td.num{text-align:right}"
         "tr.failed{color:#a00}img{max-width:100%;border:1px solid #eee}figure{display:inline-block;"
         "margin:1em 1em 0 0}caption{text-align:left;font-weight:bold;padding:4px 0}")


def _cell(value: Any, column: str) -> str:
    """Display text of one table cell (HTML only; the data stay numbers in the CSVs)."""
    if pd.isna(value):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if column in ("acc_mean", "acc_ci95") or column.endswith(("_acc", "_ci95")) else f"{value:.4g}"
    return str(value)


def _table_html(df: pd.DataFrame) -> str:
    shown, compared = table_columns(), headline()
    head = "".join(f"<th>{html.escape(f'{c} {arrow(c)}'.strip() if c in compared else c)}</th>" for c in shown)
    numeric = {c: pd.api.types.is_numeric_dtype(df[c]) for c in shown}
    body = []
    for _, r in df.iterrows():
        cells = "".join(f'<td{" class=num" if numeric[c] else ""}>{html.escape(_cell(r[c], c))}</td>'
                        for c in shown)
        body.append(f'<tr{" class=failed" if r["status"] == Status.FAILED.value else ""}>{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _ci_text(value: float, lo: float, hi: float) -> str:
    if pd.isna(value):
        return "–"
    return f"{value:+.2f} [{lo:+.2f}, {hi:+.2f}]" if pd.notna(lo) else f"{value:+.2f}"


def _grid_html(table: pd.DataFrame, caption: str, stat: str = "spearman") -> str:
    """Rows: measure (and group); columns: outcomes; cells: ``stat`` [95 % CI] and n."""
    if not len(table):
        return f"<p>{html.escape(caption)}: no correlations (too few finished units with values).</p>"
    outcomes = list(dict.fromkeys(table["outcome"]))
    groups = list(dict.fromkeys(table["group"]))
    head = "<th>group</th>" * (len(groups) > 1) + "<th>measure (more collapse)</th>" + "".join(
        f"<th>{html.escape(o)}</th>" for o in outcomes)
    body = []
    for group in groups:
        tg = table[table["group"].eq(group)]
        for measure in dict.fromkeys(tg["measure"]):
            tm = tg[tg["measure"].eq(measure)].set_index("outcome")
            cells = "".join(
                f"<td class=num>{html.escape(_ci_text(*tm.loc[o, [stat, f'{stat}_lo', f'{stat}_hi']]))}"
                f" <small>n={int(tm.loc[o, 'n'])}</small></td>" if o in tm.index else "<td></td>" for o in outcomes)
            first = f"<td>{html.escape(group)}</td>" * (len(groups) > 1)
            body.append(f"<tr>{first}<td>{html.escape(measure)} ({html.escape(tm['more_collapse'].iloc[0])})</td>"
                        f"{cells}</tr>")
    return (f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _figures_html(plots: list[tuple[str, str]]) -> str:
    return "\n".join(f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>" for name, caption in plots)


def _analysis_html(task: str, table: pd.DataFrame, scatters: list[tuple[str, str]]) -> str:
    parts = [f'<h3 id="{html.escape(_slug(task))}-analysis">{html.escape(task)}: does collapse predict transfer?</h3>',
             "<p>Rank correlations between each source-side collapse measure and each target outcome, over units "
             "(model, seed, s); brackets: 95 % bootstrap interval (2000 resamples of the units). The sign is that of "
             "the raw values: for a measure that is lower under more collapse (CDNV, NC1, test collapse, effective "
             "depth), a <em>negative</em> ρ with accuracy means that more collapse goes with better transfer. "
             f"Full table: <code>{html.escape(task)}-analysis.csv</code>; <code>docs/analysis.md</code>.</p>",
             _grid_html(table[table["scope"].eq("all")], "All units: Spearman ρ [95 % CI]"),
             _grid_html(table[table["scope"].eq("all")], "All units: Kendall τ-b [95 % CI]", "kendall"),
             _figures_html(scatters)]
    for scope, caption in (("model", "Within each model, across s and seeds: Spearman ρ [95 % CI]"),
                           ("source_classes", "Across models at each s (nc1 and test collapse comparable here): Spearman ρ "
                                              "[95 % CI]")):
        parts.append(f"<details><summary>{html.escape(caption)}</summary>"
                     f"{_grid_html(table[table['scope'].eq(scope)], caption)}</details>")
    return "\n".join(parts)


VERIFY_COLUMNS = ["model", "source_classes", "seed", "head", "shots", "verdict", "claimed_acc", "claimed_ci95",
                  "reproduced_acc", "delta", "identical", "fresh_acc", "one_hot_share", "flags", "note", "date"]


def _checks_html(task: str, df: pd.DataFrame, marks: pd.DataFrame | None) -> str:
    """The task's *Checks*: implausible leaderboard rows and the verification rows (``ncbench verify``)."""
    parts = [f'<h3 id="{html.escape(_slug(task))}-checks">{html.escape(task)}: checks</h3>']
    flagged = df[verify.implausible(df)]
    if len(flagged):
        cells = "".join(f"<li>{html.escape(str(r.model))} s={r.source_classes} seed {r.seed} {html.escape(str(r.head))} "
                        f"{r.shots}-shot: accuracy {r.acc_mean:.4f}, NC1 {r.nc1:.3g}</li>" for r in flagged.itertuples())
        parts.append(f"<p><b>Implausible rows</b> ({html.escape(verify.PLAUSIBILITY_FLAG)}: perfect transfer from "
                     f"perfectly collapsed features — a lookup of the public images, or test images in training):</p>"
                     f"<ul class=flags>{cells}</ul>")
    if marks is None:
        parts.append(f"<p>No verification: <code>ncbench verify {html.escape(task)}</code> re-extracts features from "
                     "stored checkpoints and re-scores a sample of units.</p>")
    else:
        counts = marks["verdict"].value_counts()
        text = ", ".join(f"{int(n)} {html.escape(str(v))}" for v, n in counts.items())
        head = "".join(f"<th>{html.escape(c)}</th>" for c in VERIFY_COLUMNS)
        body = "".join(
            f'<tr class="{html.escape(str(r["verdict"]))}">'
            + "".join(f"<td{' class=num' if isinstance(r[c], float) else ''}>{html.escape(_cell(r[c], c))}</td>"
                      for c in VERIFY_COLUMNS) + "</tr>" for _, r in marks.iterrows())
        parts.append(f"<details><summary>Verification ({html.escape(task)}-verified.csv): {text} of {len(marks)} rows"
                     f"</summary><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></details>")
    return "\n".join(parts)


def _task_html(task: str, df: pd.DataFrame, plots: list[tuple[str, str]], scatters: list[tuple[str, str]],
               notes: list[str], table: pd.DataFrame, marks: pd.DataFrame | None = None) -> str:
    parts = [f'<h2 id="{html.escape(_slug(task))}">{html.escape(task)}</h2>', _figures_html(plots)]
    if notes:
        parts.append("<p>Not plotted:</p><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append(_analysis_html(task, table, scatters))
    parts.append(_checks_html(task, df, marks))
    parts.append(f"<details><summary>Leaderboard {html.escape(task)}.csv ({len(df)} rows)</summary>"
                 f"{_table_html(df)}</details>")
    return "\n".join(parts)


def _summary_html(frames: dict[str, pd.DataFrame], tables: dict[str, pd.DataFrame]) -> str:
    s = summary(frames)
    head = ("<tr><th>task</th><th>model</th><th>units ok</th><th>units failed</th><th>s</th><th>accuracy</th>"
            "<th>at smallest s (± std over seeds)</th><th>at largest s (± std over seeds)</th></tr>")

    def acc(v, sd):
        return "" if pd.isna(v) else f"{v:.4f}" + ("" if pd.isna(sd) else f" ± {sd:.4f}")

    body = "".join(
        f'<tr><td><a href="#{html.escape(_slug(r.task))}">{html.escape(r.task)}</a></td><td>{html.escape(r.model)}</td>'
        f"<td class=num>{r.units_ok}</td><td class=num>{r.units_failed}</td><td>{html.escape(r.source_classes)}</td>"
        f"<td>{html.escape(r.outcome)}</td><td class=num>{acc(r.acc_s_min, r.acc_s_min_std)}</td>"
        f"<td class=num>{acc(r.acc_s_max, r.acc_s_max_std)}</td></tr>" for r in s.itertuples())
    parts = [f"<table id=summary><caption>Summary: units and headline few-shot accuracy per task and model"
             f"</caption><thead>{head}</thead><tbody>{body}</tbody></table>"]
    # the answer side by side: ρ(measure, headline accuracy) over all units, one column per task
    heads, cells = {}, {}
    for task, table in tables.items():
        outcome = headline_outcome(analysis.outcomes(frames[task]))
        t = table[table["scope"].eq("all") & table["outcome"].eq(outcome or "")]
        if len(t):
            heads[task] = outcome
        for r in t.itertuples():
            cells.setdefault((r.measure, r.more_collapse), {})[task] = (
                f"{html.escape(_ci_text(r.spearman, r.spearman_lo, r.spearman_hi))} <small>n={r.n}</small>")
    if heads:
        th = "".join(f"<th>{html.escape(t)}<br><small>{html.escape(o)}</small></th>" for t, o in heads.items())
        rows = "".join(f"<tr><td>{html.escape(m)} ({html.escape(d)})</td>"
                       + "".join(f"<td class=num>{c.get(t, '')}</td>" for t in heads) + "</tr>"
                       for (m, d), c in cells.items())
        parts.append("<p><b>Does collapse predict transfer?</b> Spearman ρ [95 % bootstrap CI] of each source "
                     "collapse measure with the headline accuracy, over all units of each task (in-domain and "
                     "cross-domain tasks side by side); per-task sections have every outcome and scope.</p>"
                     f"<table id=answer><thead><tr><th>measure (more collapse)</th>{th}</tr></thead>"
                     f"<tbody>{rows}</tbody></table>")
    return "\n".join(parts)


def _tasks(leaderboards_dir: Path, tasks: list[str] | None) -> list[str]:
    available = sorted(p.stem for p in leaderboards_dir.glob("*.csv") if not analysis.is_analysis_file(p)
                       and not verify.is_verification_file(p)) if leaderboards_dir.is_dir() else []
    if tasks is None:
        if not available:
            raise FileNotFoundError(f"no leaderboard CSVs in {leaderboards_dir} (run `ncbench run` or "
                                    f"`ncbench leaderboard` first)")
        return available
    missing = [t for t in tasks if t not in available]
    if missing:
        raise FileNotFoundError(f"task(s) {missing}: no leaderboard CSV in {leaderboards_dir} "
                                f"(available: {', '.join(available) or 'none'})")
    return list(tasks)


def make_report(leaderboards_dir: Path, results_dir: Path, out_dir: Path, tasks: list[str] | None = None) -> Path:
    """Write the PNGs and ``index.html`` of the given tasks (default: every ``<task>.csv`` in
    ``leaderboards_dir``, ``*-analysis.csv`` and ``*-verified.csv`` aside) into ``out_dir``; ``results_dir`` is what the CSVs'
    ``result_file`` is relative to. Returns the HTML path. Raises FileNotFoundError when a task has no
    leaderboard CSV, ValueError when the CSV of a task asked for by name is not a valid leaderboard (without
    ``tasks`` such a CSV is left out with a logged warning)."""
    leaderboards_dir, results_dir, out_dir = Path(leaderboards_dir), Path(results_dir), Path(out_dir)
    names = _tasks(leaderboards_dir, tasks)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames: dict[str, pd.DataFrame] = {}
    for task in names:
        try:
            frames[task] = leaderboard.read(leaderboards_dir / f"{task}.csv")
        except ValueError as e:
            if tasks is not None:  # asked for by name: bad input
                raise
            log.warning("report: left out a CSV that is not a leaderboard: %s", e)
    styles = model_styles([m for df in frames.values() for m in df["model"].dropna()])
    tables, sections = {}, []
    for task, df in frames.items():
        tables[task] = analysis.analyze(df)
        plots, scatters, notes = _task_plots(task, df, results_dir, out_dir, styles, tables[task])
        log.info("report %s: %d plots, %d leaderboard rows", task, len(plots) + len(scatters), len(df))
        marks = verify.marks(leaderboards_dir, results_dir, task)
        sections.append(_task_html(task, df, plots, scatters, notes, tables[task], marks))
    toc = "".join(f'<li><a href="#{html.escape(_slug(t))}">{html.escape(t)}</a></li>' for t in frames)
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>ncbench report</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>ncbench report</h1>\n"
            + (_summary_html(frames, tables) if frames else "") + f"\n<ul>{toc}</ul>\n"
            + "\n".join(sections) + "\n</body></html>\n")
    path = out_dir / "index.html"
    atomic_write_text(path, page)
    return path
