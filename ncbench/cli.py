"""The ``ncbench`` command line: a thin layer over the library; every subcommand has ``--help``.

Exit codes: 0 success, 1 a unit or check failed while running, 2 bad usage or bad input (the message
names the file, field or argument and what was expected).

Under ``torchrun --nproc-per-node=G -m ncbench pretrain|evaluate|run ...`` every process runs the command;
they pretrain together (``ncbench.distributed``) and rank 0 alone writes results and prints.

This module alone knows argparse: each ``cmd_*`` turns its arguments into the library's typed options
(:class:`ncbench.unit.RunOptions`, :class:`ncbench.submit.Submission`, paths) and prints the outcome. The
library modules beyond the registry and the result record are imported inside the commands, so ``ncbench --help`` and the commands that need no
torch start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from ncbench import __version__
from ncbench.names import check_name
from ncbench.registry import BACKBONES, DATASETS, HEADS, METRICS
from ncbench.results import Status
from ncbench.runtime import DEFAULT_MEMORY_GB, DEFAULT_TIMEOUT_S, keep_freed_memory

log = logging.getLogger("ncbench")

EPILOG_EXAMPLES = {
    "list": "example: ncbench list datasets",
    "validate": "example: ncbench validate tasks/*.yaml",
    "pretrain": "example: ncbench pretrain glyphs --source-classes 20 --seed 0",
    "evaluate": ("examples:\n  ncbench evaluate glyphs --source-classes 20 --seed 0\n"
                 "  ncbench evaluate glyphs-smoke --checkpoint my-net/ --model my-net --source-classes 5\n"
                 "  (my-net/ holds model.safetensors and card.json; the card's format: docs/api.md)"),
    "run": ("examples:\n  ncbench run glyphs --backbone resnet12 --seeds 0 1\n"
            "  ncbench run omniglot --executor slurm --partition gpu --gpus 1 --time-min 120 --no-wait\n"
            "  torchrun --nproc-per-node=4 -m ncbench run mini-imagenet --backbone resnet12"),
    "leaderboard": "example: ncbench leaderboard --task glyphs --readme README.md",
    "compare": ("examples:\n  ncbench compare leaderboards/glyphs.csv --models conv4 mynet\n"
                "  ncbench compare leaderboards/glyphs.csv other/glyphs.csv --model-a conv4 --model-b mynet --out diff.csv\n"
                "  ncbench compare leaderboards/glyphs.csv my-results/glyphs.csv   (same models, two versions)"),
    "submit": "example: ncbench submit my_nets.py:SmallNet --name smallnet --smoke",
    "report": "example: ncbench report --out runs",
    "analyze": "examples:\n  ncbench analyze glyphs\n  ncbench analyze glyphs-to-omniglot --scope model",
    "verify": ("examples:\n  ncbench verify glyphs --model conv4 --units 2\n"
               "  ncbench verify glyphs --model conv4 --seeds 0 --all --checkpoints other/runs/checkpoints\n"
               "  ncbench verify glyphs --model mynet --all --pretrain-missing"),
}


DESCRIPTION = ("ncbench: neural collapse and few-shot transfer of pretrained backbones.\n"
               "Each command has its own help: ncbench COMMAND --help.\n"
               "Exit codes: 0 success, 1 a unit or check failed, 2 bad usage or bad input.")


class UsageError(ValueError):
    """Bad input detected by the CLI itself (exit code 2)."""


# Exit code 2: every error class of the library derives from ValueError and names the file, field or
# argument at fault; OSError covers missing files, read-only folders and full disks. ``-v`` adds the traceback.
INPUT_ERRORS = (ValueError, OSError)
# what an OSError (which names its path) means for the user, by errno
OS_ERROR_HINTS = {
    errno.ENOSPC: "the disk is full: free space, or give another --out / --results / --leaderboards folder",
    errno.ENOTDIR: "expected a folder, but a part of the path is a regular file",
    errno.EROFS: "expected a writable folder; the file system is read-only",
    errno.EACCES: "permission denied: check the permissions of that path",
}


# ------------------------------------------------------------------------------------------- commands
def _task_names() -> list[str]:
    from ncbench.taskfiles import task_files  # lazy: start-up time

    return list(task_files())


# what `ncbench list KIND` prints
LISTS: dict[str, Callable[[], list[str]]] = {
    "datasets": DATASETS.names, "backbones": BACKBONES.names, "heads": HEADS.names, "metrics": METRICS.names,
    "tasks": _task_names,
}


def cmd_list(args: argparse.Namespace) -> int:
    for name in LISTS[args.kind]():
        print(name)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from ncbench.data import DatasetError  # lazy: start-up time
    from ncbench.tasks import TaskError, check_against_data, check_base, load_task  # lazy: start-up time

    failed = 0
    for path in args.files:
        note = ""
        try:
            if Path(path).name.startswith("_"):
                check_base(path)
                print(f"{path}: ok (base file; checked with the tasks that include it)")
                continue
            task = load_task(path)
            problems = [] if args.no_data else check_against_data(task, args.data_root)
        except TaskError as e:
            problems = e.problems
        except DatasetError as e:  # a real dataset whose files are not here: only the data checks are skipped
            problems, note = [], f"; data checks skipped: {e}"
        if problems:
            failed += 1
            for p in problems:
                print(p, file=sys.stderr)
        else:
            print(f"{path}: ok (task {task.name!r} version {task.version}){note}")
    return 2 if failed else 0


def _options(pairs: list[str] | None, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` flags (values read as YAML) as a dict; UsageError naming ``flag`` on a bad pair."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag}: expected KEY=VALUE, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def _as_list(v):
    return v if v is None or isinstance(v, list) else [v]


def _model_names(names: str | list[str] | None) -> dict[str, Any]:
    """``--model``: one name (a zoo model of the task, or the name of the given backbone) or several zoo models."""
    names = _as_list(names)
    return {"model": names[0] if names and len(names) == 1 else None, "models": names if names and len(names) > 1 else None}


def _run_options(args: argparse.Namespace):
    from ncbench.unit import RunOptions  # lazy: start-up time

    return RunOptions(out=Path(args.out), results=Path(args.results), data_root=args.data_root,
                      backbone=getattr(args, "backbone", None),
                      backbone_options=_options(args.backbone_option, "--backbone-option") if getattr(
                          args, "backbone_option", None) else None,
                      **_model_names(getattr(args, "model", None)), seeds=_as_list(getattr(args, "seeds", None)),
                      source_classes=_as_list(getattr(args, "source_classes", None)),
                      force=getattr(args, "force", False),
                      checkpoint=Path(args.checkpoint) if getattr(args, "checkpoint", None) else None,
                      isolate=False if getattr(args, "trust_backbone", False) else None,
                      **{k: getattr(args, k) for k in ("timeout_s", "memory_gb") if hasattr(args, k)})


def _refuse_unisolated(units: list, opts) -> None:
    """Exit 2 (one line) before anything runs when a unit's untrusted backbone cannot be sandboxed here."""
    from ncbench.run import isolated  # lazy: start-up time
    from ncbench.sandbox import require_isolation  # lazy: start-up time

    for spec in sorted({u.backbone for u in units if isolated(u, opts)}):
        require_isolation(spec)


def _task(args: argparse.Namespace):
    """The task named by ``args.task``, with its ``--set`` overrides."""
    from ncbench.tasks import find_task, with_overrides  # lazy: start-up time

    task = find_task(args.task)
    return with_overrides(task, _options(args.set, "--set")) if getattr(args, "set", None) else task


def _single_unit(args: argparse.Namespace):
    from ncbench.unit import plan_units  # lazy: start-up time

    task = _task(args)
    opts = _run_options(args)
    units = plan_units(task, opts)
    if len(units) != 1:
        raise UsageError(f"give one --source-classes and one --seed (the task's grid has {len(units)} units)")
    _refuse_unisolated(units, opts)
    return units[0], opts


def cmd_pretrain(args: argparse.Namespace) -> int:
    from ncbench import distributed  # lazy: start-up time
    from ncbench.run import pretrain_unit  # lazy: start-up time

    unit, opts = _single_unit(args)
    path = pretrain_unit(unit, opts)
    if distributed.place().is_main:
        print(path)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ncbench import distributed, leaderboard  # lazy: start-up time
    from ncbench.results import bind_model_name, write_result  # lazy: start-up time
    from ncbench.run import pretrain_in_group, run_unit  # lazy: start-up time

    unit, opts = _single_unit(args)
    bind_model_name(opts.results, unit.key())
    if opts.checkpoint is not None:  # a given checkpoint: nothing to pretrain; its rows join the leaderboard
        if distributed.place().world_size > 1:
            raise UsageError("--checkpoint: evaluating a given checkpoint runs in one process, not under torchrun")
        print(write_result(opts.results, run_unit(unit, opts)))
        if not args.no_leaderboard:
            for path in leaderboard.rebuild(opts.results, args.leaderboards, [unit.task.name]):
                print(path)
        return 0
    if pretrain_in_group(unit, opts):  # under torchrun: pretrain together, then rank 0 evaluates
        print(write_result(opts.results, run_unit(unit, opts)))
    return 0


def _report_statuses(statuses: list, what: str) -> int:
    """Print the failed and lost units of ``statuses`` [(unit, Status)] to stderr; the exit code (0 or 1)."""
    failed = [u.checkpoint_name for u, st in statuses if st == Status.FAILED]
    lost = [u.checkpoint_name for u, st in statuses if st == Status.LOST]
    if failed:
        print(f"{len(failed)} of {len(statuses)} units failed: {', '.join(failed)} ({what})", file=sys.stderr)
    if lost:
        print(f"{len(lost)} of {len(statuses)} units were lost with their process or job, without a result: "
              f"{', '.join(lost)} (run the same command again: it runs only the missing units)", file=sys.stderr)
    return 1 if failed or lost else 0


def cmd_run(args: argparse.Namespace) -> int:
    from ncbench import distributed, leaderboard  # lazy: start-up time
    from ncbench.executor import execute  # lazy: start-up time
    from ncbench.results import bind_model_name  # lazy: start-up time
    from ncbench.unit import plan_units  # lazy: start-up time

    task = _task(args)
    opts = _run_options(args)
    units = plan_units(task, opts)
    _refuse_unisolated(units, opts)
    if distributed.place().is_main:
        for unit in {u.model: u for u in units}.values():  # each model name is bound to its configuration
            bind_model_name(opts.results, unit.key(), replace=args.replace)
    slurm = None
    if args.executor != "local":
        slurm = task.slurm.override(**{k: getattr(args, k) for k in task.slurm.fields()})
    statuses = execute(task, opts, args.executor, workers=args.workers, slurm=slurm, wait_for_jobs=not args.no_wait)
    if not distributed.place().is_main:
        return 0
    submitted = [u for u, st in statuses if st == Status.SUBMITTED]
    if submitted:
        print(f"submitted {len(submitted)} of {len(statuses)} units; when their jobs end, "
              f"`ncbench leaderboard --task {task.name}` merges the results (the log names the job ids)")
    elif not args.no_leaderboard:
        leaderboard.rebuild(opts.results, args.leaderboards, [task.name],
                            canons={task.name: leaderboard.canon(task, opts.data_root)})
    return _report_statuses(statuses, "see the error column")


def _task_args(args: argparse.Namespace) -> None:
    """``--task`` names become file names (``<leaderboards>/<task>.csv``): each must follow the name rule."""
    for name in args.task or []:
        check_name(name, "--task")


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from ncbench import leaderboard  # lazy: start-up time
    from ncbench.tasks import find_task, task_files  # lazy: start-up time

    _task_args(args)
    if args.readme is not None and not Path(args.readme).is_file():
        raise UsageError(f"--readme: {args.readme} is not a file")
    results = Path(args.results)
    names = args.task or (sorted(p.name for p in results.iterdir() if p.is_dir()) if results.is_dir() else [])
    # results of a task with a file in tasks/ are checked against it (heads, shots, episodes, config hash)
    canons = {n: leaderboard.canon(find_task(n), args.data_root) for n in names if n in task_files()}
    for path in leaderboard.rebuild(results, args.leaderboards, names, canons=canons,
                                    update_manifest=args.update_manifest,
                                    readme=Path(args.readme) if args.readme else None):
        print(path)
    return 0


def _compared_models(args: argparse.Namespace) -> tuple[str, str] | None:
    """(model A, model B) from --models or --model-a/--model-b; None for the same-model comparison of two
    files. UsageError on an inconsistent combination."""
    if args.models and (args.model_a or args.model_b):
        raise UsageError("give either --models A B or --model-a A --model-b B, not both")
    models = tuple(args.models) if args.models else (args.model_a, args.model_b)
    if models == (None, None):
        if len(args.files) == 1:
            raise UsageError(f"one leaderboard ({args.files[0]}): give the two models to compare with --models A B")
        return None
    if None in models:
        raise UsageError(f"--model-a and --model-b go together (got --model-a {models[0]}, --model-b {models[1]})")
    return models


def cmd_compare(args: argparse.Namespace) -> int:
    from ncbench.compare import (compare, compare_models, format_models_table, format_reproduction,  # lazy: start-up
                                 format_table, reproduced, write_csv)

    if len(args.files) > 2:
        raise UsageError(f"expected one or two leaderboard CSVs, got {len(args.files)}: {' '.join(args.files)}")
    files = [Path(f) for f in args.files]
    if args.out and any(Path(args.out).resolve() == f.resolve() for f in files):
        raise UsageError(f"--out {args.out}: is an input leaderboard; give another file for the comparison")
    results_dirs = [Path(d) for d in args.results] if args.results else None
    models = _compared_models(args)
    if args.reproduce and (models is not None or len(files) != 2):
        raise UsageError("--reproduce: give the claimed leaderboard CSV, then the re-run's (no --models)")
    if models is None:
        df = compare(files[0], files[1], results_dirs=results_dirs)
        print(format_reproduction(df) if args.reproduce else format_table(df))
    else:
        df = compare_models(files[0], models[0], models[1], files[-1], results_dirs=results_dirs)
        print(format_models_table(df))
    if args.out:
        print(f"wrote {write_csv(df, Path(args.out))}")
    if args.reproduce:
        return 0 if reproduced(df) else 1
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from ncbench.submit import Submission, plan, submit  # lazy: start-up time

    sub = Submission(args.spec, args.name, _options(args.backbone_option, "--backbone-option"), args.tasks, args.smoke,
                     args.replace)
    opts = _run_options(args)
    for line in plan(sub, opts, Path(args.leaderboards)):
        print(line, flush=True)
    outcome = submit(sub, opts, Path(args.leaderboards))
    if outcome.smoke_failed:
        print(f"smoke test failed for {', '.join(outcome.failed)}; errors in {outcome.results}", file=sys.stderr)
        return 1
    for path in outcome.leaderboards:
        print(path)
    if outcome.failed:
        print(f"{len(outcome.failed)} units failed: {', '.join(outcome.failed)} (their rows say why)", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ncbench.report import make_report  # lazy: start-up time

    _task_args(args)
    print(make_report(Path(args.leaderboards), Path(args.results), Path(args.out) / "report", args.task))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from ncbench import analysis, leaderboard  # lazy: start-up time

    for task in args.task:
        csv = Path(args.leaderboards) / f"{task}.csv"
        if not csv.is_file():
            raise UsageError(f"{csv}: no leaderboard CSV for task {task!r} (run `ncbench leaderboard --task {task}` "
                             f"first, or give --leaderboards)")
        path = analysis.write_analysis(task, leaderboard.read(csv), Path(args.leaderboards))
        print(analysis.format_table(analysis.read_analysis(path), args.scope))
        print(f"wrote {path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ncbench import leaderboard, verify  # lazy: start-up time

    task = _task(args)
    if args.units is not None and args.all:
        raise UsageError("give either --units N or --all, not both")
    opts = verify.VerifyOptions(
        results=Path(args.results), leaderboards=Path(args.leaderboards), out=Path(args.out),
        checkpoints=Path(args.checkpoints) if args.checkpoints else None, data_root=args.data_root,
        models=args.model, source_classes=args.source_classes, seeds=args.seeds,
        units=None if args.all else (3 if args.units is None else args.units), sample_seed=args.seed,
        fresh=not args.no_fresh,
        fresh_seed=args.fresh_seed, pretrain_missing=args.pretrain_missing,
        threads=args.threads or verify.env_threads(), isolate=False if args.trust_backbone else None,
        timeout_s=args.timeout_s, memory_gb=args.memory_gb)
    rows = verify.verify_task(task, opts, canon=leaderboard.canon(task, args.data_root))
    for line in verify.summary_lines(rows):
        print(line)
    path = verify.write(opts.leaderboards, task.name, rows)
    print(f"wrote {path}")
    view = leaderboard.refresh_view(opts.results, opts.leaderboards, task.name)
    if view is not None:
        print(f"wrote {view}")
    return 1 if verify.checks_failed(rows) else 0


# ------------------------------------------------------------------------------------------- parser
def _storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs", metavar="DIR",
                   help="folder for checkpoints, the feature cache and reports (default: runs)")
    p.add_argument("--results", default="leaderboards/results", metavar="DIR",
                   help="folder of raw result files (default: leaderboards/results)")
    p.add_argument("--leaderboards", default="leaderboards", metavar="DIR",
                   help="folder of leaderboard CSVs (default: leaderboards)")


def _limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help="wall-clock limit of an untrusted backbone's sandbox process, per job (default: %(default)g)")
    p.add_argument("--memory-gb", type=float, default=DEFAULT_MEMORY_GB, metavar="GB",
                   help="address-space limit of that process (default: %(default)g)")


def _unit_args(p: argparse.ArgumentParser, grid: bool) -> None:
    p.add_argument("task", help="task name (see `ncbench list tasks`) or path to a task YAML file")
    p.add_argument("--backbone", metavar="SPEC",
                   help="registered backbone, module:callable or file.py[:callable] (default: the task's)")
    p.add_argument("--backbone-option", action="append", metavar="KEY=VALUE", help="backbone option (repeatable)")
    p.add_argument("--model", metavar="NAME", nargs="+" if grid else None,
                   help="a model of the task's models: section (its backbone, options and pretraining overrides)"
                        + (", several may be given" if grid else "") + ", or the leaderboard name of --backbone: "
                        "lower-case letters, digits, '.', '_', '-' (default: derived from the backbone spec)")
    p.add_argument("--trust-backbone", action="store_true",
                   help="run a file / module / entry-point backbone's code in this process instead of its bubblewrap "
                        "sandbox, unisolated (needed where bubblewrap is missing, and to pretrain it with torchrun)")
    nargs = "+" if grid else None
    p.add_argument("--source-classes", type=int, nargs=nargs, metavar="S",
                   help="source-class counts (default: the task's list)" if grid
                   else "source-class count (default: the task's, when it lists one)")
    p.add_argument("--seeds" if grid else "--seed", dest="seeds", type=int, nargs="+" if grid else None,
                   metavar="N", help="pretraining seeds (default: the task's)" if grid
                   else "pretraining seed (default: the task's, when it lists one)")
    p.add_argument("--data-root", metavar="DIR", help="root folder of a real dataset (sets dataset option root)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a task field, dotted into mappings (e.g. episodes.count=100, pretrain.epochs=5; "
                        "value read as YAML; repeatable): validated like the task file and part of the rows' config "
                        "hash, so such rows are not the task's canonical ones (write them with --results elsewhere)")
    _storage(p)


SLURM_FLAGS = (("partition", str, "Slurm partition"), ("account", str, "Slurm account"), ("qos", str, "Slurm QOS"),
               ("constraint", str, "Slurm node constraint"),
               ("time-min", int, "time limit per unit, minutes (default: 240)"),
               ("gpus", int, "GPUs per unit; more than 1 trains the unit with DDP (default: 0)"),
               ("cpus", int, "CPUs (and torch threads) per process (default: 4)"),
               ("mem-gb", float, "memory per unit's job, GB"),
               ("max-parallel", int, "array tasks running at once (default: 32)"))


def _run_parser(p: argparse.ArgumentParser) -> None:
    _unit_args(p, grid=True)
    p.add_argument("--force", action="store_true", help="re-run units that already have a finished result")
    p.add_argument("--replace", action="store_true",
                   help="--model may hold results of another configuration: remove them (default: refuse the name)")
    p.add_argument("--no-leaderboard", action="store_true", help="do not rebuild the leaderboard afterwards")
    _limits(p)
    g = p.add_argument_group("executor", "where the units run (docs/scaling.md); Slurm options override the "
                                         "task file's slurm: block")
    g.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default="local",
                   help="local: a process pool on this machine (default); slurm: one Slurm job array through "
                        "submitit; submitit-local: the same submission run as local subprocesses")
    g.add_argument("--workers", type=int, metavar="N",
                   help="local worker processes (default: one per 4 CPUs, at most one per unit)")
    for name, kind, text in SLURM_FLAGS:
        g.add_argument(f"--{name}", dest=name.replace("-", "_"), type=kind, help=text,
                       metavar="N" if kind is not str else "NAME")
    g.add_argument("--no-wait", action="store_true",
                   help="submit and return (Slurm); merge later with `ncbench leaderboard`")


def _evaluate_parser(p: argparse.ArgumentParser) -> None:
    _unit_args(p, grid=False)
    p.add_argument("--checkpoint", metavar="DIR",
                   help="evaluate this checkpoint instead of pretraining: a folder written by ncbench, or holding a "
                        "safetensors file and a hand-written card.json (docs/api.md); its card gives the backbone "
                        "and, when it lists them, the default --source-classes and --seed. The rows are written "
                        "like `run`'s, with pretrained = False, and the task's leaderboard is rebuilt")
    p.add_argument("--no-leaderboard", action="store_true",
                   help="with --checkpoint: do not rebuild the leaderboard afterwards")


def _list_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=list(LISTS), help="what to list")


def _validate_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="task YAML files (a file named _*.yaml is a base: checked for known fields only)")
    p.add_argument("--no-data", action="store_true",
                   help="skip the checks that load the dataset (pool sizes, images per class)")
    p.add_argument("--data-root", metavar="DIR", help="root folder of a real dataset, for the data checks")


def _leaderboard_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", nargs="+", help="tasks to rebuild (default: every task with results)")
    p.add_argument("--readme", metavar="FILE",
                   help="also refresh the ranked tables between `<!-- ranked-view TASK ... -->` markers in FILE")
    p.add_argument("--update-manifest", action="store_true",
                   help="accept result files that differ from the leaderboard's <task>.sha256 manifest (default: "
                        "refuse, exit 2) and write the new manifest")
    p.add_argument("--data-root", metavar="DIR", help="root folder of a real dataset (to check episode digests)")
    _storage(p)


def _compare_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="CSV",
                   help="one leaderboard (with --models) or two: A.csv B.csv")
    p.add_argument("--models", nargs=2, metavar=("A", "B"),
                   help="compare model B with model A, paired on identical episodes (A from the first CSV, B from "
                        "the last); without models, two CSVs are compared row by row for the same models")
    p.add_argument("--model-a", metavar="A", help="model A, from the first CSV (with --model-b)")
    p.add_argument("--model-b", metavar="B", help="model B, from the last CSV (with --model-a)")
    p.add_argument("--out", metavar="CSV", help="also write the comparison as CSV (not an input file)")
    p.add_argument("--reproduce", action="store_true",
                   help="A is the claimed (committed) leaderboard, B a re-run of it: print claimed vs reproduced per "
                        "row and exit 1 unless every claimed row is reproduced within its 95 %% CI")
    p.add_argument("--results", nargs="+", metavar="DIR",
                   help="result folders holding per-episode data for paired tests (default: next to each CSV)")


def _submit_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="backbone: registered name, module:callable or file.py[:callable]")
    p.add_argument("--name", required=True,
                   help="leaderboard name of the submission: lower-case letters, digits, '.', '_', '-'")
    p.add_argument("--tasks", nargs="+", metavar="TASK",
                   help="tasks to run (default: every task with a leaderboard CSV)")
    p.add_argument("--smoke", action="store_true", help="run the tiny glyphs-smoke task first and stop on failure")
    p.add_argument("--source-classes", type=int, nargs="+", metavar="S",
                   help="submit part of the grid: these source-class counts only (the model stays unranked until "
                        "its grid is complete; submitting again runs only the missing units)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="N", help="submit part of the grid: these seeds only")
    p.add_argument("--replace", action="store_true",
                   help="the name may hold results of another configuration: remove them (default: refuse the name)")
    p.add_argument("--trust-backbone", action="store_true",
                   help="run the backbone's code in this process, unisolated (needed where bubblewrap is missing)")
    p.add_argument("--backbone-option", action="append", metavar="KEY=VALUE", help="backbone option (repeatable)")
    p.add_argument("--data-root", metavar="DIR", help="root folder of a real dataset")
    _limits(p)
    _storage(p)


def _report_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", nargs="+", help="tasks to report (default: all)")
    _storage(p)


def _analyze_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", nargs="+", help="task(s) with a leaderboard CSV")
    p.add_argument("--scope", choices=["all", "model", "source_classes"], default="all",
                   help="which correlations to print: across all units (default), within each model across s, "
                        "or across models at each s (the CSV holds all three)")
    p.add_argument("--leaderboards", default="leaderboards",
                   help="folder of leaderboard CSVs, where <task>-analysis.csv is written (default: leaderboards)")


def _verify_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", help="task name (see `ncbench list tasks`) or path to a task YAML file")
    p.add_argument("--model", nargs="+", metavar="NAME", help="verify these models' rows only (default: every model)")
    p.add_argument("--source-classes", type=int, nargs="+", metavar="S", help="only units of these source-class counts")
    p.add_argument("--seeds", type=int, nargs="+", metavar="N", help="only units of these pretraining seeds")
    p.add_argument("--units", type=int, metavar="N", help="verify N units drawn at random (seeded) among those "
                                                          "matching (default: 3)")
    p.add_argument("--all", action="store_true", help="verify every unit matching the filters")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw of --units (default: 0)")
    p.add_argument("--checkpoints", metavar="DIR",
                   help="folder holding the units' checkpoints, named as `ncbench run` names them (default: "
                        "<out>/checkpoints); only read")
    p.add_argument("--pretrain-missing", action="store_true",
                   help="pretrain a unit without a checkpoint (into <out>/checkpoints) instead of reporting it "
                        "unverifiable: bit-identical on the machine and thread count that made it, within the CI elsewhere")
    p.add_argument("--fresh-seed", type=int, metavar="N",
                   help="seed of the fresh render of a procedurally generated dataset (default: drawn at random, "
                        "recorded in the CSV)")
    p.add_argument("--no-fresh", action="store_true", help="skip the fresh-seed (memorisation) check")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: $NCBENCH_THREADS, else 1, as the committed leaderboards' workers)")
    p.add_argument("--trust-backbone", action="store_true",
                   help="run an unregistered backbone's code in this process instead of its bubblewrap sandbox")
    p.add_argument("--data-root", metavar="DIR", help="root folder of a real dataset")
    _limits(p)
    _storage(p)


# name -> (command, help, adds its arguments)
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, Callable[[argparse.ArgumentParser], None]]] = {
    "list": (cmd_list, "list registered datasets, backbones, heads, metrics or task files", _list_parser),
    "validate": (cmd_validate, "check task files and report every problem (file: field: message)", _validate_parser),
    "pretrain": (cmd_pretrain, "pretrain one unit (task, source-class count, seed) and print its checkpoint folder",
                 lambda p: _unit_args(p, grid=False)),
    "evaluate": (cmd_evaluate, "evaluate one unit (pretraining it first if needed, or a given --checkpoint) and "
                               "write its result file", _evaluate_parser),
    "run": (cmd_run, "run a task's grid of units end to end, skipping finished units, then rebuild its leaderboard",
            _run_parser),
    "leaderboard": (cmd_leaderboard, "rebuild leaderboard CSVs and their ranked views (<task>.md) from the raw result files",
                    _leaderboard_parser),
    "compare": (cmd_compare, "compare two models (paired tests, Holm-corrected verdicts) or two leaderboard CSVs",
                _compare_parser),
    "submit": (cmd_submit, "validate a backbone, run it on the leaderboard tasks and add its rows", _submit_parser),
    "report": (cmd_report, "plots and an HTML page from the leaderboards and result files", _report_parser),
    "analyze": (cmd_analyze, "does collapse predict transfer? rank correlations (bootstrap CIs) of source collapse "
                             "with target accuracy and CDNV, into <task>-analysis.csv", _analyze_parser),
    "verify": (cmd_verify, "re-extract features from stored checkpoints and re-score a sample of units: claimed vs "
                           "reproduced, a fresh-seed memorisation check, into <task>-verified.csv", _verify_parser),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ncbench", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ncbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log debug messages; show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, text, add_arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text, epilog=EPILOG_EXAMPLES.get(name),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        add_arguments(p)
    return parser


def _process_group() -> contextlib.AbstractContextManager:
    """The launcher's process group for the command (yields this process's place); in a process that no
    launcher started (none of RANK, WORLD_SIZE, LOCAL_RANK set) nothing to join: yields None without
    importing torch."""
    if not any(os.environ.get(name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return contextlib.nullcontext()
    from ncbench import distributed  # lazy: start-up time (torch)

    return distributed.session()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    keep_freed_memory()
    try:
        with _process_group() as where:
            if where is not None and not where.is_main:  # one log, one progress bar: rank 0's
                logging.getLogger().setLevel(logging.WARNING)
            return args.func(args)
    except INPUT_ERRORS as e:
        if args.verbose:
            log.exception("details")
        hint = OS_ERROR_HINTS.get(e.errno) if isinstance(e, OSError) else None
        print(f"ncbench {args.command}: error: {e}" + (f" ({hint})" if hint else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
