"""`ncbench report`: series values, PNGs and the HTML page on synthetic results, missing data skipped."""

import math
import re
import shutil

import pytest

from ncbench import leaderboard
from ncbench.cli import main
from ncbench.report import (accuracy_vs_source_classes, cdnv_vs_source_classes, layer_series, load_records,
                            make_report, training_series)
from test_compare import make_leaderboard, make_record  # the synthetic-record helper (tests/ is on sys.path)

TASK = "glyphs"
LAYERS = ["stage1", "stage2", "penultimate"]


def acc_of(model, s, seed, head, shots):
    """A distinct, hand-checkable accuracy per row."""
    bonus = (0.1 if head == "ncc" else 0) + (0.1 if model == "m2" else 0)
    return round(0.3 + 0.01 * s + 0.05 * seed + 0.02 * shots + bonus, 6)


def unit_record(model, s, seed, curve=True):
    episodes = {(h, k): [acc_of(model, s, seed, h, k)] * 4 for h in ("ridge", "ncc") for k in (1, 5)}
    layers = [{"layer": name, "variant": v, "ncc_error": 0.5 / (i + 1) / s + 0.01 * seed, "cdnv": (3 - i) / s + seed}
              for v in ("flat", "pooled") for i, name in enumerate(LAYERS)]
    training = [{"epoch": e, "train_acc": 0.5 + 0.1 * e, "nc1": 10.0 / (e + 1) / s + seed, "nc4": 0.0}
                for e in range(4)] if curve else []
    return make_record(model, s, seed, episodes, target_cdnv=1.0 / s + 0.1 * seed, layers=layers,
                       training_curve=training)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """leaderboards/glyphs.csv + leaderboards/results: m1 (with training curves) and m2 (without), s in
    {5, 20}, seeds {0, 1}, heads ridge/ncc, 1 and 5 shots, plus one failed unit of m2."""
    root = tmp_path_factory.mktemp("report") / "leaderboards"
    records = [unit_record(m, s, seed, curve=(m == "m1")) for m in ("m1", "m2") for s in (5, 20) for seed in (0, 1)]
    make_leaderboard(root, records + [make_record("m2", 50, 0, status="failed")])
    return root


def test_accuracy_series_is_mean_and_std_over_seeds(tree):
    df = leaderboard.read(tree / f"{TASK}.csv")
    acc = accuracy_vs_source_classes(df)
    assert len(acc) == 2 * 2 * 2 * 2  # models x heads x shots x source-class counts; the failed unit is ignored
    r = acc[(acc["model"] == "m1") & (acc["head"] == "ridge") & (acc["shots"] == 1) & (acc["source_classes"] == 5)]
    seeds = [0.3 + 0.05 + 0.02, 0.3 + 0.05 + 0.05 + 0.02]  # s = 5 adds 0.05, seed 1 adds 0.05
    assert r["acc_mean"].item() == pytest.approx(sum(seeds) / 2)
    assert r["acc_mean_std"].item() == pytest.approx(abs(seeds[1] - seeds[0]) / math.sqrt(2))
    assert r["n_seeds"].item() == 2

    cd = cdnv_vs_source_classes(df)
    assert list(cd["source_classes"]) == [5, 20, 5, 20] and list(cd["n_seeds"]) == [2] * 4
    assert cd.loc[cd["source_classes"] == 20, "target_cdnv"].iloc[0] == pytest.approx(1 / 20 + 0.05)

    one_seed = accuracy_vs_source_classes(df[df["seed"].eq(0)])
    assert one_seed["acc_mean_std"].isna().all() and (one_seed["n_seeds"] == 1).all()


def test_layer_and_training_series(tree):
    df = leaderboard.read(tree / f"{TASK}.csv")
    records = load_records(df, tree / "results")
    assert len(records) == 8  # one per finished unit, though each has four leaderboard rows

    layers = layer_series(records)
    r = layers[(layers["model"] == "m1") & (layers["variant"] == "pooled") & (layers["source_classes"] == 20)]
    assert list(r["layer"]) == LAYERS and list(r["depth"]) == [1, 2, 3]
    assert r["ncc_error"].tolist() == pytest.approx([0.5 / (i + 1) / 20 + 0.005 for i in range(3)])
    assert r["cdnv"].tolist() == pytest.approx([(3 - i) / 20 + 0.5 for i in range(3)])

    curves = training_series(records)
    assert set(curves["model"]) == {"m1"} and set(curves["metric"]) == {"train_acc", "nc1", "nc4"}
    nc1 = curves[(curves["metric"] == "nc1") & (curves["source_classes"] == 5)]
    assert nc1["epoch"].tolist() == [0, 1, 2, 3]
    assert nc1["value"].tolist() == pytest.approx([10 / (e + 1) / 5 + 0.5 for e in range(4)])

    # the same checkpoint evaluated into two result files counts once
    assert len(training_series(records + records[:1])) == len(curves)


def test_report_writes_pngs_and_html_referencing_them(tree, tmp_path):
    out = tmp_path / "report"
    html_path = make_report(tree, tree / "results", out)
    assert html_path == out / "index.html"
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {f"{TASK}-accuracy.png", f"{TASK}-target-cdnv.png", f"{TASK}-m1-layers.png", f"{TASK}-m2-layers.png",
                    f"{TASK}-m1-training.png"}
    for p in pngs:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = html_path.read_text()
    assert set(re.findall(r'<img src="([^"]+)"', text)) == pngs
    assert "m2: no training curve in the result files" in text  # the skipped plot is noted on the page
    assert text.count("<tr") == 1 + 8 * 4 + 1  # header, 8 units x (2 heads x 2 shots), the failed unit
    assert "out of memory" in text and "acc_mean ↑" in text and "target_cdnv ↓" in text


def test_missing_result_files_skip_plots_without_crashing(tree, tmp_path, caplog):
    lb = tmp_path / "lb"
    lb.mkdir()
    shutil.copy(tree / f"{TASK}.csv", lb)
    (lb / "diff.csv").write_text("model,acc_mean_delta\nm1,0.1\n")  # not a leaderboard: left out, logged
    with caplog.at_level("INFO", logger="ncbench.report"):
        html_path = make_report(lb, tmp_path / "no-results", tmp_path / "out")
    assert "diff.csv: missing leaderboard columns" in caplog.text and 'id="diff"' not in html_path.read_text()
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {f"{TASK}-accuracy.png", f"{TASK}-target-cdnv.png"}
    assert "no result files found" in caplog.text and "no result files found" in html_path.read_text()


def test_only_failed_units_give_a_page_without_plots(tmp_path):
    make_leaderboard(tmp_path / "lb", [make_record("m", 5, 0, status="failed")])
    html_path = make_report(tmp_path / "lb", tmp_path / "lb" / "results", tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.png"))
    assert "no finished rows with an accuracy" in html_path.read_text()


def test_cli_report_and_unknown_task(tmp_path, capsys):
    make_leaderboard(tmp_path / "lb", [make_record("m", 5, 0, {("ridge", 1): [0.5, 0.7]})])
    args = ["report", "--leaderboards", str(tmp_path / "lb"), "--results", str(tmp_path / "lb" / "results"),
            "--out", str(tmp_path)]
    assert main(args + ["--task", TASK]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report" / "index.html")
    assert main(args + ["--task", "glyph"]) == 2
    assert "task(s) ['glyph']: no leaderboard CSV" in capsys.readouterr().err
