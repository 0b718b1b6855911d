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
from ncbench.checkpoint import adopt_checkpoint, checkpoint_info, load_checkpoint
from ncbench.data import TRAIN, ImageDataset, load_dataset
from ncbench.data.preprocessing import preprocessing_of
from ncbench.episodes import draw_source_classes, source_images, split_pools
from ncbench.features import FeatureCache
from ncbench.layerwise import LayerCurves, layer_collapse
from ncbench.metrics import uses
from ncbench.names import check_name, inside, name_from_spec
from ncbench.pretrain import pretrain, source_labels
from ncbench.results import UnitKey
from ncbench.runtime import DEFAULT_MEMORY_GB, DEFAULT_TIMEOUT_S, check_limits
from ncbench.tasks import Task, check_shapes, data_options
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
    models: list[str] | None = None                # several models of the task's zoo (Task.models) at once
    seeds: list[int] | None = None
    source_classes: list[int] | None = None
    force: bool = False
    isolate: bool | None = None                    # run backbone code in a sandbox; None: untrusted specs only
    timeout_s: float = DEFAULT_TIMEOUT_S           # sandbox wall-clock limit per job
    memory_gb: float = DEFAULT_MEMORY_GB           # sandbox address-space limit
    checkpoint: Path | None = None                 # evaluate this checkpoint (folder or card path) instead of
                                                   # pretraining: its card gives the backbone (ncbench.checkpoint)

    def __post_init__(self) -> None:
        check_limits(self.timeout_s, self.memory_gb)
        for name in ([self.model] if self.model is not None else []) + list(self.models or []):
            check_name(name, "--model")


# Task fields that decide a checkpoint: what is pretrained, on which images, and what its curve tracks.
PRETRAIN_FIELDS = ("dataset", "pools", "images_per_class", "pretrain", "metrics", "layer_eps")
UNHASHED_FIELDS = ("slurm", "models")  # where units run, and the zoo (each unit hashes its own model)


def _digest(blob: dict) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Unit:
    task: Task
    model: str
    backbone: str
    backbone_options: dict[str, Any] = field(hash=False)
    source_classes: int
    seed: int
    pretrain: dict[str, Any] = field(default_factory=dict, hash=False)  # the model's pretraining overrides
    checkpoint_path: str | None = None     # a given checkpoint (absolute path) evaluated instead of pretraining
    checkpoint_sha256: str | None = None   # the sha256 of the given weights (a checkpoint's weights file, or
                                           # a module's state dict in ncbench.evaluate); None: pretrained here

    @property
    def pretrained(self) -> bool:
        """Whether ncbench pretrains the unit's checkpoint (False: given weights are evaluated)."""
        return self.checkpoint_sha256 is None

    def _model(self) -> dict:
        what = {"backbone": self.backbone, "backbone_options": self.backbone_options, "pretrain": self.pretrain,
                "source_classes": self.source_classes, "seed": self.seed}
        if self.checkpoint_sha256 is not None:  # given weights instead of a pretraining run
            what["checkpoint_sha256"] = self.checkpoint_sha256
        return what

    @property
    def config_hash(self) -> str:
        """Hash of everything that determines the unit's numbers (not where files go, nor where it runs);
        for a given checkpoint, the sha256 of its weights instead of a pretraining run."""
        task = {k: v for k, v in self.task.raw.items() if k not in UNHASHED_FIELDS}
        return _digest({"task": task, **self._model()})

    @property
    def pretrain_hash(self) -> str:
        """Hash of everything that determines the unit's checkpoint: two tasks that pretrain alike (the same
        source dataset, pools and recipe, e.g. ``glyphs`` and ``glyphs-to-omniglot``) share checkpoints."""
        return _digest({"task": {k: self.task.raw.get(k) for k in PRETRAIN_FIELDS}, **self._model()})

    @property
    def model_config(self) -> dict[str, Any]:
        """The model's configuration, which its leaderboard name is bound to: backbone spec, options and
        pretraining overrides (the same under every task, source-class count and seed)."""
        return {"backbone": self.backbone, "backbone_options": self.backbone_options, "pretrain": self.pretrain}

    @property
    def model_hash(self) -> str:
        """Hash of :attr:`model_config`: a model name stands for one configuration (``ncbench.submit``)."""
        blob = json.dumps(self.model_config, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def checkpoint_name(self) -> str:
        return f"{self.model}.{self.task.dataset}-s{self.source_classes}-seed{self.seed}"

    def pretrain_config(self):
        """The task's pretraining recipe with the model's overrides (:class:`ncbench.pretrain.PretrainConfig`)."""
        return self.task.pretrain_config(self.pretrain)

    def key(self) -> UnitKey:
        return UnitKey(task=self.task.name, task_version=self.task.version, model=self.model, backbone=self.backbone,
                       source_classes=self.source_classes, seed=self.seed, config_hash=self.config_hash,
                       model_hash=self.model_hash, backbone_options=self.backbone_options, pretrain=self.pretrain)


def plan_units(task: Task, opts: RunOptions) -> list[Unit]:
    """The task's grid (models × source-class counts × seeds), with the options' overrides applied. A model
    named in the task's zoo (``models:``) takes its backbone, options and pretraining overrides from there
    unless ``--backbone`` is given; any other name labels the given (or the task's) backbone. With
    ``opts.checkpoint`` the card gives the backbone, the model name (default: the card's ``name``, else its
    folder's), and the default source-class count and seed when it lists them."""
    if opts.checkpoint is not None:
        if opts.backbone is not None or opts.backbone_options is not None:
            raise ValueError("--backbone / --backbone-option: not with --checkpoint, whose card gives the backbone")
        info = checkpoint_info(opts.checkpoint)
        counts = opts.source_classes or ([info.source_classes] if info.source_classes else task.source_classes)
        seeds = opts.seeds or ([info.seed] if info.seed is not None else task.seeds)
        path = str(info.path.resolve())
        return [Unit(task, opts.model or info.name, info.backbone, info.backbone_options, s, seed,
                     checkpoint_path=path, checkpoint_sha256=info.sha256)
                for s in counts for seed in seeds]
    names = opts.models or [opts.model]
    if opts.models and opts.backbone is not None:
        raise ValueError("--model: several models take their backbones from the task's models: section; "
                         "give one --model NAME with --backbone")
    units = []
    for name in names:
        if opts.backbone is None and name in task.models:
            spec = task.models[name]
            backbone, bb_options, pretrain = spec.backbone, spec.backbone_options, spec.pretrain
            if opts.backbone_options:
                raise ValueError(f"--backbone-option: model {name!r} is defined in the task's models: section; "
                                 "give another --model name for other options")
        else:
            if opts.models:
                raise ValueError(f"--model: {name!r} is not in the models: section of task {task.name!r} "
                                 f"(known: {', '.join(task.models) or 'none'})")
            backbone = opts.backbone or task.backbone
            bb_options = opts.backbone_options if opts.backbone_options is not None else (
                task.backbone_options if opts.backbone is None else {})
            pretrain = {}
        model = name or name_from_spec(backbone)  # a spec's last segment as a valid name (ncbench.names)
        units += [Unit(task, model, backbone, bb_options, s, seed, pretrain)
                  for s in (opts.source_classes or task.source_classes) for seed in (opts.seeds or task.seeds)]
    return units


def checkpoint_dir(unit: Unit, opts: RunOptions) -> Path:
    return inside(Path(opts.out) / "checkpoints", f"{unit.checkpoint_name}-{unit.pretrain_hash}")


# ------------------------------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=4)
def _load_dataset(name: str, options_json: str) -> ImageDataset:
    return load_dataset(name, **json.loads(options_json))


def dataset_for(task: Task, data_root: str | None) -> ImageDataset:
    """The task's (source) dataset (``data_root`` sets its ``root`` option), loaded once per process."""
    options, _ = data_options(task, data_root)
    return _load_dataset(task.dataset, json.dumps(options, sort_keys=True))


def target_dataset_for(task: Task, data_root: str | None) -> ImageDataset:
    """The dataset of the task's target pool: its ``target:`` dataset (cross-domain), else the source dataset."""
    if task.target is None:
        return dataset_for(task, data_root)
    _, options = data_options(task, data_root)
    target = _load_dataset(task.target.dataset, json.dumps(options, sort_keys=True))
    check_shapes(task, dataset_for(task, data_root), target)
    return target


@dataclass(frozen=True)
class UnitData:
    """The unit's datasets, pools, source classes and source TRAIN/TEST image indices. ``target_dataset`` is
    the source dataset itself, or a cross-domain task's target dataset (then every class of it is the pool)."""

    dataset: Any
    source_pool: np.ndarray
    target_pool: np.ndarray    # class indices of target_dataset
    classes: np.ndarray        # [s] dataset class indices, sorted
    train_idx: np.ndarray      # [s * train_per_class] dataset indices, class-major
    test_idx: np.ndarray       # [s * test_per_class]
    target_dataset: Any = None

    def __post_init__(self) -> None:
        if self.target_dataset is None:
            object.__setattr__(self, "target_dataset", self.dataset)

    def source_labels(self, idx: np.ndarray) -> np.ndarray:
        """Labels 0..s-1 of dataset indices ``idx``, as in pretraining (:func:`ncbench.pretrain.source_labels`)."""
        return source_labels(self.dataset, idx, self.classes)


def task_pools(task: Task, data_root: str | None) -> tuple[ImageDataset, np.ndarray, ImageDataset, np.ndarray]:
    """(source dataset, source pool, target dataset, target pool): the pools are sorted class indices of
    their datasets; a cross-domain task's target pool is every class of its target dataset."""
    ds = dataset_for(task, data_root)
    src_pool, tgt_pool = split_pools(ds, task.pools.source, task.pools.target, task.pools.source_fraction,
                                     task.pools.seed)
    target_ds = target_dataset_for(task, data_root)
    if task.target is not None:
        tgt_pool = np.arange(len(target_ds.class_names), dtype=np.int64)
    return ds, src_pool, target_ds, tgt_pool


def unit_data(unit: Unit, opts: RunOptions) -> UnitData:
    task = unit.task
    ds, src_pool, target_ds, tgt_pool = task_pools(task, opts.data_root)
    classes = draw_source_classes(src_pool, unit.source_classes, unit.seed)
    train_idx, test_idx = source_images(ds, classes, task.train_per_class, task.test_per_class)
    return UnitData(ds, src_pool, tgt_pool, classes, train_idx, test_idx, target_ds)


def norm_indices(data: UnitData) -> np.ndarray:
    """Dataset indices of the TRAIN images of every source-pool class, sorted: the images the unit's
    normalisation statistics are fitted on (one normalisation for every s and seed of a task; no target class)."""
    return np.flatnonzero(np.isin(data.dataset.labels, data.source_pool) & (data.dataset.split == TRAIN))


def target_indices(data: UnitData) -> np.ndarray:
    """Indices into ``data.target_dataset`` of the target pool's images, sorted."""
    return np.flatnonzero(np.isin(data.target_dataset.labels, data.target_pool))


# ------------------------------------------------------------------------------- the backbone's code
NORM_SOURCE = "source-pool train images"  # what a unit's normalisation statistics are fitted on (norm_indices)


def pretrain_here(unit: Unit, opts: RunOptions, data: UnitData | None = None) -> Path:
    """Pretrain (or reuse/resume) the unit's checkpoint in this process; return its folder. A unit of a
    given checkpoint adopts it instead (:func:`ncbench.checkpoint.adopt_checkpoint`), completing a
    hand-written card with the task's preprocessing."""
    data = data or unit_data(unit, opts)
    if not unit.pretrained:
        return adopt_checkpoint(Path(unit.checkpoint_path), checkpoint_dir(unit, opts),
                                lambda: preprocessing_of(data.dataset, norm_indices(data), source=NORM_SOURCE))
    return pretrain(unit.backbone, data.dataset, data.train_idx, data.test_idx, unit.pretrain_config(),
                    checkpoint_dir(unit, opts), seed=unit.seed, backbone_options=unit.backbone_options,
                    card_extra={"name": unit.checkpoint_name, "model": unit.model, "model_hash": unit.model_hash},
                    norm_idx=norm_indices(data), norm_source=NORM_SOURCE,
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
    target: torch.Tensor              # [n_target, m] every image of the target pool, in target-dataset order


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
    target_cache = cache if data.target_dataset is data.dataset else FeatureCache(
        Path(opts.out) / "features", model, card, data.target_dataset)
    return UnitFeatures(ckpt_dir, cache.features(data.train_idx), cache.features(data.test_idx), layers,
                        target_cache.features(target_indices(data)))
