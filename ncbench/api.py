"""The Python API for notebooks and scripts: evaluate a module or a checkpoint on a task, load a task and its
episodes. ``import ncbench`` exposes these names lazily (``ncbench/__init__.py``); ``docs/api.md`` has
examples, run as doctests.

:func:`evaluate` runs the pipeline's own steps (``ncbench.unit``, ``ncbench.run``) on a given ``nn.Module`` or
checkpoint instead of pretraining one, and returns the rows as a DataFrame with the leaderboard's columns
(:func:`ncbench.leaderboard.columns`; ``pretrained`` is False).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ncbench.backbones import extract, validate_backbone
from ncbench.data import ImageDataset
from ncbench.data.preprocessing import preprocessing_of
from ncbench.episodes import Episodes, sample_episodes, split_pools
from ncbench.layerwise import layer_collapse
from ncbench.leaderboard import rows_from_record, to_frame
from ncbench.metrics import uses
from ncbench.results import Result, write_result
from ncbench.run import run_unit, scored_result
from ncbench.tasks import Task, find_task
from ncbench.unit import (NORM_SOURCE, RunOptions, Unit, UnitData, UnitFeatures, dataset_for, norm_indices, plan_units,
                          target_dataset_for, target_indices, task_pools, unit_data)

__all__ = ["evaluate", "load_task", "task_dataset", "task_episodes", "weights_sha256"]


def load_task(task: str | os.PathLike | Task) -> Task:
    """A task by name (``ncbench list tasks``) or YAML path, validated; a :class:`Task` is returned as is."""
    return task if isinstance(task, Task) else find_task(str(task))


def task_dataset(task: str | os.PathLike | Task, *, data_root: str | None = None, target: bool = False) -> ImageDataset:
    """The task's dataset: ``images`` uint8 [N, H, W, C], ``labels`` [N] int class indices, ``split`` [N]
    (TRAIN / TEST), ``class_names`` [K]; loaded once per process. ``target=True``: the dataset of its
    target pool (another one for a cross-domain task, else the same)."""
    task = load_task(task)
    return target_dataset_for(task, data_root) if target else dataset_for(task, data_root)


def task_episodes(task: str | os.PathLike | Task, shots: int, *, data_root: str | None = None) -> Episodes:
    """The task's ``shots``-shot episodes on its target pool, exactly those every leaderboard row of that
    shots is scored on (same digest). Index arrays point into ``task_dataset(task, target=True)``'s images: support
    [E, ways * shots], query [E, ways * queries], labels in 0..ways-1."""
    task = load_task(task)
    ep = task.episodes
    if shots not in ep.shots:
        raise ValueError(f"shots: task {task.name!r} has episodes of {ep.shots} shots, not {shots!r}")
    _, _, target_ds, target_pool = task_pools(task, data_root)
    return sample_episodes(target_ds.labels, target_pool, ep.ways, shots, ep.queries, ep.count, ep.seed)


def weights_sha256(model: nn.Module) -> str:
    """sha256 (hex) of a module's state dict: every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def evaluate(model_or_checkpoint: nn.Module | str | os.PathLike, task: str | os.PathLike | Task, *,
             source_classes: int | None = None, seed: int | None = None, name: str | None = None,
             data_root: str | None = None, out: str | os.PathLike | None = None,
             results: str | os.PathLike | None = None, trust_backbone: bool = False) -> pd.DataFrame:
    """Evaluate frozen features on a task: one row per (head, shots), leaderboard columns, ``pretrained`` False.

    model_or_checkpoint: an ``nn.Module`` mapping images [B, C, H, W] (the task's channels and size,
        normalised with mean / std of the task's source-pool TRAIN images, as ncbench's pretraining does) to
        features [B, m]; or a checkpoint folder (or card path) written by ncbench or with a hand-written card
        (``docs/api.md``), evaluated as ``ncbench evaluate TASK --checkpoint DIR`` does.
    task: a task name, YAML path or :class:`Task`.
    source_classes: s, to compute the source-side collapse columns on s source classes drawn with ``seed``
        from the task's source pool, as a unit of the task does. A module without it gets the target columns
        and episodes only (the ``ncc-cl2n`` centre is then the mean feature of every source-pool TRAIN
        image); a checkpoint defaults to its card's count.
    seed: the draw of the source classes (default: 0 for a module; the card's, else the task's, for a checkpoint).
    name: the ``model`` column (default: the module's class name; the card's ``name`` or folder name).
    out: where a checkpoint is adopted and its features cached (default: a temporary folder, removed).
    results: also write the result file there (``<results>/<task>/<name>/...json``, as ``ncbench run``),
        for a checkpoint, or a module with ``source_classes``.
    trust_backbone: run the backbone code named by a checkpoint's card in this process even when it is not
        a registered ncbench backbone (default: in a sandbox process).
    Raises ValueError naming the argument or file at fault.
    """
    task = load_task(task)
    if isinstance(model_or_checkpoint, nn.Module):
        result = _evaluate_module(model_or_checkpoint, task, source_classes, 0 if seed is None else seed,
                                  name or type(model_or_checkpoint).__name__, data_root)
        if results is not None:
            if source_classes is None:
                raise ValueError("results: a module's result file needs source_classes (its unit's s)")
            write_result(Path(results), result)
    elif isinstance(model_or_checkpoint, (str, os.PathLike)):
        with tempfile.TemporaryDirectory(prefix="ncbench-evaluate-") as scratch:
            result = _evaluate_checkpoint(Path(model_or_checkpoint), task, source_classes, seed, name, data_root,
                                          Path(out) if out is not None else Path(scratch), results, trust_backbone)
    else:
        raise ValueError(f"model_or_checkpoint: expected an nn.Module or a checkpoint path, got "
                         f"{type(model_or_checkpoint).__name__}")
    return to_frame(rows_from_record(result))


def _evaluate_checkpoint(path: Path, task: Task, s: int | None, seed: int | None, name: str | None,
                         data_root: str | None, out: Path, results: Any, trust: bool) -> Result:
    opts = RunOptions(out=out, results=Path(results) if results is not None else out / "results",
                      data_root=data_root, model=name, seeds=None if seed is None else [seed],
                      source_classes=None if s is None else [s], isolate=False if trust else None, checkpoint=path)
    units = plan_units(task, opts)
    if len(units) != 1:
        raise ValueError(f"source_classes: give one (the card of {str(path)!r} lists no source classes and task "
                         f"{task.name!r} has {len(units)} units)")
    result = run_unit(units[0], opts)
    if results is not None:
        write_result(opts.results, result)
    return result


def _evaluate_module(model: nn.Module, task: Task, s: int | None, seed: int, name: str,
                     data_root: str | None) -> Result:
    """The pipeline's scoring of a unit, on the features of an in-memory module (no checkpoint, no sandbox)."""
    t0 = time.perf_counter()
    backbone = f"{type(model).__module__}:{type(model).__qualname__}"
    unit = Unit(task, name, backbone, {}, s, seed if s is not None else None, checkpoint_sha256=weights_sha256(model))
    opts = RunOptions(data_root=data_root)
    if s is not None:
        data = unit_data(unit, opts)
    else:  # no source classes: the source pool's TRAIN images only give the ncc-cl2n centre
        ds, src, target_ds, tgt = task_pools(task, data_root)
        empty = np.empty(0, np.int64)
        data = UnitData(ds, src, tgt, empty, empty, empty, target_ds)
        data = UnitData(ds, src, tgt, empty, norm_indices(data), empty, target_ds)
    ds = data.dataset
    pp = preprocessing_of(ds, norm_indices(data), source=NORM_SOURCE)
    validate_backbone(model, ds.channels, tuple(ds.image_size), spec=name)

    def features(idx: np.ndarray, dataset: Any = ds) -> torch.Tensor:
        return extract(model, dataset.images[idx], pp)

    layers = None
    if s is not None and uses("layer", task.metrics):
        layers = layer_collapse(model, ds.images[data.train_idx], data.source_labels(data.train_idx), pp,
                                task.layer_eps)
    feats = UnitFeatures(None, features(data.train_idx), features(data.test_idx), layers,
                         features(target_indices(data), data.target_dataset))
    return scored_result(unit, data, feats, t0, checkpoint_sha256=unit.checkpoint_sha256, device=None, world_size=1,
                         classifier=None, curve=[])
