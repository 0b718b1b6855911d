"""A real Slurm cluster: a tiny grid submitted through ``--executor slurm`` as a job array, merged by
``ncbench leaderboard``, and a requeued job that resumes. Needs a cluster that answers ``sinfo`` with a
``debug`` partition: ``bash tests/slurm/cluster.sh start`` (root) brings up a single-node one, as
``.ci/run`` does. Without one these tests skip, unless ``NCBENCH_REQUIRE_SLURM`` is set (CI sets it when it
started the cluster), when they fail."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import board, options

from ncbench import executor
from ncbench.tasks import SlurmOptions
from ncbench.unit import plan_units

pytestmark = pytest.mark.slow
CLUSTER = Path(__file__).resolve().parent / "slurm" / "cluster.sh"
PARTITION = "debug"


@pytest.fixture(scope="module", autouse=True)
def cluster():
    pytest.importorskip("submitit")
    up = subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True).returncode == 0
    if not up:
        if os.environ.get("NCBENCH_REQUIRE_SLURM"):
            pytest.fail("NCBENCH_REQUIRE_SLURM is set but no Slurm cluster answers (tests/slurm/cluster.sh status)")
        pytest.skip("no Slurm cluster answers here; `bash tests/slurm/cluster.sh start` (root) brings one up")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("NCBENCH_THREADS", "1")  # exported to the jobs: they train like the reference


def wait_until(condition, what: str, timeout: float = 600) -> None:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.5)


def ncbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ncbench", *args], capture_output=True, text=True, timeout=900)


def test_a_grid_submitted_to_slurm_merges_into_the_local_leaderboard(grid, tmp_path):
    task, reference = grid
    run = ["run", task.path, "--executor", "slurm", "--partition", PARTITION, "--cpus", "1", "--time-min", "15",
           "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
           "--leaderboards", str(tmp_path / "boards")]
    done = ncbench(*run, "--no-wait")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "submitted 2 of 2 units" in done.stdout and "as slurm job(s)" in done.stderr
    wait_until(lambda: len(list((tmp_path / "results").rglob("*.json"))) == 2, "the two result files")

    merged = ncbench("leaderboard", "--task", "tiny", "--results", str(tmp_path / "results"),
                     "--leaderboards", str(tmp_path / "boards"))
    assert merged.returncode == 0, merged.stderr[-3000:]
    pd.testing.assert_frame_equal(board(tmp_path / "results"), reference)
    assert len(pd.read_csv(tmp_path / "boards" / "tiny.csv")) == len(reference)

    again = ncbench(*run)  # waits; nothing is missing, so nothing is submitted
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 finished, 0 to run" in again.stderr and "as slurm job(s)" not in again.stderr


def test_a_requeued_slurm_job_resumes_from_its_last_epoch(grid, tmp_path):
    task, reference = grid
    opts = options(tmp_path)
    units = plan_units(task, opts)[1:]  # s = 8
    (job,) = executor.submit(units, task, opts, SlurmOptions(partition=PARTITION, cpus=1, time_min=15), "slurm")
    wait_until(lambda: list(tmp_path.glob("runs/checkpoints/*-s8-*/resume/state.json")), "an epoch checkpoint")
    requeue = subprocess.run(["scontrol", "requeue", str(job.job_id)], capture_output=True, text=True)
    assert requeue.returncode == 0, requeue.stderr
    assert executor.wait([job], units) == ["ok"]
    assert "resuming" in job.paths.stderr.read_text()
    pd.testing.assert_frame_equal(board(tmp_path / "results"),
                                  reference[reference["source_classes"] == 8].reset_index(drop=True))
