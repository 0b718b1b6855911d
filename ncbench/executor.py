"""Where a task's units run: this machine (``local``) or a Slurm cluster (``slurm``, through submitit).

Every executor runs the same function on each unit, :func:`ncbench.run.run_one`, which writes the unit's
result file; units that already have an ``ok`` result file are not submitted at all. So running or
submitting a grid twice only runs what is missing, results from any number of workers and jobs meet in
the result folder, and ``ncbench leaderboard`` merges them (one row per unit, whoever ran it).

* ``local``: the units in a process pool sized to the machine (``workers``; one worker runs them in
  this process, one after the other).
* ``slurm``: one Slurm job array, one array task per unit, submitted with submitit (the optional extra
  ``ncbench[slurm]``). A unit with ``gpus`` > 1 runs as that many Slurm tasks that pretrain it together
  with DistributedDataParallel. A job that is preempted or reaches its time limit is requeued by
  submitit (``UnitJob.checkpoint``) and resumes pretraining from its last epoch checkpoint.
* ``submitit-local``: the same submitit path with submitit's ``LocalExecutor`` (subprocesses on this
  machine instead of ``sbatch``): a dry run of a Slurm submission without a cluster.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ncbench import distributed
from ncbench.runtime import (THREADS_ENV, available_cpus, default_workers, prepare_process_env, set_threads,
                             shell_env_defaults)
from ncbench.results import Status
from ncbench.run import is_finished, run_one, run_task
from ncbench.tasks import SlurmOptions, Task
from ncbench.unit import RunOptions, Unit, plan_units

log = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm", "submitit-local")
INSTALL_HINT = "pip install 'ncbench[slurm]'"


class ExecutorError(ValueError):
    """Bad executor options, or submitit missing (exit code 2)."""


def submitit_parameters(slurm: SlurmOptions, task: Task) -> dict[str, Any]:
    """``AutoExecutor.update_parameters`` keywords for one unit's job (``slurm_*`` ones are ignored by the
    local executor)."""
    params: dict[str, Any] = {"name": f"ncbench-{task.name}", "timeout_min": slurm.time_min, "nodes": 1,
                              "tasks_per_node": max(1, slurm.gpus), "gpus_per_node": slurm.gpus,
                              "cpus_per_task": slurm.cpus, "slurm_array_parallelism": slurm.max_parallel}
    if slurm.mem_gb is not None:
        params["mem_gb"] = slurm.mem_gb
    # the job script applies the environment rules (OMP_WAIT_POLICY) itself, also where sbatch does not
    # export the submitting environment; a value set in the job's environment is kept
    params["slurm_setup"] = shell_env_defaults()
    for name in ("partition", "account", "qos", "constraint"):
        if getattr(slurm, name) is not None:
            params[f"slurm_{name}"] = getattr(slurm, name)
    return params


def import_submitit():
    """submitit, or an :class:`ExecutorError` with the one-line install hint."""
    try:
        import submitit  # lazy: an optional dependency (the extra ncbench[slurm])
    except ImportError:
        raise ExecutorError(f"the slurm executors need submitit, which is not installed: {INSTALL_HINT}") from None
    return submitit


# ----------------------------------------------------------------------------------------------- local
def _log_to_stderr(level: int) -> None:
    """Log as the CLI does, with the process id: a worker's or a job's log is its stderr."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def _init_worker(threads: int, log_level: int) -> None:
    os.environ.setdefault(THREADS_ENV, str(threads))  # a user's NCBENCH_THREADS wins; pretraining reads it
    set_threads()                                     # and the rest of the unit uses the same
    _log_to_stderr(log_level)


def _run_pool(units: list[Unit], opts: RunOptions, workers: int) -> list[Status]:
    threads = max(1, available_cpus() // workers)
    prepare_process_env()  # the workers inherit it and read it when they import torch (this process may have already)
    log.info("running %d units in %d worker processes (%s torch threads each)", len(units), workers,
             os.environ.get(THREADS_ENV, threads))
    statuses = [Status.LOST] * len(units)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_init_worker,
                                                initargs=(threads, logging.getLogger().getEffectiveLevel())) as pool:
        futures = {pool.submit(run_one, unit, opts): i for i, unit in enumerate(units)}
        for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="units", unit="unit",
                           disable=None):
            i = futures[future]
            try:
                statuses[i] = future.result()
            except concurrent.futures.process.BrokenProcessPool as e:  # a worker was killed: the unit stays lost
                log.error("unit %s: its worker process died (%s)", units[i].checkpoint_name, e)
    return statuses


# --------------------------------------------------------------------------------------------- submitit
class UnitJob:
    """What one Slurm array task runs: one unit. submitit calls ``checkpoint`` when the job is preempted or
    reaches its time limit and requeues what it returns: the same unit, which then resumes pretraining from
    its last epoch checkpoint (``ncbench.pretrain``) and skips nothing it has not finished."""

    def __init__(self, opts: RunOptions):
        self.opts = opts

    def __call__(self, unit: Unit) -> Status:
        submitit = import_submitit()
        _log_to_stderr(logging.INFO)
        if submitit.JobEnvironment().num_tasks > 1:  # one task per GPU: a DDP process group
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        with distributed.session():
            return run_one(unit, self.opts)

    def checkpoint(self, unit: Unit):
        submitit = import_submitit()
        log.info("unit %s: requeued; it resumes from its last epoch checkpoint", unit.checkpoint_name)
        return submitit.helpers.DelayedSubmission(UnitJob(self.opts), unit)


def submit(units: list[Unit], task: Task, opts: RunOptions, slurm: SlurmOptions, cluster: str) -> list:
    """Submit ``units`` as one job array (cluster ``"slurm"`` or ``"local"``); returns submitit jobs in order."""
    submitit = import_submitit()
    prepare_process_env()  # inherited by submitit's local subprocesses and by sbatch's exported environment
    executor = submitit.AutoExecutor(folder=Path(opts.out) / "submitit", cluster=cluster)
    executor.update_parameters(**submitit_parameters(slurm, task))
    jobs = executor.map_array(UnitJob(opts), units)
    log.info("submitted %d units of %s as %s job(s) %s", len(units), task.name, cluster,
             ", ".join(sorted({str(j.job_id).split("_")[0] for j in jobs})))
    return jobs


def wait(jobs: list, units: list[Unit]) -> list[Status]:
    """Each job's status; a job that ended without one (killed, cancelled, failed to start) is ``lost``."""
    submitit = import_submitit()
    index = {id(job): i for i, job in enumerate(jobs)}
    statuses = [Status.LOST] * len(jobs)
    for job in tqdm(submitit.helpers.as_completed(jobs, poll_frequency=2), total=len(jobs), desc="jobs", unit="job",
                    disable=None):
        i = index[id(job)]
        try:
            statuses[i] = job.results()[0]  # rank 0's: the process that wrote the result
        except Exception as e:  # submitit's UncompletedJobError / FailedJobError: the job itself broke
            log.error("unit %s: job %s ended without a result (%s; log: %s)", units[i].checkpoint_name, job.job_id,
                      str(e).splitlines()[0] if str(e) else type(e).__name__, job.paths.stderr)
    return statuses


# ------------------------------------------------------------------------------------------------ entry
def execute(task: Task, opts: RunOptions, executor: str = "local", *, workers: int | None = None,
            slurm: SlurmOptions | None = None, wait_for_jobs: bool = True) -> list[tuple[Unit, Status]]:
    """Run the task's units that are not finished on ``executor``; return (unit, status) for every unit of
    the grid, finished ones included. Statuses: ``ok``, ``failed`` (the unit raised; its result file says
    why), ``lost`` (its process or job died before writing a result: run again to redo it) and, with
    ``wait_for_jobs=False``, ``submitted``."""
    if executor not in EXECUTORS:
        raise ExecutorError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ExecutorError(f"workers must be a positive integer, got {workers!r}")
    if executor != "local":
        import_submitit()  # before any work: a missing extra is a usage error
    if distributed.place().world_size > 1:  # launched by torchrun: every process runs every unit, in step
        if executor != "local" or (workers or 1) > 1:
            raise ExecutorError("under torchrun the units run one after the other in the launched processes: "
                                "use the local executor with one worker")
        return run_task(task, opts)
    units = plan_units(task, opts)
    todo = [u for u in units if not is_finished(u, opts)]
    log.info("%s: %d units, %d finished, %d to run (%s executor)", task.name, len(units), len(units) - len(todo),
             len(todo), executor)
    if not todo:
        return [(u, Status.OK) for u in units]
    if executor == "local":
        workers = workers or default_workers(len(todo))
        if workers == 1:
            return run_task(task, opts)
        statuses = _run_pool(todo, opts, workers)
    else:
        if workers is not None:
            raise ExecutorError("workers applies to the local executor; Slurm runs max_parallel units at once")
        jobs = submit(todo, task, opts, slurm or task.slurm,
                      "slurm" if executor == "slurm" else "local")
        statuses = wait(jobs, todo) if wait_for_jobs else [Status.SUBMITTED] * len(todo)
    status_of = {u.checkpoint_name: st for u, st in zip(todo, statuses)}
    return [(u, status_of.get(u.checkpoint_name, Status.OK)) for u in units]
