"""Determinism: the same task, backbone and seed give bit-identical leaderboard numbers in separate folders;
every row names its episode set (``episodes_hash``), and compare never pairs rows of different episode sets.

The two runs here share a process; across processes the same holds and is asserted by the slow tests of
test_interruption.py (killed vs clean run) and test_concurrency.py (`run` vs `submit` of one backbone).
"""

import csv

import pytest

from ncbench import leaderboard
from ncbench.cli import main
from ncbench.compare import compare
from ncbench.results import iter_results
from ncbench.run import run_task
from ncbench.unit import RunOptions
from ncbench.tasks import load_task

PROVENANCE_THAT_DIFFERS = ["date", "wall_time_s"]


def run_into(task_file, root):
    """Run the task into ``root`` (runs/, results/, lb/); return the leaderboard CSV path."""
    statuses = run_task(load_task(task_file), RunOptions(out=root / "runs", results=root / "results"))
    assert [st for _, st in statuses] == ["ok"]
    (path,) = leaderboard.rebuild(root / "results", root / "lb")
    return path


def without(path, columns: list[str]) -> list[list[str]]:
    """The cells of a CSV file, as written (text), with ``columns`` removed."""
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    keep = [i for i, name in enumerate(lines[0]) if name not in columns]
    return [[cells[i] for i in keep] for cells in lines]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs of the one-unit tiny task: a and a2 identical, b on another episode seed."""
    from conftest import tiny_task_dict
    import yaml

    root = tmp_path_factory.mktemp("determinism")
    same, other = root / "same.yaml", root / "other.yaml"
    same.write_text(yaml.safe_dump(tiny_task_dict(source_classes=[4])))
    episodes = {**tiny_task_dict()["episodes"], "seed": 1}
    other.write_text(yaml.safe_dump(tiny_task_dict(source_classes=[4], episodes=episodes)))
    return {name: (run_into(task, root / name), root / name / "results")
            for name, task in (("a", same), ("a2", same), ("b", other))}


def test_same_task_backbone_seed_give_bit_identical_numbers(runs):
    (a, results_a), (a2, results_a2) = runs["a"], runs["a2"]
    # the CSV cells are equal, character for character, once the two columns that differ by nature are removed
    assert without(a, PROVENANCE_THAT_DIFFERS) == without(a2, PROVENANCE_THAT_DIFFERS)
    df = leaderboard.read(a)
    assert len(df) == 3 * 2 and df["acc_mean"].notna().all() and df["checkpoint_sha256"].notna().all()
    # the raw results too: every per-episode accuracy and every metric, to the last bit
    [(_, rec)], [(_, rec2)] = list(iter_results(results_a)), list(iter_results(results_a2))
    for part in ("unit", "source", "target", "layers", "episodes", "training_curve"):
        assert getattr(rec, part) == getattr(rec2, part), part
    assert rec.provenance.checkpoint_sha256 == rec2.provenance.checkpoint_sha256


def test_every_row_carries_the_hash_of_its_episode_set(runs):
    (a, results_a), (b, _) = runs["a"], runs["b"]
    df_a, df_b = leaderboard.read(a), leaderboard.read(b)
    for df in (df_a, df_b):
        assert df["episodes_hash"].notna().all() and df["episodes_hash"].str.fullmatch(r"[0-9a-f]{16}").all()
        assert (df.groupby("shots")["episodes_hash"].nunique() == 1).all()  # one episode set per shots
    (_, rec), = iter_results(results_a)
    assert dict(zip(df_a["shots"].astype(str), df_a["episodes_hash"])) == rec.provenance.episodes
    assert set(df_a["episodes_hash"]).isdisjoint(df_b["episodes_hash"])  # another episode seed, other hashes


def test_compare_pairs_identical_runs_exactly(runs):
    (a, results_a), (a2, results_a2) = runs["a"], runs["a2"]
    out = compare(a, a2, results_dirs=[results_a, results_a2])
    assert out["status"].eq("both").all() and out["same_episodes"].all()
    assert out["test"].eq("paired").all() and (out["acc_mean_delta"] == 0).all()
    assert out["significant"].eq(False).all()


def test_compare_never_pairs_rows_of_different_episode_sets_and_flags_them(runs, capsys):
    (a, results_a), (b, results_b) = runs["a"], runs["b"]
    out = compare(a, b, results_dirs=[results_a, results_b])
    assert len(out) == 3 * 2 and out["status"].eq("both").all()
    assert out["same_episodes"].eq(False).all()
    assert out["test"].eq("ci").all()  # the CIs only: per-episode differences of other episodes mean nothing
    assert (out["episodes_hash_a"] != out["episodes_hash_b"]).all()

    assert main(["compare", str(a), str(b), "--results", str(results_a), str(results_b)]) == 0
    printed = capsys.readouterr().out
    table = printed.split("\n\n")[0].splitlines()
    assert table[0].split()[-1] == "episodes" and all(line.split()[-1] == "differ" for line in table[1:])
    assert "0 paired, 6 from CIs; 6 on different episodes" in printed
