"""Leaderboards are derived: the committed CSVs from the committed result files, their columns from the
metric registry, and the column table of leaderboards/README.md from those columns."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ncbench import leaderboard
from ncbench.metrics import Column, metric
from ncbench.metrics import columns as metric_columns
from ncbench.registry import METRICS
from ncbench.results import iter_results
from ncbench.run import run_task
from ncbench.tasks import load_task
from ncbench.unit import RunOptions

LEADERBOARDS = Path(__file__).resolve().parents[1] / "leaderboards"
COMMITTED = sorted(p for p in LEADERBOARDS.glob("*.csv")
                   if not p.name.endswith(("-analysis.csv", "-verified.csv")))  # derived tables beside each board


def test_every_result_folder_has_its_leaderboard():
    tasks = sorted(p.name for p in (LEADERBOARDS / "results").iterdir() if p.is_dir())
    assert tasks and tasks == sorted(p.stem for p in COMMITTED)


@pytest.mark.parametrize("csv", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_committed_leaderboard_rebuilds_byte_for_byte(csv, tmp_path):
    (rebuilt,) = leaderboard.rebuild(LEADERBOARDS / "results", tmp_path, [csv.stem])
    assert rebuilt.read_bytes() == csv.read_bytes()
    analysis = LEADERBOARDS / f"{csv.stem}-analysis.csv"  # committed with every leaderboard
    assert (tmp_path / analysis.name).read_bytes() == analysis.read_bytes()


def readme_table() -> list[tuple[str, str]]:
    """(column, type) of the column table in leaderboards/README.md, in order."""
    rows = re.findall(r"^\| (\w+) \| (\w+) \|", (LEADERBOARDS / "README.md").read_text(), flags=re.M)
    return [(name, kind) for name, kind in rows if name != "column"]


def test_readme_documents_every_column_in_order_with_its_type():
    assert readme_table() == [(name, kind.__name__) for name, kind in leaderboard.columns().items()]


@pytest.fixture
def scratch_registry(monkeypatch):
    """Metrics registered in a test are forgotten afterwards."""
    METRICS.names()  # the built-in metrics first
    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))


def test_a_metric_registered_through_the_public_api_fills_its_column(scratch_registry, tiny_task_file, tmp_path):
    """docs/extending.md's example: one decorated function is a metric the task can list; its column appears
    in the rebuilt leaderboard, and the metrics the task does not list are not computed (empty columns)."""

    @metric("mean_feature_norm", higher_is_better=None, columns=[
        Column("mean_feature_norm", "source", lambda e: mean_feature_norm(e.train_features, e.train_labels),
               needs=("features",), curve="mean_feature_norm"),
    ])
    def mean_feature_norm(features, labels) -> float:
        """Mean Euclidean norm of the features (a toy diagnostic).

        features: [N, m] float; labels: [N] int (unused).
        """
        return float(torch.as_tensor(features, dtype=torch.float64).norm(dim=1).mean())

    task = load_task(tiny_task_file(source_classes=[4], metrics=["nc1", "mean_feature_norm"]))
    opts = RunOptions(out=tmp_path / "runs", results=tmp_path / "results")
    assert [st for _, st in run_task(task, opts)] == ["ok"]
    (path,) = leaderboard.rebuild(opts.results, tmp_path / "lb")
    df = leaderboard.read(path)
    columns = list(leaderboard.columns())
    assert list(df.columns) == columns and columns.index("mean_feature_norm") == columns.index("weak_test_collapse") + 1  # last source column
    assert (df["mean_feature_norm"] > 0).all() and (df["nc1"] > 0).all()
    unlisted = ["cdnv_train", "target_cdnv", "source_test_acc", "effective_depth", "nc_rank_limited"]
    assert df[unlisted].isna().all().all()
    ((_, rec),) = iter_results(opts.results)
    assert set(rec.source) == {"nc1", "mean_feature_norm"} and rec.target == {} and rec.layers == []
    assert [set(r) - {"epoch", "lr", "loss", "running_acc"} for r in rec.training_curve] == [{"nc1", "mean_feature_norm"}] * 3
    np.testing.assert_allclose(df["mean_feature_norm"], rec.source["mean_feature_norm"], rtol=1e-8)  # CSV: %.8g


def test_no_metric_listed_computes_only_the_episodes(tiny_task_file, tmp_path):
    task = load_task(tiny_task_file(source_classes=[4], metrics=[]))
    opts = RunOptions(out=tmp_path / "runs", results=tmp_path / "results")
    assert [st for _, st in run_task(task, opts)] == ["ok"]
    (path,) = leaderboard.rebuild(opts.results, tmp_path / "lb")
    df = leaderboard.read(path)
    assert df["acc_mean"].notna().all() and df[[c.name for c in metric_columns()]].isna().all().all()
    assert pd.api.types.is_bool_dtype(df["nc_rank_limited"])
