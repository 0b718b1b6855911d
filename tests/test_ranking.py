"""The ranked view (`leaderboards/<task>.md`, ncbench.ranking): headline score and its std over seeds, ranks,
models with an incomplete grid listed apart, byte-stable output, and the README's generated glyphs table."""

import fnmatch
import re
import shutil
from pathlib import Path

import pytest

from ncbench import leaderboard, ranking
from ncbench.cli import main
from ncbench.ranking import Grid, ranked_view
from ncbench.tasks import find_task
from test_compare import make_leaderboard, make_record  # the synthetic-record helper (tests/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
LEADERBOARDS = ROOT / "leaderboards"
COMMITTED = sorted(p for p in LEADERBOARDS.glob("*.csv")
                   if not p.name.endswith(("-analysis.csv", "-verified.csv")))  # derived tables beside each board
TOY = "toy"  # no task file: the grid is the rows' source classes and seeds


def unit(model, s, seed, acc, *, task=TOY, nc1=1.0, version=1, **kw):
    """A finished unit whose ridge 5-shot accuracy is ``acc`` on both of its episodes (plus a 1-shot row)."""
    rec = make_record(model, s, seed, {("ridge", 1): [0.2, 0.4], ("ridge", 5): [acc, acc]}, task=task, nc1=nc1, **kw)
    rec["unit"]["task_version"] = version
    return rec


def toy_records():
    """s ∈ {5, 20} × seeds {0, 1, 2}. a: per-seed scores 0.65, 0.66, 0.67; b: 0.7 everywhere (nc1 = 1 + seed);
    c: the same as a (a tie); d: lacks (20, 2); e: (5, 1) failed; f: ridge 1-shot rows only."""
    recs = []
    for s in (5, 20):
        for seed in (0, 1, 2):
            acc_a = 0.6 + 0.01 * seed + (0.1 if s == 20 else 0.0)
            recs += [unit("a", s, seed, acc_a), unit("b", s, seed, 0.7, nc1=1.0 + seed), unit("c", s, seed, acc_a)]
            if (s, seed) != (20, 2):
                recs.append(unit("d", s, seed, 0.9))
            recs.append(make_record("e", s, seed, status="failed", task=TOY) if (s, seed) == (5, 1)
                        else unit("e", s, seed, 0.9))
            recs.append(make_record("f", s, seed, {("ridge", 1): [0.9, 0.9]}, task=TOY))
    return recs


@pytest.fixture
def toy(tmp_path):
    return make_leaderboard(tmp_path / "lb", toy_records())


def test_ranks_by_headline_mean_with_std_over_seeds(toy):
    view = ranked_view(leaderboard.read(toy), TOY)
    assert view.grid == Grid((5, 20), (0, 1, 2), None, "the leaderboard rows")
    assert [(e.rank, e.model) for e in view.ranked] == [(1, "b"), (2, "a"), (2, "c")]  # a tie shares the rank
    b, a = view.ranked[0], view.ranked[1]
    assert b.score == pytest.approx(0.7) and b.score_std == pytest.approx(0.0, abs=1e-12)
    assert a.score == pytest.approx(0.66) and a.score_std == pytest.approx(0.01)  # std of 0.65, 0.66, 0.67 (ddof 1)
    assert b.columns["cdnv_train"] == pytest.approx(4.0)  # 2·nc1 = 2, 4, 6 over the seeds
    assert b.columns["source_test_acc"] == pytest.approx(0.9) and b.columns["effective_depth"] == 3
    assert view.columns == ["source_test_acc", "target_ncc_acc", "cdnv_train", "target_cdnv", "effective_depth"]


def test_incomplete_grid_is_listed_apart_unranked(toy):
    view = ranked_view(leaderboard.read(toy), TOY)
    apart = {e.model: e for e in view.unranked}
    assert sorted(apart) == ["d", "e", "f"] and all(e.rank is None and e.score is None for e in apart.values())
    assert apart["d"].missing == ((20, 2),) and apart["d"].done == 5
    assert apart["e"].failed == ((5, 1),) and apart["e"].missing == ()
    assert apart["f"].done == 0 and len(apart["f"].missing) == 6  # no ridge 5-shot row: nothing counts
    text = toy.with_suffix(".md").read_text()
    assert "| d | 5 of 6 | s=20 seed 2 | – | – |" in text and "| e | 5 of 6 | – | s=5 seed 1 | – |" in text
    # d and e score 0.9 on every unit they have, above b, but are not ranked
    assert "| 1 | b | 0.7000 | 0.0000 | 3 | 0.9 | 0.7 | 4 | 0.5 | 3 |" in text
    assert "| 2 | a | 0.6600 | 0.0100 | 3 |" in text and "| 2 | c | 0.6600 | 0.0100 | 3 |" in text


def test_grid_comes_from_the_task_file(tmp_path):
    """glyphs: every s and seed of tasks/glyphs.yaml; units of another task version or outside the grid do
    not count."""
    task = find_task("glyphs")
    v = task.version
    recs = [unit(m, s, seed, 0.5, task="glyphs", version=v) for m in ("full", "old") for s in task.source_classes
            for seed in task.seeds]
    extra_seed = max(task.seeds) + 1
    recs += [unit("full", task.source_classes[0], extra_seed, 0.99, task="glyphs", version=v),  # outside the grid
             unit("part", task.source_classes[0], task.seeds[0], 0.5, task="glyphs", version=v)]
    for r in recs:
        if r["unit"]["model"] == "old" and r["unit"]["source_classes"] == task.source_classes[-1]:
            r["unit"]["task_version"] = task.version + 1
    view = ranked_view(leaderboard.read(make_leaderboard(tmp_path, recs)), "glyphs")
    assert view.grid == Grid(tuple(task.source_classes), tuple(task.seeds), task.version, "tasks/glyphs.yaml")
    assert [(e.model, e.score) for e in view.ranked] == [("full", pytest.approx(0.5))]
    apart = {e.model: e for e in view.unranked}
    assert apart["old"].stale == tuple((task.source_classes[-1], seed) for seed in task.seeds)
    assert apart["part"].done == 1 and len(apart["part"].missing) == len(view.grid.units) - 1


def test_invalid_task_file_falls_back_to_the_rows(toy, tmp_path, monkeypatch, caplog):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / f"{TOY}.yaml").write_text("name: [unclosed\n")
    monkeypatch.setenv("NCBENCH_TASKS", str(tasks))
    view = ranked_view(leaderboard.read(toy), TOY)
    assert view.grid == Grid((5, 20), (0, 1, 2), None, "the leaderboard rows") and view.ranked[0].model == "b"
    assert "invalid task file" in caplog.text and "toy.yaml" in caplog.text


def test_markdown_is_byte_stable(tmp_path):
    """Two rebuilds from the same results (in another folder, with other dates) give the same bytes."""
    recs = toy_records()
    first = make_leaderboard(tmp_path / "one", recs).with_suffix(".md").read_bytes()
    for r in recs:
        r["provenance"]["date"] = "2030-05-05T00:00:00+00:00"
    again = make_leaderboard(tmp_path / "two", list(reversed(recs))).with_suffix(".md").read_bytes()
    assert first == again and b"2030" not in again and b"2026" not in again
    assert first.decode().startswith("# toy: ranked view\n\nGenerated by `ncbench leaderboard` from `toy.csv`")


@pytest.mark.parametrize("csv", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_committed_ranked_view_rebuilds_byte_for_byte(csv, tmp_path):
    verified = LEADERBOARDS / f"{csv.stem}-verified.csv"  # the view shows `ncbench verify`'s marks too
    if verified.is_file():
        shutil.copy(verified, tmp_path / verified.name)
    (rebuilt,) = leaderboard.rebuild(LEADERBOARDS / "results", tmp_path, [csv.stem])
    assert rebuilt.with_suffix(".md").read_bytes() == csv.with_suffix(".md").read_bytes(), (
        f"leaderboards/{csv.stem}.md is stale: run `ncbench leaderboard --task {csv.stem} --readme README.md`")


def test_readme_glyphs_table_is_current():
    blocks = ranking.blocks_in((ROOT / "README.md").read_text())
    assert "glyphs" in blocks, "README.md lost its ranked-view markers for glyphs"
    view = ranked_view(leaderboard.read(LEADERBOARDS / "glyphs.csv"), "glyphs")
    assert blocks["glyphs"] == ranking.readme_block(view), (
        "the glyphs table of README.md is stale: run `ncbench leaderboard --readme README.md`")


def test_cli_refreshes_marked_readme_blocks_only(toy, tmp_path, capsys):
    start, end = ranking.markers(TOY)
    readme = tmp_path / "README.md"
    readme.write_text(f"# intro\n\n{start}\nold table\n{end}\n\ntail\n")
    results = toy.parent / "results"
    argv = ["leaderboard", "--results", str(results), "--leaderboards", str(tmp_path / "out"), "--readme", str(readme)]
    assert main(argv) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# intro\n\n") and text.endswith(f"{end}\n\ntail\n")
    assert ranking.blocks_in(text)[TOY] == ranking.readme_block(ranked_view(leaderboard.read(toy), TOY))
    assert not ranking.update_readme(readme, [ranked_view(leaderboard.read(toy), TOY)])  # idempotent
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert main(argv[:-1] + [str(plain)]) == 0 and plain.read_text() == "no markers\n"
    assert main(argv[:-1] + [str(tmp_path / "missing.md")]) == 2
    assert "--readme" in capsys.readouterr().err


def test_shown_columns_compare_across_source_class_counts():
    """Every column of the view is one leaderboards/README.md lists as comparable across s."""
    text = (LEADERBOARDS / "README.md").read_text()
    bullet = re.search(r"\*\*comparable across s\*\*:(.*?)\n- \*\*only at equal s", text, flags=re.S).group(1)
    names = re.findall(r"`([\w*]+)`", bullet)
    for column in ranking.COMPARABLE:
        assert column in leaderboard.columns() and any(fnmatch.fnmatch(column, n) for n in names), column
