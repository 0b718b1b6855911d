"""Task files: a short declarative YAML loaded into a validated :class:`Task`.

A task names a dataset, how its classes split into source and target pools, the source-class counts to
sweep, the pretraining recipe, the few-shot episodes, the heads, the metrics and the seeds. Shared defaults
come from ``include: _base.yaml`` (a path relative to the including file, inside its folder or the tasks
folder; the including file's keys win, dicts are merged key by key). Task files are read safely: regular
files of at most 1 MiB, YAML without anchors or aliases (:class:`_TaskLoader`), names by the rule of
:mod:`ncbench.names`. ``version`` is an integer bumped whenever sampling or scoring changes; every
result row records it. See ``docs/tasks.md`` for every field.

Validation reports *every* problem at once, each as ``FILE: FIELD: problem (expected ...)``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ncbench.data import ImageDataset, dataset_options, load_dataset
from ncbench.episodes import EpisodeError, sample_episodes, source_images, split_pools
from ncbench.names import RULE as NAME_RULE
from ncbench.names import name_problem
from ncbench.recipe import PretrainConfig
from ncbench.registry import BACKBONES, DATASETS, HEADS, METRICS, Registry, head_option_names, is_user_spec
from ncbench.taskfiles import task_files, tasks_dir  # noqa: F401  (public here too)

TASK_KEYS = {"include", "name", "version", "description", "dataset", "pools", "source_classes",
             "images_per_class", "episodes", "backbone", "pretrain", "heads", "metrics", "layer_eps", "seeds",
             "slurm", "target", "models"}


# head options that must be finite numbers > 0 (ridge penalty, logistic inverse regularisation, tolerance)
POSITIVE_HEAD_OPTIONS = {"alpha", "C", "tol"}


class TaskError(ValueError):
    """A task file is invalid; ``problems`` lists each problem as ``file: field: message``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class PoolSpec:
    source: list[str] | None = None      # standard class-split names, e.g. ["train"]
    target: list[str] | None = None      # e.g. ["test"]
    source_fraction: float = 0.5         # used when the dataset has no standard class split
    seed: int = 0


@dataclass(frozen=True)
class TargetSpec:
    """A cross-domain task's ``target:`` block: its target pool is every class of another dataset, whose
    images must have the source dataset's shape (image size and channels set explicitly in its options)."""

    dataset: str
    dataset_options: dict[str, Any]


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the ``models:`` zoo: a leaderboard model = a backbone, its options and pretraining
    overrides (e.g. ``loss: mse``, ``classifier: etf``). The name says what differs from the backbone's default."""

    name: str
    backbone: str
    backbone_options: dict[str, Any]
    pretrain: dict[str, Any]


@dataclass(frozen=True)
class EpisodeSpec:
    ways: int
    shots: list[int]
    queries: int
    count: int
    seed: int = 0


@dataclass(frozen=True)
class SlurmOptions:
    """A task's ``slurm:`` block: Slurm resources of one unit's job (``ncbench run --executor slurm``; CLI
    flags override it).

    partition/account/qos/constraint: passed to sbatch when set; time_min: the job's time limit in
    minutes; gpus: GPUs per unit (> 1: that many tasks training with DDP); cpus: CPUs per task (its
    torch threads, through ``SLURM_CPUS_PER_TASK``); mem_gb: memory per job; max_parallel: array tasks running at once."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int = 240
    gpus: int = 0
    cpus: int = 4
    mem_gb: float | None = None
    max_parallel: int = 32

    def __post_init__(self) -> None:
        for name in ("partition", "account", "qos", "constraint"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                raise ValueError(f"slurm.{name} (--{name}) must be a non-empty string, got {v!r}")
        for name, low in (("time_min", 1), ("gpus", 0), ("cpus", 1), ("max_parallel", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"slurm.{name} (--{name.replace('_', '-')}) must be an integer >= {low}, got {v!r}")
        if self.mem_gb is not None and (isinstance(self.mem_gb, bool) or not isinstance(self.mem_gb, (int, float))
                                        or self.mem_gb <= 0):
            raise ValueError(f"slurm.mem_gb (--mem-gb) must be a number > 0, got {self.mem_gb!r}")

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def override(self, **overrides: Any) -> "SlurmOptions":
        """These options with the non-None ``overrides`` (CLI flags) on top."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class Task:
    name: str
    version: int
    dataset: str
    dataset_options: dict[str, Any]
    pools: PoolSpec
    source_classes: list[int]
    train_per_class: int
    test_per_class: int
    episodes: EpisodeSpec
    backbone: str
    backbone_options: dict[str, Any]
    pretrain: dict[str, Any]
    heads: list[dict[str, Any]]
    metrics: list[str]
    seeds: list[int]
    layer_eps: float = 0.01
    target: TargetSpec | None = None     # cross-domain: the target pool is this dataset's classes
    models: dict[str, ModelSpec] = field(default_factory=dict)  # the model zoo (`ncbench run --model NAME`)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)  # Slurm resources per unit
    description: str = ""
    path: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def pretrain_config(self, overrides: dict[str, Any] | None = None) -> PretrainConfig:
        """The ``pretrain:`` block (with a model's ``overrides`` on top) as a :class:`ncbench.pretrain.PretrainConfig`."""
        return PretrainConfig(**{**self.pretrain, **(overrides or {})})


# --------------------------------------------------------------------------------------------- loading
MAX_TASK_FILE_BYTES = 1 << 20   # a task file (and each file it includes) is read with this bound
MAX_YAML_DEPTH = 32             # nesting of mappings and lists
MAX_INCLUDES = 8                # length of an include chain
MAX_EPISODES = 1_000_000        # episodes.count
MAX_INT = 2**63 - 1             # every integer field (seeds, version, sizes) fits int64


class _Refused(yaml.MarkedYAMLError):
    """A YAML construct task files do not allow (anchors, aliases, deep nesting)."""


class _TaskLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors and aliases (``&a`` / ``*a``, ``<<: *a``: the "billion
    laughs" bomb expands a few lines into gigabytes) and nesting deeper than :data:`MAX_YAML_DEPTH`."""

    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(None, None, f"alias *{event.anchor} refused: task files may not use YAML anchors or "
                           "aliases (write the values out)", event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise _Refused(None, None, f"anchor &{event.anchor} refused: task files may not use YAML anchors or "
                           "aliases (write the values out)", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _Refused(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _read_bounded(path: Path) -> str:
    """The text of the regular file at ``path``, at most :data:`MAX_TASK_FILE_BYTES` bytes. Opened without
    blocking (a named pipe would block ``open``) and checked to be a regular file before reading (no
    ``/dev/zero``, no FIFO, no folder)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise TaskError([f"{path}: cannot read task file ({e.strerror or e})"]) from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TaskError([f"{path}: not a regular file; a task file must be a regular .yaml file"])
        data = f.read(MAX_TASK_FILE_BYTES + 1)
    if len(data) > MAX_TASK_FILE_BYTES:
        raise TaskError([f"{path}: larger than {MAX_TASK_FILE_BYTES} bytes; a task file must be smaller"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TaskError([f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None


def _include_roots(including: Path) -> list[Path]:
    """Folders an include may name a file in: the including file's folder, the tasks folder and the tasks
    folder shipped beside the package."""
    return [including.parent.resolve(), tasks_dir().resolve(), (Path(__file__).resolve().parents[1] / "tasks")]


def _include_path(path: Path, inc) -> Path:
    """The resolved file named by ``include:`` of ``path``: a .yaml/.yml file inside one of
    :func:`_include_roots` (symbolic links followed before checking)."""
    if not isinstance(inc, str) or not inc:
        raise TaskError([f"{path}: include: expected a file name (string), got {inc!r}"])
    target = (path.parent / inc).resolve()
    roots = _include_roots(path)
    if not any(target.parent == r or r in target.parents for r in roots):
        raise TaskError([f"{path}: include: {inc!r} resolves to {str(target)!r}, outside the including file's "
                         f"folder and the tasks folder ({', '.join(map(str, dict.fromkeys(roots)))})"])
    if target.suffix not in (".yaml", ".yml"):
        raise TaskError([f"{path}: include: {inc!r} is not a .yaml / .yml file"])
    return target


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    if path in chain:
        raise TaskError([f"{path}: include: circular include ({' -> '.join(map(str, chain + (path,)))})"])
    if len(chain) >= MAX_INCLUDES:
        raise TaskError([f"{path}: include: more than {MAX_INCLUDES} nested includes"])
    text = _read_bounded(path)
    try:
        data = yaml.load(text, Loader=_TaskLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as e:
        mark = e.problem_mark
        raise TaskError([f"{path}: line {mark.line + 1}, column {mark.column + 1}: {e.problem}"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise TaskError([f"{path}: YAML syntax error: {where}{getattr(e, 'problem', e)}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TaskError([f"{path}: expected a mapping of task fields at the top level, got {type(data).__name__}"])
    inc = data.pop("include", None)
    if inc is None:
        return data
    base = _read_yaml(_include_path(path, inc), chain + (path,))
    return _merge(base, data)


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


class _Checker:
    """Collects problems while reading typed fields out of the merged YAML mapping."""

    def __init__(self, path: str):
        self.path, self.problems = path, []

    def bad(self, fieldname: str, msg: str) -> None:
        self.problems.append(f"{self.path}: {fieldname}: {msg}")

    def get(self, data: dict, key: str, kind, fieldname: str | None = None, *, default=..., minimum=None,
            maximum=None):
        fieldname = fieldname or key
        if key not in data or data[key] is None:
            if default is ...:
                self.bad(fieldname, f"missing (expected {_kind_name(kind)})")
            return None if default is ... else default
        v = data[key]
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
            self.bad(fieldname, f"expected {_kind_name(kind)}, got {v!r} ({type(v).__name__})")
            return None
        if kind is float and not math.isfinite(v):
            self.bad(fieldname, f"expected a finite number, got {v!r}")
            return None
        if kind is int and maximum is None:
            maximum = MAX_INT
        if minimum is not None and v < minimum:
            self.bad(fieldname, f"expected a value >= {minimum}, got {v!r}")
            return None
        if maximum is not None and v > maximum:
            self.bad(fieldname, f"expected a value <= {maximum}, got {v!r}")
            return None
        return v

    def int_list(self, data: dict, key: str, fieldname: str, minimum: int, default=...) -> list[int] | None:
        v = data.get(key, None if default is ... else default)
        if v is None:
            self.bad(fieldname, "missing (expected an integer or a list of integers)")
            return None
        items = v if isinstance(v, list) else [v]
        if not items or any(not isinstance(i, int) or isinstance(i, bool) for i in items):
            self.bad(fieldname, f"expected an integer or a non-empty list of integers, got {v!r}")
            return None
        if any(i < minimum for i in items):
            self.bad(fieldname, f"expected values >= {minimum}, got {v!r}")
            return None
        if any(i > MAX_INT for i in items):
            self.bad(fieldname, f"expected values <= {MAX_INT} (2**63 - 1), got {v!r}")
            return None
        if len(set(items)) != len(items):
            self.bad(fieldname, f"duplicate values in {v!r}")
            return None
        return sorted(items)

    def name_in(self, registry: Registry, name, fieldname: str) -> None:
        if not isinstance(name, str):
            self.bad(fieldname, f"expected a {registry.kind} name (string), got {name!r}")
        elif name not in registry and not (registry is BACKBONES and is_user_spec(name)):
            self.bad(fieldname, registry.unknown_message(name))

    def name(self, v, fieldname: str) -> None:
        """A model / task / dataset name: the rule of :mod:`ncbench.names`."""
        problem = name_problem(v)
        if problem is not None:
            self.bad(fieldname, f"invalid name {v!r}: {problem}; expected {NAME_RULE}")

    def mapping(self, data: dict, key: str, fieldname: str | None = None, default=...) -> dict:
        v = data.get(key, None if default is ... else default)
        if not isinstance(v, dict):
            self.bad(fieldname or key, "missing (expected a mapping)" if v is None else f"expected a mapping, got {v!r}")
            return {}
        return v


def _kind_name(kind) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", dict: "a mapping",
            list: "a list"}.get(kind, str(kind))


def _split_names(c: _Checker, v, fieldname: str) -> list[str] | None:
    if v is None:
        return None
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        c.bad(fieldname, f"expected a class-split name or a list of names, got {v!r}")
        return None
    return items


def _dataset(c: _Checker, data: dict, where: str = "dataset") -> tuple[str | None, dict]:
    ds = c.mapping(data, "dataset", where)
    name = c.get(ds, "name", str, f"{where}.name")
    if name is not None:
        c.name(name, f"{where}.name")
        c.name_in(DATASETS, name, f"{where}.name")
    options = c.get(ds, "options", dict, f"{where}.options", default={})
    if name is not None and name in DATASETS and options:
        accepted = dataset_options(name)
        for k in sorted(set(options) - set(accepted)):
            c.bad(f"{where}.options.{k}", f"unknown option of dataset {name!r}; known: {', '.join(accepted)}")
    for k in sorted(set(ds) - {"name", "options"}):
        c.bad(f"{where}.{k}", "unknown field; known: name, options")
    return name, options


def _target(c: _Checker, data: dict) -> TargetSpec | None:
    if "target" not in data:
        return None
    tgt = c.mapping(data, "target")
    for k in sorted(set(tgt) - {"dataset"}):
        c.bad(f"target.{k}", "unknown field; known: dataset")
    name, options = _dataset(c, tgt, "target.dataset")
    if "pools" in data and {"source", "target"} & set(data["pools"] or {}):
        c.bad("pools", "a task with a target dataset splits only its source dataset: give pools.source_fraction, "
                       "not pools.source/target")
    return TargetSpec(name, options) if name is not None else None


def _models(c: _Checker, data: dict) -> dict[str, ModelSpec]:
    zoo = c.mapping(data, "models", default={})
    out = {}
    for name, spec in zoo.items():
        where = f"models.{name}"
        c.name(name, where)
        if not isinstance(spec, dict):
            c.bad(where, f"expected a mapping with backbone (and options, pretrain), got {spec!r}")
            continue
        for k in sorted(set(spec) - {"backbone", "options", "pretrain"}):
            c.bad(f"{where}.{k}", "unknown field; known: backbone, options, pretrain")
        backbone = c.get(spec, "backbone", str, f"{where}.backbone")
        if backbone is not None:
            c.name_in(BACKBONES, backbone, f"{where}.backbone")
        options = c.get(spec, "options", dict, f"{where}.options", default={})
        pretrain = c.get(spec, "pretrain", dict, f"{where}.pretrain", default={})
        base = data.get("pretrain") if isinstance(data.get("pretrain"), dict) else {}
        try:
            PretrainConfig(**{**base, **(pretrain or {})})
        except (TypeError, ValueError) as e:
            c.bad(f"{where}.pretrain", str(e))
        if backbone is not None and options is not None and pretrain is not None:
            out[name] = ModelSpec(name, backbone, options, pretrain)
    return out


def _pools(c: _Checker, data: dict) -> PoolSpec:
    pools = c.mapping(data, "pools", default={})
    src = _split_names(c, pools.get("source"), "pools.source")
    tgt = _split_names(c, pools.get("target"), "pools.target")
    if ("source" in pools) != ("target" in pools):
        c.bad("pools", "give both 'source' and 'target' class splits, or neither (then source_fraction is used)")
    if src and tgt and set(src) & set(tgt):
        c.bad("pools", f"source and target pools overlap: both use class split(s) {sorted(set(src) & set(tgt))}")
    frac = c.get(pools, "source_fraction", float, "pools.source_fraction", default=0.5)
    if frac is not None and not 0 < frac < 1:
        c.bad("pools.source_fraction", f"expected a number strictly between 0 and 1, got {frac}")
    seed = c.get(pools, "seed", int, "pools.seed", default=0, minimum=0)
    for k in sorted(set(pools) - {"source", "target", "source_fraction", "seed"}):
        c.bad(f"pools.{k}", "unknown field; known: source, target, source_fraction, seed")
    return PoolSpec(src, tgt, frac, seed)


def _episodes(c: _Checker, data: dict) -> EpisodeSpec:
    ep = c.mapping(data, "episodes")
    ways = c.get(ep, "ways", int, "episodes.ways", minimum=2)
    shots = c.int_list(ep, "shots", "episodes.shots", minimum=1)
    queries = c.get(ep, "queries", int, "episodes.queries", minimum=1)
    count = c.get(ep, "count", int, "episodes.count", minimum=1, maximum=MAX_EPISODES)
    seed = c.get(ep, "seed", int, "episodes.seed", default=0, minimum=0)
    for k in sorted(set(ep) - {"ways", "shots", "queries", "count", "seed"}):
        c.bad(f"episodes.{k}", "unknown field; known: ways, shots, queries, count, seed")
    return EpisodeSpec(ways, shots, queries, count, seed)


def _backbone(c: _Checker, data: dict) -> tuple[str | None, dict]:
    bb = c.mapping(data, "backbone")
    name = c.get(bb, "name", str, "backbone.name")
    if name is not None:
        c.name_in(BACKBONES, name, "backbone.name")
    return name, c.get(bb, "options", dict, "backbone.options", default={})


def _pretrain(c: _Checker, data: dict) -> dict:
    pretrain = c.mapping(data, "pretrain")
    if pretrain:
        try:
            PretrainConfig(**pretrain)
        except TypeError as e:  # unknown keyword
            c.bad("pretrain", f"{e}; known fields: {', '.join(f.name for f in dataclasses.fields(PretrainConfig))}")
        except ValueError as e:
            c.bad("pretrain", str(e))
    return pretrain


def _heads(c: _Checker, data: dict) -> list[dict[str, Any]]:
    raw = data.get("heads")
    if not isinstance(raw, list) or not raw:
        c.bad("heads", f"expected a non-empty list of head names or {{name: ..., options...}} mappings, got {raw!r}")
        return []
    heads = []
    for i, h in enumerate(raw):
        h = {"name": h} if isinstance(h, str) else h
        if not isinstance(h, dict) or "name" not in h:
            c.bad(f"heads[{i}]", f"expected a head name or a mapping with 'name', got {h!r}")
            continue
        c.name_in(HEADS, h["name"], f"heads[{i}].name")
        if h["name"] in HEADS:
            allowed = head_option_names(h["name"])
            for k in sorted(set(h) - {"name"} - set(allowed)):
                c.bad(f"heads[{i}].{k}", f"unknown option of head {h['name']!r}; known: {', '.join(allowed) or 'none'}")
            for k in sorted(set(h) & POSITIVE_HEAD_OPTIONS):
                v = h[k]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                    c.bad(f"heads[{i}].{k}", f"expected a finite number > 0, got {v!r}")
        heads.append(dict(h))
    return heads


def _metrics(c: _Checker, data: dict) -> list[str]:
    metrics = data.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        c.bad("metrics", f"expected a list of metric names, got {metrics!r}")
        return []
    for i, m in enumerate(metrics):
        c.name_in(METRICS, m, f"metrics[{i}]")
    return list(metrics)


def _slurm(c: _Checker, data: dict) -> SlurmOptions:
    slurm = c.mapping(data, "slurm", default={})
    known = SlurmOptions.fields()
    for k in sorted(set(slurm) - set(known)):
        c.bad(f"slurm.{k}", f"unknown field; known: {', '.join(known)}")
    try:
        return SlurmOptions(**{k: v for k, v in slurm.items() if k in known})
    except ValueError as e:
        c.bad("slurm", str(e))
        return SlurmOptions()


def parse_task(data: dict, path: str = "<task>") -> Task:
    """Validate a merged task mapping; raise :class:`TaskError` listing every problem."""
    c = _Checker(path)
    for k in sorted(set(data) - TASK_KEYS):
        c.bad(k, f"unknown field; known fields: {', '.join(sorted(TASK_KEYS - {'include'}))}")
    name = c.get(data, "name", str)
    if name is not None:
        c.name(name, "name")
    version = c.get(data, "version", int, minimum=1)
    description = c.get(data, "description", str, default="")
    ds_name, ds_options = _dataset(c, data)
    pools = _pools(c, data)
    source_classes = c.int_list(data, "source_classes", "source_classes", minimum=2)
    ipc = c.mapping(data, "images_per_class")
    train_pc = c.get(ipc, "train", int, "images_per_class.train", minimum=1)
    test_pc = c.get(ipc, "test", int, "images_per_class.test", minimum=1)
    episodes = _episodes(c, data)
    bb_name, bb_options = _backbone(c, data)
    pretrain = _pretrain(c, data)
    heads = _heads(c, data)
    metrics = _metrics(c, data)
    layer_eps = c.get(data, "layer_eps", float, default=0.01)
    if layer_eps is not None and not 0 < layer_eps < 1:
        c.bad("layer_eps", f"expected a number strictly between 0 and 1, got {layer_eps!r}")
    seeds = c.int_list(data, "seeds", "seeds", minimum=0, default=[0])
    target = _target(c, data)
    models = _models(c, data)
    slurm = _slurm(c, data)
    if c.problems:
        raise TaskError(c.problems)
    return Task(name=name, version=version, description=description, dataset=ds_name, dataset_options=ds_options,
                pools=pools, source_classes=source_classes, train_per_class=train_pc, test_per_class=test_pc,
                episodes=episodes, backbone=bb_name, backbone_options=bb_options, pretrain=pretrain, heads=heads,
                metrics=metrics, seeds=seeds, layer_eps=layer_eps, target=target, models=models, slurm=slurm, path=path,
                raw=data)


def with_overrides(task: Task, overrides: dict[str, Any]) -> Task:
    """``task`` with ``--set KEY=VALUE`` overrides: dotted keys into its fields (``episodes.count``,
    ``pretrain.epochs``, ``dataset.options.classes``), validated as a task file is. They change its raw
    mapping, so every unit's config hash (and its rows') records them; ``name`` and ``version`` stay."""
    data = copy.deepcopy(task.raw)
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] not in TASK_KEYS - {"include", "name", "version"} or not all(parts):
            raise TaskError([f"--set {key}: expected a task field (dotted into mappings), one of "
                             f"{', '.join(sorted(TASK_KEYS - {'include', 'name', 'version'}))}"])
        node = data
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TaskError([f"--set {key}: {'.'.join(parts[:i + 1])} is not a mapping in task {task.name!r}"])
        node[parts[-1]] = value
    return parse_task(data, f"{task.path} with --set {' '.join(overrides)}")


def check_base(path: str | os.PathLike) -> None:
    """A base file (name starting with ``_``) only has to be valid YAML with known task fields: the
    tasks that include it are validated whole."""
    data = _read_yaml(Path(path).resolve())
    unknown = sorted(set(data) - TASK_KEYS)
    if unknown:
        raise TaskError([f"{path}: {k}: unknown field; known fields: {', '.join(sorted(TASK_KEYS - {'include'}))}"
                         for k in unknown])


def load_task(path: str | os.PathLike) -> Task:
    """Read, merge includes and validate one task file."""
    p = Path(path)
    return parse_task(_read_yaml(p.resolve()), str(path))


def data_options(task: Task, data_root: str | None = None) -> tuple[dict, dict | None]:
    """The options of the task's source dataset and of its target dataset (None unless cross-domain), with
    ``data_root`` as the ``root`` option of both (procedural datasets such as glyphs ignore it)."""
    def with_root(options: dict) -> dict:
        return options if data_root is None else dict(options, root=data_root)

    return with_root(task.dataset_options), with_root(task.target.dataset_options) if task.target else None


def check_shapes(task: Task, source: ImageDataset, target: ImageDataset) -> None:
    """A cross-domain target dataset must have the source images' shape [H, W, C]: the backbone sees both."""
    if source.images.shape[1:] != target.images.shape[1:]:
        raise ValueError(f"{task.path}: target.dataset: images of shape {list(target.images.shape[1:])} (H, W, C) "
                         f"but the source dataset {task.dataset!r} has {list(source.images.shape[1:])}: set "
                         "target.dataset.options (e.g. image_size) so that size and channels match")


def check_against_data(task: Task, data_root: str | None = None) -> list[str]:
    """Checks that need the dataset(s): pool sizes vs source_classes and ways, images per class, and for a
    cross-domain task the target images' shape.

    Returns the problems found (empty when all is well). A dataset that cannot be loaded here (a real
    dataset without its files) raises :class:`ncbench.data.DatasetError`: the caller decides whether
    that is a problem or a skipped check.
    """
    where = f"{task.path}: "
    src_options, tgt_options = data_options(task, data_root)
    ds = load_dataset(task.dataset, **src_options)
    tgt_ds = load_dataset(task.target.dataset, **tgt_options) if task.target else ds
    problems = []
    try:
        src, tgt = split_pools(ds, task.pools.source, task.pools.target, task.pools.source_fraction, task.pools.seed)
        if task.target:
            check_shapes(task, ds, tgt_ds)
            tgt = np.arange(len(tgt_ds.class_names))
    except (EpisodeError, ValueError) as e:
        return [f"{where}{e}" if not str(e).startswith(where) else str(e)]
    if max(task.source_classes) > len(src):
        problems.append(f"{where}source_classes: {max(task.source_classes)} asked, the source pool of "
                        f"{task.dataset!r} has {len(src)} classes")
    try:
        source_images(ds, src, task.train_per_class, task.test_per_class)
    except EpisodeError as e:
        problems.append(f"{where}{e}")
    for shots in task.episodes.shots:
        try:
            sample_episodes(tgt_ds.labels, tgt, task.episodes.ways, shots, task.episodes.queries, 1, task.episodes.seed)
        except EpisodeError as e:
            problems.append(f"{where}{e} (target pool: {len(tgt)} classes)")
    return problems


# --------------------------------------------------------------------------------------------- lookup
# tasks_dir() and task_files() live in ncbench.taskfiles (imported above), light enough for `ncbench list tasks`


def find_task(name_or_path: str) -> Task:
    """Load a task by file path or by name in :func:`tasks_dir` (unknown name -> "did you mean")."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        return load_task(name_or_path)
    registry: Registry = Registry("task")
    for stem, p in task_files().items():
        registry.register(stem, p)
    return load_task(registry.get(name_or_path))
