"""`ncbench compare`: deltas and ranks on small hand-made leaderboards, paired vs CI significance, errors."""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ncbench import leaderboard
from ncbench.cli import main
from ncbench.compare import (compare, compare_models, format_models_table, format_table, holm, paired_t_test,
                             verdict_line, write_csv)
from ncbench.results import Result, write_result

TASK = "glyphs"


def make_record(model, source_classes, seed, episodes=None, *, task=TASK, hashes=None, status="ok", target_cdnv=0.5,
                nc1=1.0, layers=(), training_curve=()):
    """A valid result record. episodes: {(head, shots): per-episode accuracies}; hashes: {shots: digest}
    (default ``ep<shots>``); a failed record when status is "failed"."""
    unit = {"task": task, "task_version": 1, "model": model, "backbone": model, "source_classes": source_classes,
            "seed": seed, "config_hash": f"cfg{source_classes}{seed}"}
    prov = {"ncbench_version": "0.1", "git_commit": "abc", "torch_version": "2", "device": "cpu",
            "checkpoint": f"{model}.{task}-s{source_classes}-seed{seed}", "checkpoint_sha256": "f" * 64,
            "date": "2026-01-01T00:00:00+00:00", "wall_time_s": 1.0}
    if status == "failed":
        return {"schema": 1, "status": "failed", "error": "RuntimeError: out of memory", "unit": unit,
                "provenance": {**prov, "episodes": {}}}
    episodes = episodes or {}
    shots = sorted({s for _, s in episodes})
    prov["episodes"] = {str(s): (hashes or {}).get(s, f"ep{s}") for s in shots}
    eps = []
    for (head, s), accs in episodes.items():
        a = np.asarray(accs, dtype=float)
        eps.append({"head": head, "ways": 5, "shots": s, "queries": 10, "acc_mean": float(a.mean()),
                    "acc_ci95": float(1.96 * a.std(ddof=1) / math.sqrt(a.size)), "n": int(a.size),
                    "per_episode": a.tolist()})
    return {"schema": 1, "status": "ok", "error": None, "unit": unit, "provenance": prov,
            "source": {"nc1": nc1, "cdnv_train": 2 * nc1, "source_test_acc": 0.9, "effective_depth": 3},
            "target": {"cdnv": target_cdnv, "ncc_acc": 0.7}, "layers": list(layers), "episodes": eps,
            "training_curve": list(training_curve)}


def make_leaderboard(folder: Path, records) -> Path:
    """Write records under ``folder/results`` and rebuild ``folder/<task>.csv``."""
    for rec in records:
        write_result(folder / "results", Result.from_dict(rec))
    (path,) = leaderboard.rebuild(folder / "results", folder)
    return path


def row(df, model, shots=1, status="both"):
    r = df[df["model"].eq(model) & df["shots"].eq(shots) & df["status"].eq(status)]
    assert len(r) == 1, r
    return r.iloc[0]


@pytest.fixture
def pair(tmp_path):
    """A: m1 and m2 (s=5, seed 0, ridge, 1 and 5 shots) and m2 at s=10; B: m1, m2, m3 at s=5 and a failed unit."""
    a = make_leaderboard(tmp_path / "a", [
        make_record("m1", 5, 0, {("ridge", 1): [0.5, 0.7], ("ridge", 5): [0.8, 0.8]}, target_cdnv=0.50, nc1=2.0),
        make_record("m2", 5, 0, {("ridge", 1): [0.6, 0.8], ("ridge", 5): [0.9, 0.9]}, target_cdnv=0.40, nc1=1.0),
        make_record("m2", 10, 0, {("ridge", 1): [0.6, 0.6]}),
    ])
    b = make_leaderboard(tmp_path / "b", [
        make_record("m1", 5, 0, {("ridge", 1): [0.7, 0.9], ("ridge", 5): [0.8, 0.8]}, target_cdnv=0.25, nc1=1.5),
        make_record("m2", 5, 0, {("ridge", 1): [0.6, 0.8], ("ridge", 5): [0.9, 0.9]}, target_cdnv=0.40, nc1=1.0),
        make_record("m3", 5, 0, {("ridge", 1): [0.7, 0.8], ("ridge", 5): [0.8, 0.8]}),
        make_record("m4", 5, 0, status="failed"),
    ])
    return a, b


def test_deltas_ranks_and_statuses(pair):
    df = compare(*pair)
    assert sorted(df["status"]) == ["both"] * 4 + ["failed_b"] + ["only_a"] + ["only_b"] * 2
    m1 = row(df, "m1")
    assert m1["acc_mean_a"] == pytest.approx(0.6) and m1["acc_mean_b"] == pytest.approx(0.8)
    assert m1["acc_mean_delta"] == pytest.approx(0.2)
    assert m1["target_cdnv_delta"] == pytest.approx(-0.25) and m1["nc1_delta"] == pytest.approx(-0.5)
    # 1 shot: A ranks m2 (0.7) over m1 (0.6); B ranks m1 (0.8) over m3 (0.75) over m2 (0.7)
    assert (m1["rank_a"], m1["rank_b"], m1["rank_delta"]) == (2, 1, -1)
    m2 = row(df, "m2")
    assert (m2["rank_a"], m2["rank_b"], m2["rank_delta"]) == (1, 3, 2) and m2["acc_mean_delta"] == 0
    m3 = row(df, "m3", status="only_b")
    assert m3["rank_b"] == 2 and pd.isna(m3["rank_a"]) and pd.isna(m3["acc_mean_delta"]) and pd.isna(m3["test"])
    assert row(df, "m2", status="only_a")["source_classes"] == 10
    failed = df[df["status"].eq("failed_b")].iloc[0]
    assert failed["model"] == "m4" and "out of memory" in failed["error"] and pd.isna(failed["shots"])
    # 5 shots: m1 and m3 tie in B (0.8, behind m2's 0.9) and share rank 2
    assert (row(df, "m1", 5)["rank_a"], row(df, "m1", 5)["rank_b"], row(df, "m3", 5, "only_b")["rank_b"]) == (2, 2, 2)


def test_paired_test_over_the_same_episodes(tmp_path):
    rng = np.random.default_rng(0)
    acc_a = rng.uniform(0.2, 0.9, size=20)
    acc_b = acc_a + 0.02 + rng.normal(0, 0.005, size=20)
    a = make_leaderboard(tmp_path / "a", [make_record("m", 5, 0, {("ridge", 1): acc_a})])
    b = make_leaderboard(tmp_path / "b", [make_record("m", 5, 0, {("ridge", 1): acc_b})])
    r = row(compare(a, b), "m")
    d = acc_b - acc_a
    assert r["test"] == "paired" and r["same_episodes"]
    assert r["acc_delta_ci95"] == pytest.approx(1.96 * d.std(ddof=1) / math.sqrt(20), rel=1e-9)
    assert r["acc_mean_delta"] == pytest.approx(d.mean(), abs=1e-7)
    assert r["significant"]  # consistent per-episode gains...
    ci = math.hypot(r["acc_ci95_a"], r["acc_ci95_b"])
    assert abs(r["acc_mean_delta"]) < ci  # ...that the unpaired CIs would miss

    # without the per-episode data the CIs decide, and do not find it significant
    r = row(compare(a, b, results_dirs=[tmp_path / "nowhere"]), "m")
    assert r["test"] == "ci" and r["acc_delta_ci95"] == pytest.approx(ci) and not r["significant"]


def test_different_episodes_are_flagged_and_never_paired(tmp_path):
    acc = np.linspace(0.3, 0.9, 10)
    a = make_leaderboard(tmp_path / "a", [make_record("m", 5, 0, {("ridge", 1): acc})])
    b = make_leaderboard(tmp_path / "b", [make_record("m", 5, 0, {("ridge", 1): acc + 0.01}, hashes={1: "other"})])
    r = row(compare(a, b), "m")
    assert r["test"] == "ci" and r["same_episodes"] == False  # noqa: E712 (a pandas boolean scalar)
    assert r["acc_delta_ci95"] == pytest.approx(math.hypot(r["acc_ci95_a"], r["acc_ci95_b"]))
    assert not r["significant"]
    assert "1 on different episodes" in format_table(compare(a, b))


def test_result_file_of_another_run_is_not_used_for_pairing(tmp_path):
    """Both leaderboards point at the same relative result_file; with one shared results dir only A's
    numbers match that file, so B's row has no per-episode data and falls back to the CIs."""
    acc = np.linspace(0.3, 0.9, 10)
    a = make_leaderboard(tmp_path / "a", [make_record("m", 5, 0, {("ridge", 1): acc})])
    b = make_leaderboard(tmp_path / "b", [make_record("m", 5, 0, {("ridge", 1): acc + 0.05})])
    assert row(compare(a, b), "m")["test"] == "paired"
    assert row(compare(a, b, results_dirs=[tmp_path / "a" / "results"]), "m")["test"] == "ci"


def test_csv_output_has_numbers_and_empty_cells(pair, tmp_path):
    df = compare(*pair)
    path = write_csv(df, tmp_path / "diff.csv")
    back = pd.read_csv(path)
    assert back["acc_mean_delta"].dtype == float and back["rank_a"].dtype == float  # ints with empty cells
    text = path.read_text()
    assert "NaN" not in text and "nan" not in text and "<NA>" not in text
    m1 = back[(back["model"] == "m1") & (back["shots"] == 1)].iloc[0]
    assert m1["acc_mean_delta"] == pytest.approx(0.2) and m1["test"] == "paired" and m1["significant"]


def test_format_table_lists_every_section(pair):
    text = format_table(compare(*pair))
    assert "Δacc ↑" in text and "Δtarget_cdnv ↓" in text
    assert "only in A" in text and "only in B" in text and "failed units" in text and "m4" in text
    assert re.search(r"4 rows in both: \d+ significantly better in B", text)


def test_different_tasks_raise_naming_both_files(tmp_path):
    a = make_leaderboard(tmp_path / "a", [make_record("m", 5, 0, {("ridge", 1): [0.5, 0.6]})])
    b = make_leaderboard(tmp_path / "b", [make_record("m", 5, 0, {("ridge", 1): [0.5, 0.6]}, task="digits")])
    with pytest.raises(ValueError, match=rf"{re.escape(str(a))} with {re.escape(str(b))}: different tasks "
                                         r"\('glyphs' in .*, 'digits' in .*\)"):
        compare(a, b)


def test_missing_column_and_wrong_type_raise(pair, tmp_path, capsys):
    a, b = pair
    broken = tmp_path / "broken.csv"
    pd.read_csv(b).drop(columns=["acc_ci95"]).to_csv(broken, index=False)
    with pytest.raises(ValueError, match=rf"cannot compare {re.escape(str(a))} with {re.escape(str(broken))}: "
                                         rf".*missing leaderboard columns \['acc_ci95'\]"):
        compare(a, broken)
    df = pd.read_csv(b, dtype=str)
    df.loc[0, "acc_mean"] = "high"
    df.to_csv(broken, index=False)
    with pytest.raises(ValueError, match=r"column 'acc_mean': expected numbers, got 'high'"):
        compare(a, broken)
    assert main(["compare", str(a), str(broken)]) == 2
    assert "acc_mean" in capsys.readouterr().err


def test_cli_prints_and_writes(pair, tmp_path, capsys):
    out = tmp_path / "diff.csv"
    assert main(["compare", str(pair[0]), str(pair[1]), "--out", str(out)]) == 0
    assert "rank A→B" in capsys.readouterr().out
    assert len(pd.read_csv(out)) == 8


# ------------------------------------------------------------------------------------------- model vs model
HEADS_SHOTS = [("ridge", 1), ("ridge", 5), ("ncc", 1), ("ncc", 5)]
GRID_S, GRID_SEEDS, N_EPISODES = (5, 20), (0, 1, 2), 40


def base_accuracies(s, seed, head, shots):
    """Per-episode accuracies [N_EPISODES] of the reference model, distinct for every row and seed."""
    rng = np.random.default_rng([s, seed, len(head), shots])
    return rng.uniform(0.3, 0.8, size=N_EPISODES)


def model_records(model, shift=lambda s, seed, head, shots, acc: acc, seeds=GRID_SEEDS, hashes=None):
    """A complete synthetic grid for ``model``: ``shift`` maps the reference accuracies of a row to its own."""
    return [make_record(model, s, seed, {(h, k): shift(s, seed, h, k, base_accuracies(s, seed, h, k))
                                         for h, k in HEADS_SHOTS}, hashes=hashes)
            for s in GRID_S for seed in seeds]


@pytest.fixture
def planted(tmp_path):
    """One leaderboard: base; same (identical accuracies); plus5 (+0.05 on every episode); minus (−0.05 with
    a little noise); mixed (+0.1 at s=20 only)."""
    noise = np.random.default_rng(7)
    records = (model_records("base") + model_records("same")
               + model_records("plus5", lambda s, seed, h, k, acc: acc + 0.05)
               + model_records("minus", lambda s, seed, h, k, acc: acc - 0.05 + noise.normal(0, 0.01, acc.size))
               + model_records("mixed", lambda s, seed, h, k, acc: acc + (0.1 if s == 20 else 0.0)))
    return make_leaderboard(tmp_path / "lb", records)


def test_holm_matches_hand_computed_values():
    # sorted p: 0.01·4 = 0.04, 0.02·3 = 0.06, 0.03·2 = 0.06, 0.5·1 = 0.5; in input order
    np.testing.assert_allclose(holm([0.03, 0.01, 0.5, 0.02]), [0.06, 0.04, 0.5, 0.06])
    np.testing.assert_allclose(holm([0.04, 0.04]), [0.08, 0.08])
    assert holm([0.9, 0.6]).tolist() == [1.0, 1.0]  # capped at 1, monotone


def test_paired_t_test_agrees_with_scipy():
    from scipy import stats

    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.3, 0.8, 50), rng.uniform(0.3, 0.8, 50)
    mean, low, high, t, p = paired_t_test(b - a)
    ref = stats.ttest_rel(b, a)
    assert (t, p) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-10)
    half = stats.t.ppf(0.975, 49) * (b - a).std(ddof=1) / math.sqrt(50)
    assert (low, high) == pytest.approx((mean - half, mean + half), rel=1e-10)
    assert paired_t_test(np.zeros(5))[3:] == (0.0, 1.0)  # identical: no difference at all
    assert paired_t_test(np.full(5, 0.05))[4] == 0.0


def test_planted_better_model_is_better_in_every_row(planted):
    df = compare_models(planted, "base", "plus5")
    assert len(df) == len(GRID_S) * len(HEADS_SHOTS) and (df["status"] == "tested").all()
    assert (df["verdict"] == "better").all() and (df["p_holm"] < 0.05).all()
    np.testing.assert_allclose(df["delta"], 0.05, atol=1e-12)
    assert (df["n_seeds"] == 3).all() and (df["seeds"] == "0 1 2").all() and (df["n_episodes"] == N_EPISODES).all()
    assert verdict_line(df) == "plus5 better in 8, worse in 0, tied in 0 of 8 rows (Holm-adjusted paired t-test, α = 0.05)"


def test_identical_model_is_tied_and_planted_worse_is_worse(planted):
    same = compare_models(planted, "base", "same")
    assert (same["verdict"] == "tied").all() and (same["delta"] == 0).all() and (same["p_holm"] == 1).all()
    assert verdict_line(same).startswith("same better in 0, worse in 0, tied in 8 of 8 rows")
    minus = compare_models(planted, "base", "minus")
    assert (minus["verdict"] == "worse").all() and (minus["ci95_high"] < 0).all()
    # the reversed comparison reverses the verdicts
    assert (compare_models(planted, "minus", "base")["verdict"] == "better").all()


def test_delta_averages_the_per_episode_differences_over_seeds(planted):
    df = compare_models(planted, "base", "mixed")
    assert {s: set(v) for s, v in df.groupby("source_classes")["verdict"]} == {5: {"tied"}, 20: {"better"}}
    r = df[df["source_classes"].eq(20) & df["head"].eq("ncc") & df["shots"].eq(5)].iloc[0]
    a = np.mean([base_accuracies(20, seed, "ncc", 5) for seed in GRID_SEEDS], axis=0)
    assert r["acc_a"] == pytest.approx(a.mean(), abs=1e-12) and r["acc_b"] == pytest.approx(a.mean() + 0.1, abs=1e-12)
    assert r["delta"] == pytest.approx(0.1, abs=1e-12)
    assert "mixed better in 4, worse in 0, tied in 4 of 8 rows" in format_models_table(df)


def test_holm_correction_changes_a_borderline_verdict(tmp_path):
    """Row p-values around 0.02: significant alone, not after Holm over 8 rows."""
    rng = np.random.default_rng(3)
    diffs = {}

    def shift(s, seed, h, k, acc):
        d = diffs.setdefault((s, h, k), rng.normal(0, 1, N_EPISODES))
        d = (d - d.mean()) / d.std(ddof=1)  # exactly mean 0, std 1 ...
        return acc + 0.01 * (d + 2.4 / math.sqrt(N_EPISODES))  # ... then t = 2.4 over the episodes: p ≈ 0.021

    path = make_leaderboard(tmp_path / "lb", model_records("base") + model_records("nudge", shift))
    df = compare_models(path, "base", "nudge")
    assert ((df["p_value"] > 0.01) & (df["p_value"] < 0.03)).all()
    assert (df["p_holm"] > 0.05).all() and (df["verdict"] == "tied").all()


def test_seeds_rows_and_failures_one_model_lacks(tmp_path):
    records = (model_records("base") + model_records("b", lambda s, seed, h, k, acc: acc + 0.05, seeds=(0, 1))
               + [make_record("b", 5, 2, status="failed"),
                  make_record("b", 80, 0, {("ridge", 1): [0.5, 0.6]})])
    df = compare_models(make_leaderboard(tmp_path / "lb", records), "base", "b")
    tested = df[df["status"].eq("tested")]
    assert len(tested) == 8 and (tested["seeds"] == "0 1").all() and (tested["verdict"] == "better").all()
    assert df[df["status"].eq("only_b")][["source_classes", "head", "shots"]].values.tolist() == [[80, "ridge", 1]]
    failed = df[df["status"].eq("failed_b")].iloc[0]
    assert failed["source_classes"] == 5 and failed["seeds"] == "2" and "out of memory" in failed["note"]
    text = format_models_table(df)
    assert "only b (B) has" in text and "failed units" in text


def test_different_episodes_or_no_per_episode_data_are_not_tested(tmp_path):
    records = model_records("base") + model_records("b", lambda *a: a[-1] + 0.05, hashes={1: "other"})
    path = make_leaderboard(tmp_path / "lb", records)
    df = compare_models(path, "base", "b")
    assert set(df.loc[df["shots"].eq(1), "status"]) == {"untested"}
    assert df.loc[df["shots"].eq(1), "note"].str.contains("seed 0: different episodes").all()
    assert (df.loc[df["shots"].eq(5), "verdict"] == "better").all()
    nowhere = compare_models(path, "base", "b", results_dirs=[tmp_path / "nowhere"])
    assert (nowhere["status"] == "untested").all()
    assert nowhere.loc[nowhere["shots"].eq(5), "note"].eq("seed 0: no per-episode data; seed 1: no per-episode data; "
                                                          "seed 2: no per-episode data").all()
    assert verdict_line(nowhere).endswith("tied in 0 of 0 rows (Holm-adjusted paired t-test, α = 0.05)")


def test_two_files_with_model_names(tmp_path):
    a = make_leaderboard(tmp_path / "a", model_records("conv4"))
    b = make_leaderboard(tmp_path / "b", model_records("mynet", lambda *x: x[-1] + 0.05))
    df = compare_models(a, "conv4", "mynet", b)
    assert (df["verdict"] == "better").all() and (df["model_b"] == "mynet").all()
    with pytest.raises(ValueError, match=rf"model 'mynet' has no rows in {re.escape(str(a))} \(its models: conv4\)"):
        compare_models(a, "conv4", "mynet")
    with pytest.raises(ValueError, match="the same model twice"):
        compare_models(a, "conv4", "conv4")


def test_cli_models_one_file_two_files_and_out(planted, tmp_path, capsys):
    out = tmp_path / "cmp.csv"
    assert main(["compare", str(planted), "--models", "base", "plus5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "plus5 better in 8, worse in 0, tied in 0 of 8 rows (Holm-adjusted paired t-test, α = 0.05)" in text
    assert "legend:" in text and "p Holm" in text and "▲ better" in text
    back = pd.read_csv(out)
    assert all(pd.api.types.is_numeric_dtype(back[c]) for c in ("delta", "ci95_low", "p_value", "p_holm", "n_episodes"))
    np.testing.assert_allclose(back["delta"], 0.05, atol=1e-8)
    assert (back["verdict"] == "better").all() and "inf" not in out.read_text()
    assert main(["compare", str(planted), str(planted), "--model-a", "base", "--model-b", "minus"]) == 0
    assert "minus better in 0, worse in 8" in capsys.readouterr().out
    for argv, message in (([str(planted), "--models", "base", "plus5", "--out", str(planted)], "is an input leaderboard"),
                          ([str(planted)], "give the two models to compare with --models"),
                          ([str(planted), str(planted), "--model-a", "base"], "--model-a and --model-b go together"),
                          ([str(planted), "--models", "base", "nope"], "model 'nope' has no rows")):
        assert main(["compare", *argv]) == 2
        assert message in capsys.readouterr().err
    assert planted.read_text().startswith("task,model")  # --out never overwrote the input


# ------------------------------------------------------------------------------ claimed vs reproduced
def test_reproduction_within_ci_and_bit_identical(tmp_path, capsys):
    """A re-run whose accuracy moves less than the claimed CI is reproduced; one that moves more is not; an
    equal one is bit-identical. The CLI's --reproduce exits 1 unless every re-run row is within the CI."""
    rng = np.random.default_rng(0)
    claimed = rng.uniform(0.4, 0.9, 200)               # CI half-width ≈ 1.96·0.144/√200 ≈ 0.02
    records = lambda shift_m2: [make_record("m1", 5, 0, {("ridge", 1): claimed}),
                                make_record("m2", 5, 0, {("ridge", 1): np.clip(claimed + shift_m2, 0, 1)})]
    a = make_leaderboard(tmp_path / "a", records(0.0))
    near = make_leaderboard(tmp_path / "near", records(0.005))
    far = make_leaderboard(tmp_path / "far", records(0.08))
    df = compare(a, near)
    assert row(df, "m1")["bit_identical"] and row(df, "m1")["within_ci"]
    assert not row(df, "m2")["bit_identical"] and row(df, "m2")["within_ci"]
    assert not row(compare(a, far), "m2")["within_ci"]
    assert main(["compare", str(a), str(near), "--reproduce"]) == 0
    out = capsys.readouterr().out
    assert "reproduced 2/2 rows within the claimed 95 % CI (1 bit-identical: other CPU or thread count)" in out
    assert "legend: claimed = the committed row's accuracy" in out
    assert main(["compare", str(a), str(far), "--reproduce"]) == 1
    assert "reproduced 1/2 rows" in capsys.readouterr().out
