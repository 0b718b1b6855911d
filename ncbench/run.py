"""The pipeline: a task's grid of units, each pretrain → features → metrics → episodes → result file.

A unit is one (task, model, source-class count s, seed). For each unit ``run_unit``:

1. loads the dataset, splits its classes into source/target pools, draws s source classes (seeded, nested
   over s) and their TRAIN/TEST images;
2. pretrains the backbone on them (or reuses / resumes the checkpoint in ``<out>/checkpoints``), normalised
   with mean / std of the source pool's TRAIN images (never the target pool's);
3. extracts features once per (checkpoint, split) through the feature cache;
4. computes the task's metrics (its ``metrics:`` list selects entries of the metric registry, each with its
   columns): source collapse (CDNV, NC1–NC4, weak/strong test collapse, accuracies), the layer-wise NCC-error
   and CDNV curves with ε-effective depth, target CDNV and target NCC accuracy;
5. evaluates every (head, shots) on the task's episodes — drawn from the task's episode seed only, so they
   are identical for every backbone and seed — keeping per-episode accuracies;
6. writes one result file atomically (``ncbench.results``). A failing unit writes a ``failed`` result
   with its error instead; re-running skips units whose result file is ``ok``. A forced re-run
   (``--force``) replaces an ``ok`` result only with a new ``ok`` one: if it fails, the old file stays.

``run_one`` is that step for one unit, as every executor (``ncbench.executor``: this process, a process
pool, a Slurm job array) runs it. Launched as several processes (``ncbench.distributed``), they pretrain
the unit together with DistributedDataParallel and rank 0 alone evaluates it and writes its result.

Steps 2–3 run the backbone's code. For a backbone that is not registered with ncbench (a file, module or
entry-point spec) they run in a sandbox process (``ncbench.sandbox``, with a timeout and a memory limit)
that hands back the features as safetensors; everything else runs here, on those tensors.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ncbench import __version__, distributed, sandbox
from ncbench.checkpoint import Card, load_classifier, read_card
from ncbench.data import TRAIN
from ncbench.episodes import sample_episodes
from ncbench.heads import build_head, episode_accuracy, head_label
from ncbench.metrics import SourceEvidence, TargetEvidence, evaluate
from ncbench.pretrain import CURVE_FILE, LOOP_COLUMNS
from ncbench.results import EpisodeScore, Provenance, Result, ResultError, Status, load_result, write_result
from ncbench.runtime import git_commit
from ncbench.stats import mean_ci95
from ncbench.tasks import Task
from ncbench.unit import (RunOptions, Unit, UnitData, UnitFeatures, features_here, plan_units, pretrain_here,
                          target_indices, unit_data)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- helpers
def _number(v):
    """JSON-safe number: ints stay ints, non-finite floats (e.g. the CI of one episode, the CDNV of
    coinciding means) become null: an empty cell in the leaderboard, never a "NaN" string."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if np.isfinite(v) else None


def training_curve(ckpt_dir: Path) -> list[dict[str, Any]]:
    """The tracked epochs of the checkpoint's ``curve.csv``: the rows holding a tracked value beside the
    training loop's own columns (collapse metrics during pretraining)."""
    path = Path(ckpt_dir) / CURVE_FILE
    if not path.is_file():
        return []
    df = pd.read_csv(path)
    tracked = [c for c in df.columns if c not in LOOP_COLUMNS]
    df = df[df[tracked].notna().any(axis=1)] if tracked else df.iloc[:0]
    return [{k: _number(v) for k, v in row.items() if not pd.isna(v)} for row in df.to_dict("records")]


# --------------------------------------------------------------------------------------------- the unit
def isolated(unit: Unit, opts: RunOptions) -> bool:
    """Whether the unit's backbone code runs in a sandbox process (``ncbench.sandbox``): by default only
    specs that are not registered ncbench backbones (``module:callable``, ``file.py``, entry points)."""
    return opts.isolate if opts.isolate is not None else not sandbox.is_trusted(unit.backbone)


def pretrain_unit(unit: Unit, opts: RunOptions) -> Path:
    """Pretrain (or reuse/resume) the unit's checkpoint, in a sandbox process when :func:`isolated`; return
    its folder."""
    if not isolated(unit, opts):
        return pretrain_here(unit, opts)
    if distributed.place().world_size > 1:
        raise ValueError(f"backbone {unit.backbone!r} runs in a sandbox process, which cannot join distributed "
                         "training: pass --trust-backbone to run its code in the training processes, or launch one")
    return sandbox.pretrain(unit, opts)


def unit_features(unit: Unit, opts: RunOptions, data: UnitData) -> UnitFeatures:
    """The unit's checkpoint, features and layer curves, computed in a sandbox process when :func:`isolated`."""
    return sandbox.unit_features(unit, opts) if isolated(unit, opts) else features_here(unit, opts, data)


def unit_classifier(data: UnitData, feats: UnitFeatures, card: Card) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The checkpoint's source classifier (weight [s, m], bias [s] or None) when its rows are the unit's
    source classes (always, for a checkpoint pretrained by the unit); None for a given checkpoint trained on
    other classes or without a classifier: its classifier columns (NC3, NC4, accuracy) stay empty."""
    if card.source_classes != [data.dataset.class_names[c] for c in data.classes]:
        return None
    return load_classifier(feats.checkpoint, required=card.extra.get("adopted_from") is None)


def source_scores(task: Task, data: UnitData, feats: UnitFeatures,
                  classifier: tuple[torch.Tensor, torch.Tensor | None] | None) -> dict[str, Any]:
    """The source- and layer-scope columns of the task's metrics: collapse of the source TRAIN / TEST
    features and the ``classifier``'s accuracy (one shared pair of passes), and the ε-effective depth."""
    weight, bias = classifier or (None, None)
    evidence = SourceEvidence(feats.train, data.source_labels(data.train_idx), feats.test,
                              data.source_labels(data.test_idx), weight=weight, bias=bias)
    source = evaluate("source", evidence, task.metrics)
    if feats.layers is not None:
        source.update(evaluate("layer", feats.layers, task.metrics))
    return {k: _number(v) for k, v in source.items()}


def target_scores(task: Task, data: UnitData, feats: UnitFeatures) -> dict[str, Any]:
    """The target-scope columns of the task's metrics: the frozen features on every target-pool image."""
    idx = target_indices(data)
    evidence = TargetEvidence(feats.target, data.target_dataset.labels[idx], data.target_dataset.split[idx] == TRAIN)
    return {k: _number(v) for k, v in evaluate("target", evidence, task.metrics).items()}


def episode_scores(task: Task, data: UnitData, feats: UnitFeatures) -> tuple[list[EpisodeScore], dict[str, str]]:
    """Every (head, shots) of the task on its episodes (drawn from the task's episode seed only: the same
    for every backbone and seed); returns the scores and each shots' episodes digest."""
    ep, tgt_idx = task.episodes, target_indices(data)
    center = feats.train.double().mean(0)  # SimpleShot CL2N centre: the source-train mean feature
    scores, digests = [], {}
    for shots in ep.shots:
        eps = sample_episodes(data.target_dataset.labels, data.target_pool, ep.ways, shots, ep.queries, ep.count, ep.seed)
        digests[str(shots)] = eps.digest
        support, query = np.searchsorted(tgt_idx, eps.support), np.searchsorted(tgt_idx, eps.query)  # rows of target
        for spec in task.heads:
            accs = episode_accuracy(build_head(spec, center=center), feats.target, support, eps.support_labels, query,
                                    eps.query_labels)
            mean, ci, n = mean_ci95(accs)
            scores.append(EpisodeScore(head_label(spec), ep.ways, shots, ep.queries, _number(mean), _number(ci), n,
                                       [float(a) for a in accs]))
    return scores, digests


def run_unit(unit: Unit, opts: RunOptions) -> Result:
    """Run one unit end to end and return its (ok) result; exceptions propagate. The backbone's code runs
    in a sandbox process when :func:`isolated` says so; the rest runs here, on its features."""
    t0 = time.perf_counter()
    data = unit_data(unit, opts)
    feats = unit_features(unit, opts, data)
    card = read_card(feats.checkpoint)
    return scored_result(unit, data, feats, t0, checkpoint_sha256=card.sha256, device=card.device,
                         world_size=card.world_size, classifier=unit_classifier(data, feats, card),
                         curve=training_curve(feats.checkpoint))


def scored_result(unit: Unit, data: UnitData, feats: UnitFeatures, t0: float, *, checkpoint_sha256: str | None,
                  device: str | None, world_size: int, classifier: tuple[torch.Tensor, torch.Tensor | None] | None,
                  curve: list[dict[str, Any]]) -> Result:
    """The (ok) result of a unit from its data and features: every metric column and episode score. A unit
    without source classes (``data.classes`` empty: ``ncbench.evaluate`` of a module without
    ``source_classes``) has target columns and episodes only."""
    episodes, digests = episode_scores(unit.task, data, feats)
    return Result(Status.OK, unit.key(), provenance(unit, t0, checkpoint_sha256, digests, device, world_size),
                  source=source_scores(unit.task, data, feats, classifier) if len(data.classes) else {},
                  target=target_scores(unit.task, data, feats),
                  layers=[{k: _number(v) if k in ("ncc_error", "cdnv") else v for k, v in r.items()}
                          for r in (feats.layers.rows if feats.layers is not None else [])],
                  episodes=episodes, source_classes=[data.dataset.class_names[c] for c in data.classes],
                  training_curve=curve)


def provenance(unit: Unit, t0: float, checkpoint_sha256: str | None, episodes: dict[str, str],
               device: str | None, world_size: int) -> Provenance:
    """Where a result came from: versions, commit, the device and number of processes that pretrained the
    checkpoint, time; ``t0`` = the unit's start."""
    return Provenance(checkpoint=unit.checkpoint_name if unit.pretrained else unit.checkpoint_path,
                      checkpoint_sha256=checkpoint_sha256, pretrained=unit.pretrained, ncbench_version=__version__,
                      git_commit=git_commit(), torch_version=torch.__version__,
                      device=device, world_size=world_size,
                      date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      wall_time_s=round(time.perf_counter() - t0, 3), episodes=episodes)


def failed_result(unit: Unit, err: BaseException, t0: float) -> Result:
    return Result(Status.FAILED, unit.key(), provenance(unit, t0, unit.checkpoint_sha256, {},
                                                        distributed.device().type, distributed.place().world_size),
                  error=f"{type(err).__name__}: {err}")


def is_finished(unit: Unit, opts: RunOptions) -> bool:
    """Whether the unit has an ``ok`` result file (and ``opts.force`` is off): then it is not run again."""
    path = unit.key().path(opts.results)
    if opts.force or not path.exists():
        return False
    try:
        return load_result(path).ok
    except ResultError as e:
        log.warning("re-running %s: %s", unit.checkpoint_name, e)
        return False


def pretrain_in_group(unit: Unit, opts: RunOptions) -> bool:
    """Launched as several processes: pretrain the unit together (DistributedDataParallel) and return
    whether this process is rank 0, the one that goes on to evaluate it. One process: nothing, True."""
    where = distributed.place()
    if where.world_size > 1:
        pretrain_unit(unit, opts)
    return where.is_main


def _keeps_old_result(unit: Unit, opts: RunOptions) -> bool:
    """A forced re-run that failed keeps the unit's ``ok`` result file: the old result is replaced only by a
    new one that is ok (``--force`` means "run again", not "drop what was there")."""
    path = unit.key().path(opts.results)
    if not (opts.force and path.exists()):
        return False
    try:
        old_ok = load_result(path).ok
    except ResultError:
        return False
    if old_ok:
        log.error("forced re-run of %s failed; its previous ok result %s is kept", unit.checkpoint_name, path)
    return old_ok


def run_one(unit: Unit, opts: RunOptions) -> Status:
    """Run one unit and write its result file (``failed`` with the error if it raised); return its status.

    In a process group every process calls this: they pretrain the unit together, then rank 0 evaluates
    it and writes the result while the others return ``OK`` (rank 0's status is the unit's)."""
    t0, where = time.perf_counter(), distributed.place()
    try:
        if not pretrain_in_group(unit, opts):
            return Status.OK
        result = run_unit(unit, opts)
    except Exception as e:  # a failed unit is a row with its status, never silently dropped
        log.error("unit %s failed: %s", unit.checkpoint_name, e)
        log.debug("traceback of unit %s:\n%s", unit.checkpoint_name, traceback.format_exc())  # with --verbose
        if not where.is_main:
            raise
        result = failed_result(unit, e, t0)
        if _keeps_old_result(unit, opts):
            return result.status
    write_result(opts.results, result)
    if result.ok:
        _log_summary(unit, result)
    return result.status


def _log_summary(unit: Unit, result: Result) -> None:
    best = max(result.episodes, key=lambda e: (e.shots, e.acc_mean))
    log.info("%s: %s %d-shot acc %.3f, target CDNV %.3f, NC1 %.3g (%.0f s)", unit.checkpoint_name, best.head,
             best.shots, best.acc_mean, result.target.get("cdnv") or math.nan, result.source.get("nc1") or math.nan,
             result.provenance.wall_time_s)


def run_task(task: Task, opts: RunOptions) -> list[tuple[Unit, Status]]:
    """Run every unit of the task not already finished, one after the other in this process; return
    (unit, status) for each unit. ``ncbench.executor`` runs them in parallel or on a cluster instead."""
    statuses = []
    bar = tqdm(plan_units(task, opts), desc=f"{task.name}", unit="unit",
               disable=None if distributed.place().is_main else True)
    for unit in bar:
        bar.set_postfix(s=unit.source_classes, seed=unit.seed)
        if is_finished(unit, opts):
            log.info("skip %s: finished", unit.checkpoint_name)
            statuses.append((unit, Status.OK))
        else:
            statuses.append((unit, run_one(unit, opts)))
    return statuses
