"""Executors: a grid run through submitit (its LocalExecutor: the Slurm code path, subprocesses instead of
sbatch) or a local process pool gives the leaderboard of the serial run; a killed job loses only its unit,
and submitting again runs only that unit; a preempted job requeues and resumes from its last epoch."""

import os
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import board, options

from ncbench import executor
from ncbench.cli import main
from ncbench.executor import ExecutorError, execute, submitit_parameters
from ncbench.runtime import default_workers
from ncbench.results import Status, result_path
from ncbench.unit import RunOptions, plan_units
from ncbench.tasks import SlurmOptions, TaskError, load_task

pytest.importorskip("submitit")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Every process of every executor trains with one torch thread, so all runs give the same bytes."""
    monkeypatch.setenv("NCBENCH_THREADS", "1")


def spy_submit(monkeypatch) -> list:
    """Record the units each submission holds."""
    submitted, real = [], executor.submit

    def spy(units, *args):
        submitted.append([u.source_classes for u in units])
        return real(units, *args)

    monkeypatch.setattr(executor, "submit", spy)
    return submitted


def wait_for(path_glob, root, timeout=120):
    """Poll until a file matching ``path_glob`` exists under ``root``."""
    t0 = time.monotonic()
    while not list(root.glob(path_glob)):
        assert time.monotonic() - t0 < timeout, f"{path_glob} did not appear under {root}"
        time.sleep(0.05)


def test_submitit_runs_the_grid_and_gives_the_local_leaderboard(grid, tmp_path, monkeypatch):
    task, reference = grid
    submitted = spy_submit(monkeypatch)
    statuses = execute(task, options(tmp_path), "submitit-local")
    assert [st for _, st in statuses] == ["ok", "ok"] and submitted == [[4, 8]]  # one job array
    assert len(list((tmp_path / "runs" / "submitit").glob("*_result.pkl"))) == 2
    pd.testing.assert_frame_equal(board(tmp_path / "results"), reference)
    # a finished grid submits nothing
    assert [st for _, st in execute(task, options(tmp_path), "submitit-local")] == ["ok", "ok"]
    assert submitted == [[4, 8]]


def test_a_process_pool_gives_the_serial_leaderboard(grid, tmp_path):
    task, reference = grid
    statuses = execute(task, options(tmp_path), "local", workers=2)
    assert [st for _, st in statuses] == ["ok", "ok"]
    pd.testing.assert_frame_equal(board(tmp_path / "results"), reference)


def test_a_killed_job_loses_its_unit_and_resubmitting_runs_only_that(grid, tmp_path, monkeypatch):
    task, reference = grid
    opts = options(tmp_path)
    units = plan_units(task, opts)
    jobs = executor.submit(units, task, opts, SlurmOptions(), "local")
    wait_for("runs/checkpoints/*-s8-*/resume/state.json", tmp_path)  # s = 8 is pretraining: kill it
    jobs[1].cancel()
    assert executor.wait(jobs, units) == [Status.OK, Status.LOST]
    assert not result_path(opts.results, units[1].key()).exists()

    submitted = spy_submit(monkeypatch)
    statuses = execute(task, opts, "submitit-local")
    assert submitted == [[8]] and [st for _, st in statuses] == ["ok", "ok"]
    log = "".join(p.read_text() for p in (tmp_path / "runs" / "submitit").glob("*_log.err"))
    assert "resuming" in log  # from the killed job's last epoch
    pd.testing.assert_frame_equal(board(tmp_path / "results"), reference)  # resumed == uninterrupted


def test_a_preempted_job_requeues_and_resumes_from_its_last_epoch(grid, tmp_path):
    task, reference = grid
    opts = options(tmp_path)
    units = plan_units(task, opts)[1:]  # s = 8
    (job,) = executor.submit(units, task, opts, SlurmOptions(), "local")
    wait_for("runs/checkpoints/*-s8-*/resume/state.json", tmp_path)
    # the signal Slurm sends the job's task before preemption or the time limit (submitit's USR2); the
    # job's own process is submitit's local controller, which restarts the task when it asks to be requeued
    controller = job._process.pid
    (task_pid,) = map(int, Path(f"/proc/{controller}/task/{controller}/children").read_text().split())
    os.kill(task_pid, signal.SIGUSR2)
    assert executor.wait([job], units) == ["ok"]
    log = job.paths.stderr.read_text()
    assert "requeued; it resumes from its last epoch checkpoint" in log and "resuming" in log
    pd.testing.assert_frame_equal(board(tmp_path / "results"), reference[reference["source_classes"] == 8]
                                  .reset_index(drop=True))


def test_missing_submitit_gives_a_one_line_install_hint_and_exit_2(grid, tmp_path, monkeypatch, capsys):
    task, _ = grid
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    assert main(["run", task.path, "--executor", "slurm", "--out", str(tmp_path), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'ncbench[slurm]'" in err
    assert not (tmp_path / "results").exists()


def test_slurm_options_from_task_and_cli(tiny_task_file, tmp_path, capsys):
    task = load_task(tiny_task_file(slurm={"partition": "gpu", "gpus": 2, "time_min": 30}))
    opts = task.slurm.override(cpus=8, partition=None, max_parallel=4)
    assert opts == SlurmOptions(partition="gpu", gpus=2, time_min=30, cpus=8, max_parallel=4)
    params = submitit_parameters(opts, task)
    assert params["slurm_partition"] == "gpu" and params["tasks_per_node"] == 2 and params["gpus_per_node"] == 2
    assert params["timeout_min"] == 30 and params["cpus_per_task"] == 8 and params["slurm_array_parallelism"] == 4
    assert "mem_gb" not in params and "slurm_account" not in params
    # where a unit runs is not part of what it computes: the same config hash, so the same result file
    plain = load_task(tiny_task_file())
    assert [u.config_hash for u in plan_units(task, RunOptions())] == [u.config_hash for u in plan_units(plain, RunOptions())]

    with pytest.raises(TaskError) as e:
        load_task(tiny_task_file(slurm={"gpus": -1, "partitoin": "gpu"}))
    assert any("slurm.partitoin: unknown field" in p for p in e.value.problems)
    assert any("slurm.gpus (--gpus) must be an integer >= 0, got -1" in p for p in e.value.problems)
    assert main(["run", task.path, "--executor", "slurm", "--time-min", "0", "--out", str(tmp_path),
                 "--results", str(tmp_path / "results")]) == 2
    assert "slurm.time_min (--time-min) must be an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(ExecutorError, match="executor must be one of"):
        execute(task, RunOptions(out=tmp_path), "kubernetes")
    with pytest.raises(ExecutorError, match="workers must be a positive integer"):
        execute(task, RunOptions(out=tmp_path), "local", workers=0)


@pytest.mark.parametrize("units, cpus, workers", [(10, 16, 4), (2, 16, 2), (10, 2, 1), (1, 64, 1), (3, 7, 1)])
def test_default_workers_share_the_cpus_four_threads_each(units, cpus, workers):
    assert default_workers(units, cpus) == workers


def test_a_unit_with_two_gpus_trains_as_two_submitit_tasks_with_ddp(grid, tmp_path):
    """``gpus: 2`` gives the unit's job two tasks that form a process group; on this CPU-only machine they
    train on gloo, as they would on NCCL with GPUs."""
    task, _ = grid
    opts = options(tmp_path)
    units = plan_units(task, opts)[:1]  # s = 4
    (job,) = executor.submit(units, task, opts, SlurmOptions(gpus=2, cpus=1), "local")
    assert executor.wait([job], units) == ["ok"]
    rec = board(tmp_path / "results")
    assert (rec["world_size"] == 2).all() and (rec["status"] == "ok").all() and len(rec) == 6
    assert "DistributedDataParallel on 2 processes (cpu)" in job.paths.stderr.read_text()
