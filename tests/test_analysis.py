"""`ncbench analyze` / ncbench.analysis: rank correlations between source collapse and target transfer on
synthetic results with planted relations, the three scopes, degenerate groups, the bootstrap and the CSV."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ncbench import analysis, leaderboard
from ncbench.cli import main
from test_compare import make_leaderboard, make_record  # the synthetic-record helper (tests/ is on sys.path)

TASK = "glyphs"
MODELS = ("m0", "m1", "m2")
S = (5, 20, 80)
SEEDS = (0, 1)


def acc_of(model: str, s: int, seed: int) -> float:
    """A distinct accuracy per unit: rises with the model index, with s and with the seed."""
    return round(0.3 + 0.03 * int(model[1:]) + 0.002 * s + 0.013 * seed, 6)


def noise(model: str, s: int, seed: int) -> float:
    """A value independent of the accuracy (seeded, per unit)."""
    return float(np.random.default_rng([int(model[1:]), s, seed, 7]).uniform(0.1, 1.0))


def unit_record(model, s, seed, *, nc1=None):
    acc = acc_of(model, s, seed)
    episodes = {("ridge", 1): [acc - 0.01, acc + 0.01], ("ridge", 5): [acc + 0.1] * 2, ("ncc", 1): [acc - 0.05] * 2}
    rec = make_record(model, s, seed, episodes, target_cdnv=1.0 - acc)
    rec["source"] = {
        "ncc_test_acc": acc,  # planted: monotone increasing in the accuracy
        "cdnv_train": 1.0 / acc,  # planted: monotone decreasing (more collapse, better transfer)
        "cdnv_test": noise(model, s, seed),  # planted: independent
        "nc1": (1.0 - acc) * s ** 2 if nc1 is None else nc1,  # monotone within an s, dominated by s across s
        "effective_depth": 3,  # constant: no correlation defined
        "strong_test_collapse": (1.0 - acc) * s,  # NC1-type: compared at equal s only
    }
    rec["target"]["ncc_acc"] = None
    return rec


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """3 models x 3 s x 2 seeds with planted relations, one model (m9) with only two units, one failed unit."""
    root = tmp_path_factory.mktemp("analysis") / "lb"
    records = [unit_record(m, s, seed) for m in MODELS for s in S for seed in SEEDS]
    records += [unit_record("m9", 5, seed) for seed in SEEDS] + [make_record("m8", 5, 0, status="failed")]
    path = make_leaderboard(root, records)
    return root, leaderboard.read(path)


def row(table, scope, group, measure, outcome):
    r = table[table["scope"].eq(scope) & table["group"].eq(group) & table["measure"].eq(measure)
              & table["outcome"].eq(outcome)]
    assert len(r) == 1, r
    return r.iloc[0]


@pytest.fixture(scope="module")
def table(board):
    return analysis.analyze(board[1])


def test_unit_table_has_one_row_per_finished_unit(board):
    units = analysis.unit_table(board[1])
    assert len(units) == 3 * 3 * 2 + 2 and "m8" not in set(units["model"])
    assert analysis.outcomes(board[1]) == ["acc:ncc:1shot", "acc:ridge:1shot", "acc:ridge:5shot", "target_cdnv"]
    u = units[units["model"].eq("m1") & units["source_classes"].eq(20) & units["seed"].eq(1)].iloc[0]
    assert u["acc:ridge:1shot"] == pytest.approx(acc_of("m1", 20, 1))
    assert u["acc:ridge:5shot"] == pytest.approx(acc_of("m1", 20, 1) + 0.1)
    assert u["cdnv_train"] == pytest.approx(1 / acc_of("m1", 20, 1))


def test_planted_monotone_relation_gives_correlation_one(table):
    for outcome in ("acc:ridge:1shot", "acc:ridge:5shot", "acc:ncc:1shot"):
        r = row(table, "all", "all", "ncc_test_acc", outcome)
        assert r["n"] == 20 and r["more_collapse"] == "higher"
        for stat in ("spearman", "spearman_lo", "spearman_hi", "kendall", "kendall_lo", "kendall_hi"):
            assert r[stat] == pytest.approx(1.0), stat
        r = row(table, "all", "all", "cdnv_train", outcome)
        assert r["more_collapse"] == "lower"
        assert (r["spearman"], r["kendall"], r["spearman_hi"], r["kendall_lo"]) == pytest.approx((-1, -1, -1, -1))
    r = row(table, "all", "all", "ncc_test_acc", "target_cdnv")  # target CDNV = 1 - accuracy
    assert (r["spearman"], r["kendall"]) == pytest.approx((-1, -1))


def test_planted_independent_relation_gives_an_interval_containing_zero(table, board):
    units = analysis.unit_table(board[1])
    r = row(table, "all", "all", "cdnv_test", "acc:ridge:1shot")
    assert r["spearman"] == pytest.approx(stats.spearmanr(units["cdnv_test"], units["acc:ridge:1shot"]).statistic)
    assert r["kendall"] == pytest.approx(stats.kendalltau(units["cdnv_test"], units["acc:ridge:1shot"]).statistic)
    assert abs(r["spearman"]) < 0.5
    assert r["spearman_lo"] < 0 < r["spearman_hi"] and r["kendall_lo"] < 0 < r["kendall_hi"]
    assert r["spearman_lo"] < r["spearman"] < r["spearman_hi"]


def test_within_model_scope(table, board):
    units = analysis.unit_table(board[1])
    m1 = units[units["model"].eq("m1")]
    r = row(table, "model", "m1", "cdnv_test", "acc:ridge:5shot")
    assert r["n"] == 6
    assert r["spearman"] == pytest.approx(stats.spearmanr(m1["cdnv_test"], m1["acc:ridge:5shot"]).statistic)
    assert row(table, "model", "m1", "ncc_test_acc", "acc:ridge:5shot")["spearman"] == pytest.approx(1.0)
    assert set(table.loc[table["scope"].eq("model"), "group"]) == {"m0", "m1", "m2", "m9"}


def test_fixed_s_scope_and_raw_nc1_only_there(table, board):
    units = analysis.unit_table(board[1])
    at20 = units[units["source_classes"].eq(20)]
    r = row(table, "source_classes", "20", "cdnv_test", "acc:ridge:1shot")
    assert r["n"] == 6  # 3 models x 2 seeds
    assert r["kendall"] == pytest.approx(stats.kendalltau(at20["cdnv_test"], at20["acc:ridge:1shot"]).statistic)
    r = row(table, "source_classes", "20", "nc1", "acc:ridge:1shot")
    assert (r["spearman"], r["kendall"], r["spearman_lo"], r["kendall_hi"]) == pytest.approx((-1, -1, -1, -1))
    for measure in ("nc1", "strong_test_collapse"):
        assert set(table.loc[table["measure"].eq(measure), "scope"]) == {"source_classes"}
    assert row(table, "source_classes", "80", "strong_test_collapse", "acc:ridge:5shot")["spearman"] == pytest.approx(-1)
    assert list(dict.fromkeys(table.loc[table["scope"].eq("source_classes"), "group"])) == ["5", "20", "80"]


def test_small_groups_and_constant_measures_give_empty_statistics(table):
    r = row(table, "model", "m9", "ncc_test_acc", "acc:ridge:1shot")
    assert r["n"] == 2 and r[analysis.STATS[1:]].isna().all()
    r = row(table, "all", "all", "effective_depth", "acc:ridge:1shot")
    assert r["n"] == 20 and r[analysis.STATS[1:]].isna().all()
    # measures no unit has are left out, not rows of NaN
    assert "nc1_quotient" not in set(table["measure"]) and "target_ncc_acc" not in set(table["outcome"])


def test_correlate_edge_cases():
    assert analysis.correlate([1, 2], [3, 4])["n"] == 2
    out = analysis.correlate([1, 2, np.nan, 4], [1, 2, 3, np.nan])
    assert out["n"] == 2 and np.isnan(out["spearman"])
    out = analysis.correlate([1, 2, 3], [2, 2, 2])
    assert out["n"] == 3 and np.isnan(out["spearman"]) and np.isnan(out["kendall_lo"])
    out = analysis.correlate([1, 2, 3, 4], [1, 3, 2, 4], key="k")
    assert out["spearman"] == pytest.approx(0.8) and out["kendall"] == pytest.approx(2 / 3)
    x, y = np.arange(12.0), np.arange(12.0) + np.random.default_rng(0).normal(0, 3, 12)
    out = analysis.correlate(x, y, key="k")
    assert out == analysis.correlate(x, y, key="k")  # seeded
    other = analysis.correlate(x, y, key="other")  # each row its own stream: other resamples, same point values
    assert other["spearman"] == out["spearman"] and other["spearman_lo"] != out["spearman_lo"]


def test_resampled_statistics_equal_scipy_on_materialised_resamples():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, 15).astype(float)  # ties
    y = x + rng.integers(0, 3, 15)
    idx = rng.integers(0, 15, (40, 15))
    counts = np.zeros((40, 15), dtype=np.int64)
    np.add.at(counts, (np.arange(40)[:, None], idx), 1)
    rho, tau = analysis.resampled(x, y, counts)
    assert rho == pytest.approx([stats.spearmanr(x[i], y[i]).statistic for i in idx])
    assert tau == pytest.approx([stats.kendalltau(x[i], y[i]).statistic for i in idx])
    const = np.zeros((1, 15), dtype=np.int64)
    const[0, 0] = 15  # one unit drawn 15 times: constant on both sides
    assert np.isnan(analysis.resampled(x, y, const)).all()


def test_rebuild_writes_the_analysis_byte_for_byte(board, tmp_path):
    root, df = board
    committed = analysis.analysis_path(root, TASK)
    text = committed.read_text()
    assert text.splitlines()[0] == ",".join(analysis.COLUMNS)
    leaderboard.rebuild(root / "results", tmp_path, [TASK])
    assert analysis.analysis_path(tmp_path, TASK).read_bytes() == committed.read_bytes()
    back = analysis.read_analysis(committed)
    assert back["n"].dtype.kind == "i" and back["spearman"].dtype.kind == "f"  # numbers stored as numbers
    assert "nan" not in text.lower()  # missing = empty cell
    first = text.splitlines()[1].split(",")
    assert first[:5] == ["all", "all", "cdnv_train", "acc:ncc:1shot", "lower"] and first[6] == "-1"


def test_analysis_file_is_not_a_leaderboard_task(board, tmp_path):
    from ncbench.report import _tasks
    from ncbench.submit import leaderboard_tasks

    root, _ = board
    assert leaderboard_tasks(root) == [TASK] and _tasks(root, None) == [TASK]


def test_cli_analyze(board, tmp_path, capsys):
    root, _ = board
    lb = tmp_path / "lb"
    lb.mkdir()
    (lb / f"{TASK}.csv").write_bytes((root / f"{TASK}.csv").read_bytes())
    assert main(["analyze", TASK, "--leaderboards", str(lb)]) == 0
    out = capsys.readouterr().out
    assert (lb / f"{TASK}-analysis.csv").read_bytes() == analysis.analysis_path(root, TASK).read_bytes()
    line = next(ln for ln in out.splitlines() if "ncc_test_acc" in ln and "acc:ridge:5shot" in ln)
    assert "+1.00 [+1.00, +1.00]" in line and " 20 " in line
    assert main(["analyze", TASK, "--leaderboards", str(lb), "--scope", "source_classes"]) == 0
    assert "nc1" in capsys.readouterr().out
    assert main(["analyze", "glyph", "--leaderboards", str(lb)]) == 2
    assert "no leaderboard CSV for task 'glyph'" in capsys.readouterr().err
