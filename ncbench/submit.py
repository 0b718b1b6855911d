"""``ncbench submit``: validate a backbone, run it on the leaderboard tasks, add its rows.

The backbone is validated on a dummy batch first (shape, finite values, eval-mode determinism), so a
broken submission fails in seconds with a message naming the spec. A submission that is not a registered
ncbench backbone is untrusted: its validation, pretraining and feature extraction run in a sandbox process
(``ncbench.sandbox``) under the run options' ``timeout_s`` and ``memory_gb``. With ``smoke`` the tiny
``glyphs-smoke`` task runs first, into a scratch folder, so a submitter sees problems in a minute before
the real tasks start. Before anything runs, :func:`plan` says per task how many units will run and about how
long that takes (the median recorded wall time per s of the task's rows). ``--source-classes`` / ``--seeds``
submit part of the grid: such a model is listed apart, unranked, in the ranked view until its grid is
complete, and submitting again runs only the missing units. The submission's rows are added by rebuilding each
task's leaderboard from the result files as soon as that task has run, so existing rows are never rewritten by
hand.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ncbench import leaderboard, sandbox
from ncbench.analysis import is_analysis_file
from ncbench.verify import is_verification_file
from ncbench.backbones import build_backbone
from ncbench.names import check_name as check_name_rule
from ncbench.results import Status, bind_model_name
from ncbench.run import is_finished, run_task
from ncbench.tasks import find_task
from ncbench.unit import RunOptions, plan_units

log = logging.getLogger(__name__)

SMOKE_TASK = "glyphs-smoke"


class SubmitError(ValueError):
    """A submission that cannot run as asked (a name taken by another backbone, no task to run)."""


@dataclass(frozen=True)
class Submission:
    """What is submitted: the backbone ``spec`` (registered name, ``module:callable`` or ``file.py[:callable]``)
    with its ``backbone_options``, under the leaderboard name ``name``, on ``tasks`` (default: every task
    with a leaderboard CSV), after the ``glyphs-smoke`` task when ``smoke``. ``replace``: the name may hold
    results of another configuration, which are removed (otherwise such a name is refused)."""

    spec: str
    name: str
    backbone_options: dict[str, Any] = field(default_factory=dict)
    tasks: list[str] | None = None
    smoke: bool = False
    replace: bool = False

    def __post_init__(self) -> None:
        check_name_rule(self.name, "--name")  # the name becomes a results folder and leaderboard cells


@dataclass(frozen=True)
class SubmitOutcome:
    """failed: checkpoint names of the units that failed (their rows say why); smoke_failed: the smoke run
    failed, so nothing else ran; leaderboards: the CSVs rebuilt; results: where the result files are."""

    failed: list[str]
    smoke_failed: bool
    leaderboards: list[Path]
    results: Path


def leaderboard_tasks(leaderboards_dir: Path) -> list[str]:
    """Tasks that have a leaderboard CSV (``<task>-analysis.csv`` and ``<task>-verified.csv`` files are not
    leaderboards)."""
    return sorted(p.stem for p in Path(leaderboards_dir).glob("*.csv")
                  if not is_analysis_file(p) and not is_verification_file(p))


def check_name(name: str, spec: str, leaderboards_dir: Path, tasks: list[str]) -> None:
    """Refuse a model name already used on a leaderboard by another backbone spec."""
    for task in tasks:
        path = Path(leaderboards_dir) / f"{task}.csv"
        if not path.exists():
            continue
        df = leaderboard.read(path)
        used = set(df.loc[df["model"] == name, "backbone"].dropna())
        if used - {spec}:
            raise SubmitError(f"--name: {name!r} is already on {path} for backbone {sorted(used)[0]!r}; "
                              "choose another name")


def validate(spec: str, options: dict[str, Any], opts: RunOptions) -> None:
    """Build ``spec`` and check it on a dummy batch (in its sandbox process when untrusted); raises
    BackboneError naming the spec."""
    if sandbox.is_trusted(spec) or opts.isolate is False:  # registered, or --trust-backbone
        build_backbone(spec, **options)
    else:
        sandbox.check_backbone(spec, options, workdir_parent=Path(opts.out), timeout_s=opts.timeout_s,
                               memory_gb=opts.memory_gb)


@dataclass(frozen=True)
class PlanLine:
    """One task of a submission's plan: units to run and already finished, and the estimated wall time
    (seconds, one process) from the task's recorded rows, or None when it has none for these s."""

    task: str
    to_run: int
    finished: int
    source_classes: list[int]
    seeds: list[int]
    estimate_s: float | None

    def __str__(self) -> str:
        est = (f"about {self.estimate_s / 60:.0f} min" if self.estimate_s is not None and self.estimate_s >= 90
               else f"about {self.estimate_s:.0f} s" if self.estimate_s is not None else "no estimate (no recorded rows)")
        return (f"plan: {self.task}: {self.to_run} units to run (s = {', '.join(map(str, self.source_classes))} × "
                f"seed {', '.join(map(str, self.seeds))}), {self.finished} finished; {est}, from the median "
                "recorded wall time per s of the task's rows (one process)")


def _recorded_unit_times(leaderboards_dir: Path, task: str) -> dict[int, float]:
    """Median recorded wall time (s) of one unit per source-class count, from the task's leaderboard CSV."""
    path = Path(leaderboards_dir) / f"{task}.csv"
    if not path.is_file():
        return {}
    df = leaderboard.read(path)
    units = df[df["status"].eq(Status.OK.value)].drop_duplicates(["model", "source_classes", "seed"])
    return {int(k): float(v) for k, v in units.groupby("source_classes")["wall_time_s"].median().dropna().items()}


def plan(sub: Submission, opts: RunOptions, leaderboards_dir: Path) -> list[PlanLine]:
    """What :func:`submit` will run, per task, with an estimate from the task's recorded wall times."""
    opts = dataclasses.replace(opts, backbone=sub.spec, backbone_options=sub.backbone_options, model=sub.name)
    lines = []
    for name in sub.tasks or leaderboard_tasks(leaderboards_dir):
        task = find_task(name)
        units = plan_units(task, opts)
        todo = [u for u in units if not is_finished(u, opts)]
        times = _recorded_unit_times(leaderboards_dir, task.name)
        known = all(u.source_classes in times for u in todo)
        lines.append(PlanLine(task.name, len(todo), len(units) - len(todo), sorted({u.source_classes for u in units}),
                              sorted({u.seed for u in units}),
                              sum(times[u.source_classes] for u in todo) if known and times else None))
    return lines


def _failed_units(statuses) -> list[str]:
    return [u.checkpoint_name for u, st in statuses if st != Status.OK]


def submit(sub: Submission, opts: RunOptions, leaderboards_dir: Path) -> SubmitOutcome:
    """Validate and run a submission; ``opts`` gives the folders, data root and sandbox limits (its backbone
    and model are set from ``sub``). Every task file is validated, and the name checked against the
    leaderboards, before anything runs."""
    validate(sub.spec, sub.backbone_options, opts)
    names = sub.tasks or leaderboard_tasks(leaderboards_dir)
    if not names:
        raise SubmitError(f"--tasks: no tasks given and no leaderboard CSV in {leaderboards_dir}")
    tasks = [find_task(n) for n in names]
    check_name(sub.name, sub.spec, leaderboards_dir, [t.name for t in tasks])
    opts = dataclasses.replace(opts, backbone=sub.spec, backbone_options=sub.backbone_options, model=sub.name)
    for task in tasks:  # a name stands for one configuration (model hash), checked before anything runs
        bind_model_name(opts.results, plan_units(task, opts)[0].key(), replace=sub.replace)
    if sub.smoke:
        scratch = Path(opts.out) / "smoke"
        smoke = dataclasses.replace(opts, out=scratch, results=scratch / "results")
        failed = _failed_units(run_task(find_task(SMOKE_TASK), smoke))
        if failed:
            return SubmitOutcome(failed, True, [], smoke.results)
        log.info("smoke test passed")
    failed, written = [], []
    for task in tasks:  # each task's leaderboard is rebuilt as soon as its units ran: its rows land task by task
        failed += _failed_units(run_task(task, opts))
        written += leaderboard.rebuild(opts.results, leaderboards_dir, [task.name],
                                       canons={task.name: leaderboard.canon(task, opts.data_root)})
    return SubmitOutcome(failed, False, written, Path(opts.results))
