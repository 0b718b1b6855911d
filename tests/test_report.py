"""`ncbench report`: series values, PNGs and the HTML page on synthetic results, missing data skipped."""

import importlib.util
import math
import re
import shutil
from pathlib import Path

import pytest

from ncbench import leaderboard
from ncbench.cli import main
from ncbench.report import (accuracy_vs_source_classes, cdnv_vs_source_classes, file_part, layer_series,
                            load_records, make_report, training_series)
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
    assert nc1["fraction"].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])  # epoch / last epoch

    # the same checkpoint evaluated into two result files counts once
    assert len(training_series(records + records[:1])) == len(curves)


SCATTERS = {f"{TASK}-scatter-{file_part('acc:ridge:5shot')}.png", f"{TASK}-scatter-target_cdnv.png"}


def test_report_writes_pngs_and_html_referencing_them(tree, tmp_path):
    out = tmp_path / "report"
    html_path = make_report(tree, tree / "results", out)
    assert html_path == out / "index.html"
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {f"{TASK}-accuracy.png", f"{TASK}-target-cdnv.png", f"{TASK}-m1-layers.png", f"{TASK}-m2-layers.png",
                    f"{TASK}-m1-training.png"} | SCATTERS
    for p in pngs:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = html_path.read_text()
    assert set(re.findall(r'<img src="([^"]+)"', text)) == pngs
    assert "m2: no training curve in the result files" in text  # the skipped plot is noted on the page
    board = text[text.index("<summary>Leaderboard glyphs.csv"):]
    assert board.count("<tr") == 1 + 8 * 4 + 1  # header, 8 units x (2 heads x 2 shots), the failed unit
    assert "out of memory" in text and "acc_mean ↑" in text and "target_cdnv ↓" in text


def test_summary_table_at_the_top(tree, tmp_path):
    text = make_report(tree, tree / "results", tmp_path / "out").read_text()
    assert text.index("<table id=summary>") < text.index("<table id=answer>") < text.index('<h2 id="glyphs">')
    summary = text[text.index("<table id=summary>"):text.index("</table>")]
    rows = re.findall(r"<tr><td>(.*?)</td></tr>", summary)
    assert len(rows) == 2  # one per (task, model)
    cells = [re.sub(r"<[^>]+>", "", c) for c in rows[1].split("</td><td")]
    cells = [c.split(">", 1)[-1] for c in cells]
    # m2: 4 finished units, 1 failed; ridge 5-shot at s=5: seeds 0.3+0.05+0.1+0.1 (+0.05 for seed 1)
    assert cells[:6] == ["glyphs", "m2", "4", "1", "5 20", "acc:ridge:5shot"]
    assert cells[6] == f"{0.575:.4f} ± {0.05 / math.sqrt(2):.4f}" and cells[7].startswith(f"{0.725:.4f} ± ")


def test_analysis_section(tree, tmp_path):
    text = make_report(tree, tree / "results", tmp_path / "out").read_text()
    section = text[text.index('id="glyphs-analysis"'):text.index("<summary>Leaderboard glyphs.csv")]
    assert "does collapse predict transfer?" in section and "2000 resamples" in section
    # cdnv_train = 2 nc1 = 2 for every unit of the fixture: constant, so no correlation; n = 8 units
    assert "<td>cdnv_train (lower)</td>" in section and "– <small>n=8</small>" in section
    assert "Within each model" in section and "Across models at each s" in section
    assert all(f'src="{name}"' in section for name in SCATTERS)


def test_missing_result_files_skip_plots_without_crashing(tree, tmp_path, caplog):
    lb = tmp_path / "lb"
    lb.mkdir()
    shutil.copy(tree / f"{TASK}.csv", lb)
    (lb / "diff.csv").write_text("model,acc_mean_delta\nm1,0.1\n")  # not a leaderboard: left out, logged
    with caplog.at_level("INFO", logger="ncbench.report"):
        html_path = make_report(lb, tmp_path / "no-results", tmp_path / "out")
    assert "diff.csv: missing leaderboard columns" in caplog.text and 'id="diff"' not in html_path.read_text()
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {f"{TASK}-accuracy.png", f"{TASK}-target-cdnv.png"} | SCATTERS
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


# ------------------------------------------------------------------------------------------- plot hygiene
def test_model_styles_never_collide():
    from ncbench.report import model_styles

    for n in (1, 10, 90, 91, 250):
        styles = model_styles([f"model{i}" for i in range(n)])
        assert len(set(styles.values())) == n  # no two models share both colour and marker
    styles = model_styles([f"model{i:02d}" for i in range(20)])
    ordered = [styles[f"model{i:02d}"] for i in range(20)]
    assert all(a[0] != b[0] and a[1] != b[1] for a, b in zip(ordered, ordered[1:]))  # neighbours differ in both
    assert len({c for c, _ in model_styles([f"m{i}" for i in range(250)]).values()}) == 250


def test_file_names_keep_distinct_names_apart(tmp_path):
    assert file_part("conv4-mse") == "conv4-mse" and file_part("a_b") == "a_b"
    assert file_part("a/b") != file_part("a_b") and file_part("a/b").startswith("a_b-")
    assert file_part("a b") != file_part("a/b") and "/" not in file_part("../x")
    # result files hold valid names only (ncbench.names): two that differ in one character keep two files
    records = [unit_record(m, s, 0) for m in ("a.b", "a_b") for s in (5, 20)]
    make_leaderboard(tmp_path / "lb", records)
    out = tmp_path / "out"
    text = make_report(tmp_path / "lb", tmp_path / "lb" / "results", out).read_text()
    layers = sorted(p.name for p in out.glob("*-layers.png"))
    assert len(layers) == 2 and f"{TASK}-a_b-layers.png" in layers
    assert all(f'src="{name}"' in text for name in layers)


def test_model_names_are_plain_text_not_mathtext():
    from matplotlib.figure import Figure

    from ncbench.report import plain

    ax = Figure().add_subplot()
    for name, shown in (("m$x^2$", "m$x^2$"), ("$", "$"), ("cost$5 and $6", "cost$5 and $6")):
        text = ax.text(0, 0, plain(name))
        assert text._preprocess_math(text.get_text()) == (shown, False)
    assert plain("_hidden") != "_hidden" and plain("_hidden").endswith("_hidden")  # legends skip labels with "_"


def _figures(tree):
    """Every kind of report figure, from the fixture's data, with model names that would trip mathtext."""
    from ncbench import analysis
    from ncbench.report import (_plot_accuracy, _plot_layers, _plot_scatter, _plot_target_cdnv, _plot_training,
                                model_styles)

    df = leaderboard.read(tree / f"{TASK}.csv")
    df["model"] = df["model"].astype(str).str.replace("m", "$m$_")
    styles = model_styles(df["model"])
    records = load_records(leaderboard.read(tree / f"{TASK}.csv"), tree / "results")
    units, table = analysis.unit_table(df), analysis.analyze(df, n_boot=50)
    return {"accuracy": _plot_accuracy(accuracy_vs_source_classes(df), styles, "t"),
            "target-cdnv": _plot_target_cdnv(cdnv_vs_source_classes(df), styles, "t"),
            "layers": _plot_layers(layer_series(records), "t"),
            "training": _plot_training(training_series(records), "t"),
            "scatter": _plot_scatter(units, table, "acc:ridge:5shot", styles, "t")}


def test_legends_sit_outside_the_data_and_axes_are_labelled(tree):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for kind, fig in _figures(tree).items():
        FigureCanvasAgg(fig).draw()
        renderer = fig.canvas.get_renderer()
        assert len(fig.legends) == 1, kind
        box = fig.legends[0].get_window_extent(renderer)
        axes = [ax for ax in fig.axes if ax.get_visible()]
        for ax in axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), f"{kind}: legend over an axes"
            assert ax.get_ylabel(), f"{kind}: unlabelled y axis"
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        if kind in ("accuracy", "target-cdnv", "scatter"):
            assert labels == [r"\$m\$_1", r"\$m\$_2"], kind  # every model, as plain text
        if kind == "accuracy":
            assert all(ax.get_yscale() == "linear" and ax.get_xscale() == "log" for ax in axes)
        if kind == "training":
            assert {ax.get_xlabel() for ax in axes} == {"fraction of training done"}
            scales = {ax.get_title(): ax.get_yscale() for ax in axes}
            assert scales == {"train_acc": "linear", "nc1": "log", "nc4": "linear"}  # nc4 = 0: nothing to log


def test_accuracy_band_is_the_episode_ci_of_the_seed_mean(tree):
    df = leaderboard.read(tree / f"{TASK}.csv")
    df.loc[df["seed"].eq(1), "acc_ci95"] = 0.03
    df.loc[df["seed"].eq(0), "acc_ci95"] = 0.04
    acc = accuracy_vs_source_classes(df)
    assert acc["acc_ci95"].tolist() == pytest.approx([math.sqrt(0.03 ** 2 + 0.04 ** 2) / 2] * len(acc))


# ------------------------------------------------------------------------------------------- in a browser
CHECK = Path(__file__).resolve().parents[1] / "scripts" / "check_report_browser.py"


def _browser_check():
    spec = importlib.util.spec_from_file_location("check_report_browser", CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    chromium = module.find_chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine (Debian package `chromium`): the report is not checked in a browser")
    return module, chromium


def test_report_renders_in_headless_chromium(tree, tmp_path):
    module, chromium = _browser_check()
    html_path = make_report(tree, tree / "results", tmp_path / "out")
    assert module.check_page(html_path, chromium, screenshot=tmp_path / "page.png") == []
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert module.main([str(html_path)]) == 0


def test_browser_check_fails_on_missing_images_and_console_errors(tree, tmp_path):
    module, chromium = _browser_check()
    out = tmp_path / "out"
    html_path = make_report(tree, tree / "results", out)
    (out / f"{TASK}-accuracy.png").unlink()
    page = html_path.read_text().replace("</body>", "<script>console.error('planted')</script></body>")
    html_path.write_text(page)
    problems = module.check_page(html_path, chromium)
    assert f"image did not load: {TASK}-accuracy.png" in problems and "console error: planted" in problems
    assert module.main([str(html_path)]) == 1
