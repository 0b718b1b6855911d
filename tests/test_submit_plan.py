"""`ncbench submit` with a plan: the units and an estimate before anything runs, part of the grid with
--source-classes / --seeds (unranked until complete), and re-submitting runs only the missing units."""

from ncbench.cli import main


def test_submit_part_of_the_grid_with_a_plan(tiny_task_file, tmp_path, capsys):
    task = tiny_task_file()
    store = ["--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
             "--leaderboards", str(tmp_path / "lb")]
    assert main(["run", str(task), "--seeds", "0", *store]) == 0            # tiny-conv: the recorded rows
    capsys.readouterr()
    argv = ["submit", "tiny-mlp", "--name", "mine", "--tasks", str(task), "--source-classes", "4", "--seeds", "0",
            *store]
    assert main(argv) == 0
    out = capsys.readouterr().out
    plan = next(line for line in out.splitlines() if line.startswith("plan: tiny:"))
    assert "1 units to run (s = 4 × seed 0), 0 finished; about " in plan and "no estimate" not in plan
    view = (tmp_path / "lb" / "tiny.md").read_text()
    ranked, apart = view.split("Not ranked", 1) if "Not ranked" in view else (view, "")
    assert "| mine |" not in ranked and "mine" in apart                    # partial: listed apart, unranked
    assert main(argv) == 0                                                 # again: nothing left to run
    assert "0 units to run (s = 4 × seed 0), 1 finished" in capsys.readouterr().out
