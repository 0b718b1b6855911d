"""`ncbench compare`: deltas and ranks on small hand-made leaderboards, paired vs CI significance, errors."""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ncbench import leaderboard
from ncbench.cli import main
from ncbench.compare import compare, format_table, write_csv
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
