"""A unit of a task — one (task, model, source-class count s, seed) — and the steps that run its backbone.

:class:`Unit` names it (its key in results, its checkpoint, its config hash); :class:`RunOptions` say where
its files go and what to override. The steps that execute the backbone's code live here, run in this
process: :func:`pretrain_here` (pretrain or reuse its checkpoint) and :func:`features_here` (its frozen
features and layer curves). ``ncbench.run`` calls them directly for trusted backbones; for an untrusted
one ``ncbench.sandbox`` calls them in a child process. Everything else a unit does (``ncbench.run``) works
on the tensors these return.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ncbench import distributed
from ncbench.checkpoint import load_checkpoint
from ncbench.data import TRAIN, ImageDataset, load_dataset
from ncbench.episodes import draw_source_classes, source_images, split_pools
from ncbench.features import FeatureCache
from ncbench.layerwise import LayerCurves, layer_collapse
from ncbench.metrics import uses
from ncbench.names import check_name, inside, name_from_spec
from ncbench.pretrain import pretrain, source_labels
from ncbench.results import UnitKey
from ncbench.runtime import DEFAULT_MEMORY_GB, DEFAULT_TIMEOUT_S, check_limits
from ncbench.tasks import Task
from ncbench.tracking import CollapseTracker


@dataclass(frozen=True)
class RunOptions:
    """Where things go and what to override. ``model`` is the leaderboard name (default: the backbone)."""

    out: Path = Path("runs")                       # checkpoints and feature cache
    results: Path = Path("leaderboards/results")   # one JSON per unit
    data_root: str | None = None
    backbone: str | None = None
    backbone_options: dict[str, Any] | None = None
    model: str | None = None
    seeds: list[int] | None = None
    source_classes: list[int] | None = None
    force: bool = False
    isolate: bool | None = None                    # run backbone code in a sandbox; None: untrusted specs only
    timeout_s: float = DEFAULT_TIMEOUT_S           # sandbox wall-clock limit per job
    memory_gb: float = DEFAULT_MEMORY_GB           # sandbox address-space limit

    def __post_init__(self) -> None:
        check_limits(self.timeout_s, self.memory_gb)
        if self.model is not None:
            check_name(self.model, "--model")


@dataclass(frozen=True)
class Unit:
    task: Task
    model: str
    backbone: str
    backbone_options: dict[str, Any] = field(hash=False)
    source_classes: int
    seed: int

    @property
    def config_hash(self) -> str:
        """Hash of everything that determines the unit's numbers (not where files go, nor where it runs)."""
        task = {k: v for k, v in self.task.raw.items() if k != "slurm"}
        blob = json.dumps({"task": task, "backbone": self.backbone, "backbone_options": self.backbone_options,
                           "source_classes": self.source_classes, "seed": self.seed}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def checkpoint_name(self) -> str:
        return f"{self.model}.{self.task.name}-s{self.source_classes}-seed{self.seed}"

    def key(self) -> UnitKey:
        return UnitKey(task=self.task.name, task_version=self.task.version, model=self.model, backbone=self.backbone,
                       source_classes=self.source_classes, seed=self.seed, config_hash=self.config_hash)


def plan_units(task: Task, opts: RunOptions) -> list[Unit]:
    """The task's grid (source-class counts × seeds), with the options' overrides applied."""
    backbone = opts.backbone or task.backbone
    bb_options = opts.backbone_options if opts.backbone_options is not None else (
        task.backbone_options if opts.backbone is None else {})
    model = opts.model or name_from_spec(backbone)  # a spec's last segment as a valid name (ncbench.names)
    return [Unit(task, model, backbone, bb_options, s, seed)
            for s in (opts.source_classes or task.source_classes) for seed in (opts.seeds or task.seeds)]


def checkpoint_dir(unit: Unit, opts: RunOptions) -> Path:
    return inside(Path(opts.out) / "checkpoints", f"{unit.checkpoint_name}-{unit.config_hash}")


# ------------------------------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=4)
def _load_dataset(name: str, options_json: str) -> ImageDataset:
    return load_dataset(name, **json.loads(options_json))


def dataset_for(task: Task, data_root: str | None) -> ImageDataset:
    """The task's dataset (``data_root`` sets its ``root`` option), loaded once per process."""
    options = dict(task.dataset_options)
    if data_root is not None:
        options["root"] = data_root
    return _load_dataset(task.dataset, json.dumps(options, sort_keys=True))


@dataclass(frozen=True)
class UnitData:
    """The unit's dataset, pools, source classes and source TRAIN/TEST image indices."""

    dataset: Any
    source_pool: np.ndarray
    target_pool: np.ndarray
    classes: np.ndarray        # [s] dataset class indices, sorted
    train_idx: np.ndarray      # [s * train_per_class] dataset indices, class-major
    test_idx: np.ndarray       # [s * test_per_class]

    def source_labels(self, idx: np.ndarray) -> np.ndarray:
        """Labels 0..s-1 of dataset indices ``idx``, as in pretraining (:func:`ncbench.pretrain.source_labels`)."""
        return source_labels(self.dataset, idx, self.classes)


def unit_data(unit: Unit, opts: RunOptions) -> UnitData:
    task, ds = unit.task, dataset_for(unit.task, opts.data_root)
    src_pool, tgt_pool = split_pools(ds, task.pools.source, task.pools.target, task.pools.source_fraction,
                                     task.pools.seed)
    classes = draw_source_classes(src_pool, unit.source_classes, unit.seed)
    train_idx, test_idx = source_images(ds, classes, task.train_per_class, task.test_per_class)
    return UnitData(ds, src_pool, tgt_pool, classes, train_idx, test_idx)


def norm_indices(data: UnitData) -> np.ndarray:
    """Dataset indices of the TRAIN images of every source-pool class, sorted: the images the unit's
    normalisation statistics are fitted on (one normalisation for every s and seed of a task; no target class)."""
    return np.flatnonzero(np.isin(data.dataset.labels, data.source_pool) & (data.dataset.split == TRAIN))


def target_indices(data: UnitData) -> np.ndarray:
    """Dataset indices of the target pool's images, sorted."""
    return np.flatnonzero(np.isin(data.dataset.labels, data.target_pool))


# ------------------------------------------------------------------------------- the backbone's code
def pretrain_here(unit: Unit, opts: RunOptions, data: UnitData | None = None) -> Path:
    """Pretrain (or reuse/resume) the unit's checkpoint in this process; return its folder."""
    data = data or unit_data(unit, opts)
    return pretrain(unit.backbone, data.dataset, data.train_idx, data.test_idx, unit.task.pretrain_config(),
                    checkpoint_dir(unit, opts), seed=unit.seed, backbone_options=unit.backbone_options,
                    card_extra={"name": unit.checkpoint_name, "task": unit.task.name,
                                "task_version": unit.task.version},
                    norm_idx=norm_indices(data), norm_source="source-pool train images",
                    tracker=CollapseTracker(unit.task.layer_eps, tuple(unit.task.metrics)))


@dataclass(frozen=True)
class UnitFeatures:
    """Everything of a unit that runs the backbone's code: its checkpoint, frozen features (float32) and
    layer curves."""

    checkpoint: Path                  # the pretrained checkpoint folder
    train: torch.Tensor               # [s * train_per_class, m] source TRAIN images (UnitData.train_idx)
    test: torch.Tensor                # [s * test_per_class, m] source TEST images
    layers: LayerCurves | None        # layer curves over every source TRAIN image (ncbench.layerwise); None
                                      # when no metric of the task needs them
    target: torch.Tensor              # [n_target, m] every image of the target pool, in dataset order


def features_here(unit: Unit, opts: RunOptions, data: UnitData) -> UnitFeatures:
    """Pretrain (or reuse) the unit's checkpoint and extract its features, in this process; the layer curves
    only when a metric of the task has layer-scope columns (they stream every source TRAIN image twice)."""
    ckpt_dir = pretrain_here(unit, opts, data)
    model, card = load_checkpoint(ckpt_dir)
    model = model.to(distributed.device())  # extraction and layer curves on the GPU when there is one
    cache = FeatureCache(Path(opts.out) / "features", model, card, data.dataset)
    layers = None
    if uses("layer", unit.task.metrics):
        layers = layer_collapse(model, data.dataset.images[data.train_idx], data.source_labels(data.train_idx),
                                card.preprocessing, unit.task.layer_eps)
    return UnitFeatures(ckpt_dir, cache.features(data.train_idx), cache.features(data.test_idx), layers,
                        cache.features(target_indices(data)))
