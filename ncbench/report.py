"""Plots and a self-contained HTML page from the leaderboards and the raw result files they point at.

Per task (``<out>/<task>-*.png``, all listed in ``<out>/index.html`` with the task's leaderboard table):

- ``-accuracy``: target few-shot accuracy vs number of source classes (log x), mean over pretraining seeds
  ± std across seeds, one line per (model, head, shots); ``-target-cdnv``: target CDNV likewise, one line
  per model (review Fig. 10);
- ``-<model>-layers``: NCC train error and CDNV per probed layer (one column per variant: flat maps,
  pooled maps), one line per source-class count, mean over seeds (Fig. 9);
- ``-<model>-training``: collapse metrics over pretraining epochs from the result files'
  ``training_curve``, one panel per metric present, one line per source-class count, log y.

The series are computed by pure functions (:func:`accuracy_vs_source_classes` and friends) that return
DataFrames, so their numbers can be checked without looking at pixels. Missing data skips that plot with
a logged note (also listed on the page), never a crash. Files are written atomically.
"""

from __future__ import annotations

import dataclasses
import html
import io
import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from ncbench import leaderboard
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
    source_classes) with ``acc_mean`` (mean over seeds of the per-seed acc_mean), ``acc_mean_std`` and
    ``n_seeds``. Failed rows are ignored."""
    return _over_seeds(df[df["status"].eq(Status.OK.value)], "acc_mean", ["model", "head", "shots"])


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
    """Collapse metrics over pretraining epochs: long format, one row per (model, source_classes, metric,
    epoch) with ``value`` (mean over seeds) and ``n_seeds``, for the :func:`curve_metrics` present in the
    records' ``training_curve``. A checkpoint (``provenance.checkpoint``) is counted once even when several
    result files were evaluated from it."""
    rows, seen, plotted = [], set(), curve_metrics()
    for rec in records:
        ckpt = rec.provenance.checkpoint
        if ckpt in seen:
            continue
        seen.add(ckpt)
        unit = dataclasses.asdict(rec.unit)
        for entry in rec.training_curve:
            for metric in plotted:
                if entry.get(metric) is not None:
                    rows.append({**{k: unit[k] for k in UNIT}, "metric": metric, "epoch": entry["epoch"],
                                 "value": float(entry[metric])})
    keys = ["model", "source_classes", "metric", "epoch"]
    if not rows:
        return pd.DataFrame(columns=keys + ["value", "n_seeds"])
    g = pd.DataFrame(rows).groupby(keys, sort=True)
    return g["value"].mean().to_frame().join(g["seed"].nunique().rename("n_seeds")).reset_index()


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


# ------------------------------------------------------------------------------------------- plots
def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "_"


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write(path, buf.getvalue())
    return path


def _log_y(ax, values: pd.Series) -> None:
    """Log y-axis when some value is positive (non-positive values are then not drawn), else linear."""
    if (values > 0).any():
        ax.set_yscale("log")


def _plot_over_source_classes(series: pd.DataFrame, value: str, by: list[str], ylabel: str, title: str,
                              log_y: bool) -> Figure:
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for key, g in series.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        label = " ".join(f"{v}-shot" if k == "shots" else str(v) for k, v in zip(by, key))
        ax.errorbar(g["source_classes"], g[value], yerr=g[f"{value}_std"].fillna(0.0), marker="o", capsize=3,
                    label=label)
    ax.set_xscale("log")
    counts = sorted(series["source_classes"].unique())
    ax.set_xticks(counts, [str(c) for c in counts], minor=False)
    ax.xaxis.set_minor_locator(NullLocator())
    if log_y:
        _log_y(ax, series[value])
    ax.set(xlabel="number of source classes", ylabel=ylabel, title=title)
    ax.legend(fontsize="small")
    return fig


def _plot_layers(curves: pd.DataFrame, title: str) -> Figure:
    variants = sorted(curves["variant"].unique())
    fig = Figure(figsize=(4.5 * len(variants), 6.4))
    axes = fig.subplots(2, len(variants), squeeze=False)
    for col, variant in enumerate(variants):
        cv = curves[curves["variant"].eq(variant)]
        names = cv.drop_duplicates("depth").sort_values("depth")
        for row, (metric, label) in enumerate((("ncc_error", "NCC train error"), ("cdnv", "CDNV"))):
            ax = axes[row][col]
            for s, g in cv.groupby("source_classes", sort=True):
                ax.plot(g["depth"], g[metric], marker="o", label=f"s = {s}")
            ax.set_xticks(names["depth"], names["layer"], rotation=30, ha="right", fontsize="small")
            if metric == "cdnv":
                _log_y(ax, cv[metric])
            ax.set(ylabel=label, title=f"{variant} features" if row == 0 else None)
            ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def _plot_training(curves: pd.DataFrame, title: str) -> Figure:
    metrics = [m for m in curve_metrics() if m in set(curves["metric"])]
    ncols = min(4, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig = Figure(figsize=(3.6 * ncols, 3.0 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        cm = curves[curves["metric"].eq(metric)]
        for s, g in cm.groupby("source_classes", sort=True):
            ax.plot(g["epoch"], g["value"], label=f"s = {s}")
        _log_y(ax, cm["value"])
        ax.set(xlabel="epoch", title=metric)
        ax.legend(fontsize="small")
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


def _task_plots(task: str, df: pd.DataFrame, results_dir: Path,
                out_dir: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """Write the task's PNGs; return ([(file name, caption)], [notes on skipped plots])."""
    plots, notes = [], []

    def skip(note: str) -> None:
        log.info("report %s: %s; plot skipped", task, note)
        notes.append(note)

    def save(fig: Figure, name: str, caption: str) -> None:
        _save(fig, out_dir / name)
        plots.append((name, caption))

    acc = accuracy_vs_source_classes(df)
    if len(acc):
        save(_plot_over_source_classes(acc, "acc_mean", ["model", "head", "shots"], "target few-shot accuracy",
                                       f"{task}: few-shot accuracy (mean ± std over seeds)", log_y=False),
             f"{_slug(task)}-accuracy.png", "Target few-shot accuracy vs number of source classes")
    else:
        skip("no finished rows with an accuracy")
    cd = cdnv_vs_source_classes(df)
    if len(cd):
        save(_plot_over_source_classes(cd, "target_cdnv", ["model"], "target CDNV",
                                       f"{task}: target CDNV (mean ± std over seeds)", log_y=True),
             f"{_slug(task)}-target-cdnv.png", "Target CDNV vs number of source classes")
    else:
        skip("no target CDNV values")

    records = load_records(df, results_dir)
    if not records:
        skip(f"no result files found under {results_dir} (layer and training curves)")
        return plots, notes
    layers, curves = layer_series(records), training_series(records)
    for model in sorted(df.loc[df["status"].eq(Status.OK.value), "model"].unique()):
        lm = layers[layers["model"].eq(model)]
        if len(lm):
            save(_plot_layers(lm, f"{task}: {model}, per-layer collapse (mean over seeds)"),
                 f"{_slug(task)}-{_slug(model)}-layers.png", f"{model}: NCC train error and CDNV per layer")
        else:
            skip(f"{model}: no layer curves in the result files")
        tm = curves[curves["model"].eq(model)]
        if len(tm):
            save(_plot_training(tm, f"{task}: {model}, collapse over pretraining (mean over seeds)"),
                 f"{_slug(task)}-{_slug(model)}-training.png", f"{model}: collapse metrics over pretraining epochs")
        else:
            skip(f"{model}: no training curve in the result files")
    return plots, notes


# ------------------------------------------------------------------------------------------- HTML
STYLE = ("body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;font-size:90%}"
         "th,td{border:1px solid #ccc;padding:2px 6px}td.num{text-align:right}tr.failed{color:#a00}"
         "img{max-width:100%;border:1px solid #eee}figure{display:inline-block;margin:1em 1em 0 0}")


def _cell(value: Any, column: str) -> str:
    """Display text of one table cell (HTML only; the data stay numbers in the CSVs)."""
    if pd.isna(value):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if column in ("acc_mean", "acc_ci95") or column.endswith("_acc") else f"{value:.4g}"
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


def _task_html(task: str, df: pd.DataFrame, plots: list[tuple[str, str]], notes: list[str]) -> str:
    parts = [f'<h2 id="{html.escape(_slug(task))}">{html.escape(task)}</h2>', _table_html(df)]
    parts += [f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
              f"<figcaption>{html.escape(caption)}</figcaption></figure>" for name, caption in plots]
    if notes:
        parts.append("<p>Not plotted:</p><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(parts)


def _tasks(leaderboards_dir: Path, tasks: list[str] | None) -> list[str]:
    available = sorted(p.stem for p in leaderboards_dir.glob("*.csv")) if leaderboards_dir.is_dir() else []
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
    ``leaderboards_dir``) into ``out_dir``; ``results_dir`` is what the CSVs' ``result_file`` is relative to.
    Returns the HTML path. Raises FileNotFoundError when a task has no leaderboard CSV, ValueError when the
    CSV of a task asked for by name is not a valid leaderboard (without ``tasks`` such a CSV is left out
    with a logged warning)."""
    leaderboards_dir, results_dir, out_dir = Path(leaderboards_dir), Path(results_dir), Path(out_dir)
    names = _tasks(leaderboards_dir, tasks)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections, reported = [], []
    for task in names:
        try:
            df = leaderboard.read(leaderboards_dir / f"{task}.csv")
        except ValueError as e:
            if tasks is not None:  # asked for by name: bad input
                raise
            log.warning("report: left out a CSV that is not a leaderboard: %s", e)
            continue
        plots, notes = _task_plots(task, df, results_dir, out_dir)
        log.info("report %s: %d plots, %d leaderboard rows", task, len(plots), len(df))
        sections.append(_task_html(task, df, plots, notes))
        reported.append(task)
    toc = "".join(f'<li><a href="#{html.escape(_slug(t))}">{html.escape(t)}</a></li>' for t in reported)
    page = (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>ncbench report</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>ncbench report</h1>\n<ul>{toc}</ul>\n"
            + "\n".join(sections) + "\n</body></html>\n")
    path = out_dir / "index.html"
    atomic_write_text(path, page)
    return path
