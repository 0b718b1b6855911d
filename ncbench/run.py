"""The pipeline: a task's grid of units, each pretrain → features → metrics → episodes → result file.

A unit is one (task, model, source-class count s, seed). For each unit ``run_unit``:

1. loads the dataset, splits its classes into source/target pools, draws s source classes (seeded, nested
   over s) and their TRAIN/TEST images;
2. pretrains the backbone on them (or reuses / resumes the checkpoint in ``<out>/checkpoints``), normalised
   with mean / std of the source pool's TRAIN images (never the target pool's);
3. extracts features once per (checkpoint, split) through the feature cache;
4. computes source collapse (CDNV, NC1–NC4, weak/strong test collapse, accuracies), the layer-wise NCC-error
   and CDNV curves with ε-effective depth, target CDNV and target NCC accuracy;
5. evaluates every (head, shots) on the task's episodes — drawn from the task's episode seed only, so they
   are identical for every backbone and seed — keeping per-episode accuracies;
6. writes one result file atomically (``ncbench.results``). A failing unit writes a ``failed`` result
   with its error instead; re-running skips units whose result file is ``ok``.

``run_one`` is that step for one unit, as every executor (``ncbench.executor``: this process, a process
pool, a Slurm job array) runs it. Launched as several processes (``ncbench.distributed``), they pretrain
the unit together with DistributedDataParallel and rank 0 alone evaluates it and writes its result.

Steps 2–3 run the backbone's code. For a backbone that is not registered with ncbench (a file, module or
entry-point spec) they run in a sandbox process (``ncbench.sandbox``, with a timeout and a memory limit)
that hands back the features as safetensors; everything else runs here, on those tensors.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ncbench import __version__, distributed
from ncbench.episodes import draw_source_classes, sample_episodes, source_images, split_pools
from ncbench.layerwise import LayerCurves, layer_collapse
from ncbench.results import load_result, result_path, write_result, ResultError
from ncbench.runtime import DEFAULT_MEMORY_GB, DEFAULT_TIMEOUT_S, check_limits, git_commit
from ncbench.registry import HEADS
from ncbench.tasks import Task

log = logging.getLogger(__name__)

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

    def key(self) -> dict[str, Any]:
        return {"task": self.task.name, "task_version": self.task.version, "model": self.model,
                "backbone": self.backbone, "source_classes": self.source_classes, "seed": self.seed,
                "config_hash": self.config_hash}


def plan_units(task: Task, opts: RunOptions) -> list[Unit]:
    """The task's grid (source-class counts × seeds), with the options' overrides applied."""
    backbone = opts.backbone or task.backbone
    bb_options = opts.backbone_options if opts.backbone_options is not None else (
        task.backbone_options if opts.backbone is None else {})
    model = opts.model or backbone.rsplit("/", 1)[-1]  # a file spec's name without its folder: a path segment
    return [Unit(task, model, backbone, bb_options, s, seed)
            for s in (opts.source_classes or task.source_classes) for seed in (opts.seeds or task.seeds)]


# --------------------------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=4)
def _load_dataset(name: str, options_json: str):
    from ncbench.data import load_dataset

    return load_dataset(name, **json.loads(options_json))


def dataset_for(task: Task, data_root: str | None):
    options = dict(task.dataset_options)
    if data_root is not None:
        options["root"] = data_root
    return _load_dataset(task.dataset, json.dumps(options, sort_keys=True))


def _number(v):
    """JSON-safe number: ints stay ints, non-finite floats (e.g. the CI of one episode, the CDNV of
    coinciding means) become null: an empty cell in the leaderboard, never a "NaN" string."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if np.isfinite(v) else None


def training_curve(ckpt_dir: Path) -> list[dict[str, Any]]:
    """The tracked epochs of the checkpoint's ``curve.csv`` (collapse metrics during pretraining)."""
    import pandas as pd

    from ncbench.pretrain import CURVE_FILE

    path = Path(ckpt_dir) / CURVE_FILE
    if not path.is_file():
        return []
    df = pd.read_csv(path)
    df = df[df["nc1"].notna()] if "nc1" in df else df.iloc[:0]
    return [{k: _number(v) for k, v in row.items() if not pd.isna(v)} for row in df.to_dict("records")]


# --------------------------------------------------------------------------------------------- the unit
@dataclass(frozen=True)
class UnitData:
    """The unit's dataset, pools, source classes and source TRAIN/TEST image indices."""

    dataset: Any
    source_pool: np.ndarray
    target_pool: np.ndarray
    classes: np.ndarray        # [s] dataset class indices, sorted
    train_idx: np.ndarray      # [s * train_per_class] dataset indices, class-major
    test_idx: np.ndarray       # [s * test_per_class]


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
    from ncbench.data import TRAIN

    return np.flatnonzero(np.isin(data.dataset.labels, data.source_pool) & (data.dataset.split == TRAIN))


def checkpoint_dir(unit: Unit, opts: RunOptions) -> Path:
    return Path(opts.out) / "checkpoints" / f"{unit.checkpoint_name}-{unit.config_hash}"


def isolated(unit: Unit, opts: RunOptions) -> bool:
    """Whether the unit's backbone code runs in a sandbox process (``ncbench.sandbox``): by default only
    specs that are not registered ncbench backbones (``module:callable``, ``file.py``, entry points)."""
    from ncbench.sandbox import is_trusted

    return opts.isolate if opts.isolate is not None else not is_trusted(unit.backbone)


def pretrain_unit(unit: Unit, opts: RunOptions, data: UnitData | None = None) -> Path:
    """Pretrain (or reuse/resume) the unit's checkpoint; return its folder."""
    from ncbench import sandbox
    from ncbench.pretrain import pretrain

    if isolated(unit, opts):
        if distributed.place().world_size > 1:
            raise ValueError(f"backbone {unit.backbone!r} runs in a sandbox process, which cannot join distributed "
                             "training: pass --trust-backbone to run its code in the training processes, or launch one")
        return sandbox.pretrain(unit, opts)
    data = data or unit_data(unit, opts)
    return pretrain(unit.backbone, data.dataset, data.train_idx, data.test_idx, unit.task.pretrain_config(),
                    checkpoint_dir(unit, opts), seed=unit.seed, backbone_options=unit.backbone_options,
                    card_extra={"name": unit.checkpoint_name, "task": unit.task.name,
                                "task_version": unit.task.version},
                    norm_idx=norm_indices(data), norm_source="source-pool train images", layer_eps=unit.task.layer_eps)


@dataclass(frozen=True)
class UnitFeatures:
    """Everything of a unit that runs the backbone's code: its checkpoint, frozen features (float32) and
    layer curves."""

    checkpoint: Path                  # the pretrained checkpoint folder
    train: torch.Tensor               # [s * train_per_class, m] source TRAIN images (UnitData.train_idx)
    test: torch.Tensor                # [s * test_per_class, m] source TEST images
    layers: LayerCurves               # layer curves over every source TRAIN image (ncbench.layerwise)
    target: torch.Tensor              # [n_target, m] every image of the target pool, in dataset order


def target_indices(data: UnitData) -> np.ndarray:
    """Dataset indices of the target pool's images, sorted."""
    return np.flatnonzero(np.isin(data.dataset.labels, data.target_pool))


def unit_features(unit: Unit, opts: RunOptions, data: UnitData) -> UnitFeatures:
    """Pretrain (or reuse) the unit's checkpoint and extract its features, in this process."""
    from ncbench.checkpoint import load_checkpoint
    from ncbench.features import FeatureCache

    ckpt_dir = pretrain_unit(unit, opts, data)
    model, card = load_checkpoint(ckpt_dir)
    cache = FeatureCache(Path(opts.out) / "features", model, card, data.dataset)
    ds = data.dataset
    layers = layer_collapse(model, ds.images[data.train_idx], np.searchsorted(data.classes, ds.labels[data.train_idx]),
                            card.preprocessing, unit.task.layer_eps)
    return UnitFeatures(ckpt_dir, cache.features(data.train_idx), cache.features(data.test_idx), layers,
                        cache.features(target_indices(data)))


def run_unit(unit: Unit, opts: RunOptions) -> dict[str, Any]:
    """Run one unit end to end and return its (ok) result record; exceptions propagate.
    The backbone's code runs in a sandbox process when :func:`isolated` says so; the rest runs here."""
    from ncbench import sandbox
    from ncbench.checkpoint import load_classifier, read_card
    from ncbench.heads import build_head, episode_accuracy
    from ncbench.stats import mean_ci95
    from ncbench.metrics import cdnv, collapse_report, ncc_accuracy

    t0 = time.perf_counter()
    task, data = unit.task, unit_data(unit, opts)
    ds, classes, train_idx, test_idx = data.dataset, data.classes, data.train_idx, data.test_idx
    feats = sandbox.unit_features(unit, opts) if isolated(unit, opts) else unit_features(unit, opts, data)
    ckpt_dir, card = feats.checkpoint, read_card(feats.checkpoint)

    # ---- source: collapse on train/test, classifier accuracy, layer curves
    y_train = np.searchsorted(classes, ds.labels[train_idx])  # labels 0..s-1, as in pretraining
    y_test = np.searchsorted(classes, ds.labels[test_idx])
    f_train, f_test = feats.train, feats.test
    weight, bias = load_classifier(ckpt_dir)
    source = collapse_report(f_train, y_train, f_test, y_test, weight=weight, bias=bias)
    for name, f, y in (("source_train_acc", f_train, y_train), ("source_test_acc", f_test, y_test)):
        logits = f.double() @ weight.double().T + (0 if bias is None else bias.double())
        source[name] = float((logits.argmax(1).numpy() == y).mean())

    source["effective_depth"] = feats.layers.depths["flat"]
    source["effective_depth_reached"] = feats.layers.reached["flat"]

    # ---- target: collapse of the frozen features on unseen classes, and few-shot episodes
    tgt_idx, tgt_pool = target_indices(data), data.target_pool
    f_tgt = feats.target
    y_tgt = ds.labels[tgt_idx]
    tgt_train = ds.split[tgt_idx] == 0
    target = {"cdnv": cdnv(f_tgt, y_tgt),
              "ncc_acc": ncc_accuracy(f_tgt[tgt_train], y_tgt[tgt_train], f_tgt[~tgt_train], y_tgt[~tgt_train])}

    episodes_out, episode_hashes = [], {}
    ep = task.episodes
    center = f_train.double().mean(0)  # SimpleShot CL2N centre: the source-train mean feature
    for shots in ep.shots:
        eps = sample_episodes(ds.labels, tgt_pool, ep.ways, shots, ep.queries, ep.count, ep.seed)
        episode_hashes[str(shots)] = eps.digest
        pos = lambda a: np.searchsorted(tgt_idx, a)  # dataset index -> row of f_tgt
        for spec in task.heads:
            head = build_head(spec, center=center)
            accs = episode_accuracy(head, f_tgt, pos(eps.support), eps.support_labels, pos(eps.query),
                                    eps.query_labels)
            mean, ci, n = mean_ci95(accs)
            episodes_out.append({"head": head_label(spec), "ways": ep.ways, "shots": shots, "queries": ep.queries,
                                 "acc_mean": _number(mean), "acc_ci95": _number(ci), "n": n,
                                 "per_episode": [float(a) for a in accs]})

    return {
        "schema": 1, "status": "ok", "error": None, "unit": unit.key(),
        "provenance": provenance(unit, t0, card.sha256, episode_hashes, card.device, card.world_size),
        "source": {k: _number(v) for k, v in source.items()},
        "target": {k: _number(v) for k, v in target.items()},
        "layers": [{k: _number(v) if k in ("ncc_error", "cdnv") else v for k, v in r.items()} for r in feats.layers.rows],
        "episodes": episodes_out,
        "source_classes": [ds.class_names[c] for c in classes],
        "training_curve": training_curve(ckpt_dir),
    }


def head_label(spec: dict[str, Any]) -> str:
    """Leaderboard name of a head spec: its name, plus non-default options (``ridge`` / ``ridge-alpha10``)."""
    defaults = HEADS.get(spec["name"]).defaults
    return spec["name"] + "".join(f"-{k}{v}" for k, v in sorted(spec.items())
                                  if k != "name" and not (k in defaults and v == defaults[k]))


def provenance(unit: Unit, t0: float, checkpoint_sha256: str | None, episodes: dict[str, str],
               device: str, world_size: int) -> dict[str, Any]:
    """Where a result came from: versions, commit, the device and number of processes that pretrained the
    checkpoint, time; ``t0`` = the unit's start."""
    return {"ncbench_version": __version__, "git_commit": git_commit() or "unknown",
            "torch_version": torch.__version__, "device": device, "world_size": world_size,
            "checkpoint": unit.checkpoint_name, "checkpoint_sha256": checkpoint_sha256,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(time.perf_counter() - t0, 3), "episodes": episodes}


def failed_record(unit: Unit, err: BaseException, t0: float) -> dict[str, Any]:
    return {"schema": 1, "status": "failed", "error": f"{type(err).__name__}: {err}", "unit": unit.key(),
            "provenance": provenance(unit, t0, None, {}, distributed.device().type, distributed.place().world_size)}


def is_finished(unit: Unit, opts: RunOptions) -> bool:
    """Whether the unit has an ``ok`` result file (and ``opts.force`` is off): then it is not run again."""
    path = result_path(opts.results, unit.key())
    if opts.force or not path.exists():
        return False
    try:
        return load_result(path)["status"] == "ok"
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


def run_one(unit: Unit, opts: RunOptions) -> str:
    """Run one unit and write its result file (``failed`` with the error if it raised); return its status.

    In a process group every process calls this: they pretrain the unit together, then rank 0 evaluates
    it and writes the result while the others return ``"ok"`` (rank 0's status is the unit's)."""
    t0, where = time.perf_counter(), distributed.place()
    try:
        if not pretrain_in_group(unit, opts):
            return "ok"
        record = run_unit(unit, opts)
    except Exception as e:  # a failed unit is a row with its status, never silently dropped
        log.error("unit %s failed: %s\n%s", unit.checkpoint_name, e, traceback.format_exc())
        if not where.is_main:
            raise
        record = failed_record(unit, e, t0)
    write_result(opts.results, record)
    if record["status"] == "ok":
        best = max(record["episodes"], key=lambda r: (r["shots"], r["acc_mean"]))
        log.info("%s: %s %d-shot acc %.3f, target CDNV %.3f, NC1 %.3g (%.0f s)", unit.checkpoint_name,
                 best["head"], best["shots"], best["acc_mean"], record["target"]["cdnv"],
                 record["source"].get("nc1", float("nan")), record["provenance"]["wall_time_s"])
    return record["status"]


def run_task(task: Task, opts: RunOptions) -> list[tuple[Unit, str]]:
    """Run every unit of the task not already finished, one after the other in this process; return
    (unit, status) for each unit. ``ncbench.executor`` runs them in parallel or on a cluster instead."""
    statuses = []
    bar = tqdm(plan_units(task, opts), desc=f"{task.name}", unit="unit",
               disable=None if distributed.place().is_main else True)
    for unit in bar:
        bar.set_postfix(s=unit.source_classes, seed=unit.seed)
        if is_finished(unit, opts):
            log.info("skip %s: finished", unit.checkpoint_name)
            statuses.append((unit, "ok"))
        else:
            statuses.append((unit, run_one(unit, opts)))
    return statuses
