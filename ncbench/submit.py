"""``ncbench submit``: validate a backbone, run it on the leaderboard tasks, add its rows.

The backbone is validated on a dummy batch first (shape, finite values, eval-mode determinism), so a
broken submission fails in seconds with a message naming the spec. A submission that is not a registered
ncbench backbone is untrusted: its validation, pretraining and feature extraction run in a sandbox process
(``ncbench.sandbox``) under ``--timeout-s`` and ``--memory-gb``. With ``--smoke`` the tiny
``glyphs-smoke`` task runs first, into a scratch folder, so a submitter sees problems in a minute before
the real tasks start. The submission's rows are added by rebuilding each task's leaderboard from the
result files, so existing rows are never rewritten by hand.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

SMOKE_TASK = "glyphs-smoke"


def leaderboard_tasks(leaderboards_dir: Path) -> list[str]:
    """Tasks that have a leaderboard CSV."""
    return sorted(p.stem for p in Path(leaderboards_dir).glob("*.csv"))


def check_name(name: str, spec: str, leaderboards_dir: Path, tasks: list[str]) -> None:
    """Refuse a model name already used on a leaderboard by another backbone spec."""
    from ncbench import leaderboard
    from ncbench.cli import UsageError

    for task in tasks:
        path = Path(leaderboards_dir) / f"{task}.csv"
        if not path.exists():
            continue
        df = leaderboard.read(path)
        used = set(df.loc[df["model"] == name, "backbone"].dropna())
        if used - {spec}:
            raise UsageError(f"--name: {name!r} is already on {path} for backbone {sorted(used)[0]!r}; "
                             "choose another name")


def submit(args: argparse.Namespace) -> int:
    from ncbench import leaderboard
    from ncbench import sandbox
    from ncbench.backbones import build_backbone
    from ncbench.cli import UsageError, _options
    from ncbench.run import RunOptions, run_task
    from ncbench.tasks import find_task

    options = _options(args.backbone_option, "--backbone-option")
    limits = dict(timeout_s=args.timeout_s, memory_gb=args.memory_gb)
    if sandbox.is_trusted(args.spec):
        build_backbone(args.spec, **options)  # raises BackboneError naming the spec
    else:
        sandbox.check_backbone(args.spec, options, workdir_parent=Path(args.out), **limits)
    names = args.tasks or leaderboard_tasks(args.leaderboards)
    if not names:
        raise UsageError(f"--tasks: no tasks given and no leaderboard CSV in {args.leaderboards}")
    tasks = [find_task(n) for n in names]  # all task files validated before anything runs
    check_name(args.name, args.spec, args.leaderboards, [t.name for t in tasks])
    base = dict(backbone=args.spec, backbone_options=options, model=args.name, data_root=args.data_root, **limits)

    if args.smoke:
        scratch = Path(args.out) / "smoke"
        opts = RunOptions(out=scratch, results=scratch / "results", **base)
        statuses = run_task(find_task(SMOKE_TASK), opts)
        failed = [u.checkpoint_name for u, st in statuses if st != "ok"]
        if failed:
            print(f"smoke test failed for {', '.join(failed)}; errors in {opts.results}", file=sys.stderr)
            return 1
        log.info("smoke test passed (%d units)", len(statuses))

    opts = RunOptions(out=Path(args.out), results=Path(args.results), **base)
    failed = []
    for task in tasks:
        statuses = run_task(task, opts)
        failed += [u.checkpoint_name for u, st in statuses if st != "ok"]
    for path in leaderboard.rebuild(opts.results, args.leaderboards, [t.name for t in tasks]):
        print(path)
    if failed:
        print(f"{len(failed)} units failed: {', '.join(failed)} (their rows say why)", file=sys.stderr)
        return 1
    return 0
