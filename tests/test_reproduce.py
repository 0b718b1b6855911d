"""`make bench`'s self-check, on glyphs-smoke: a re-run is compared with the claimed leaderboard (claimed vs
reproduced), everything is written under the given folders and no tracked file of the clone changes."""

import subprocess
from pathlib import Path

import pytest

from ncbench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout


@pytest.mark.slow
def test_a_rerun_reproduces_the_claimed_rows_and_leaves_the_clone_clean(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NCBENCH_THREADS", "1")
    before = _git_status()
    boards = {}
    for name in ("claimed", "rerun"):
        root = tmp_path / name
        args = ["run", "glyphs-smoke", "--model", "conv4", "--source-classes", "5", "--seeds", "0",
                "--out", str(root / "runs"), "--results", str(root / "results"), "--leaderboards", str(root / "lb")]
        assert main(args) == 0
        boards[name] = root / "lb" / "glyphs-smoke.csv"
    capsys.readouterr()
    code = main(["compare", str(boards["claimed"]), str(boards["rerun"]), "--reproduce",
                 "--results", str(tmp_path / "claimed" / "results"), str(tmp_path / "rerun" / "results")])
    out = capsys.readouterr().out
    # one machine, one thread count, fresh checkpoints: every row within the CI and bit-identical
    assert code == 0, out
    assert "reproduced 6/6 rows within the claimed 95 % CI (6 bit-identical)" in out  # 3 heads x 2 shots
    assert _git_status() == before
