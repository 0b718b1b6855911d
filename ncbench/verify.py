"""``ncbench verify``: claimed vs reproduced rows (RobustBench's "verified"), a fresh-seed memorisation check and
plausibility flags.

A leaderboard row is a *claim*: its result file says which checkpoint (sha256) scored which accuracy on the
task's episodes. :func:`verify_task` re-checks a seeded sample of a task's finished units:

1. **Reproduction.** It rebuilds the unit from its result file (the task file's zoo entry, or the backbone,
   options and pretraining overrides the result records; the config hash must come out the same), finds its
   checkpoint (``<checkpoints>/<model>.<dataset>-sS-seedN-<pretrain_hash>``, as ``ncbench run`` names it; a
   given checkpoint's own path as a fallback), adopts it into a scratch folder whose feature cache is empty
   (re-extraction is the point: nothing cached is read), and scores it with the pipeline's own steps
   (:func:`ncbench.run.unit_features`, :func:`ncbench.run.scored_result`: a sandbox process for an untrusted
   backbone). Each (head, shots) row is compared with the claimed one on the *same* episodes:
   ``identical`` when every per-episode accuracy is bit-identical; otherwise it agrees when
   ``|Δacc| ≤ tolerance``, :data:`SAME_WEIGHTS_FRACTION` of the claimed 95 % CI half-width when the
   checkpoint's sha256 is the claimed one (same weights: only the rounding of the features can differ, which
   flips a rare query) and the whole claimed CI when it is not (a checkpoint re-pretrained on another CPU, as
   ``ncbench compare --reproduce`` allows), never below :data:`ABS_TOLERANCE`. A unit without a checkpoint is
   ``unverifiable`` (``pretrain_missing`` re-pretrains it: bit-identical on the machine and thread count that
   made it, within the CI elsewhere).
2. **Fresh seed.** For a dataset whose loader says it can re-render the same classes with other random draws
   (a ``fresh_seed_option`` attribute on the registered loader, e.g. glyphs' ``distortion_seed``), the
   checkpoint is also scored on a fresh render of the task's data: same classes, same episode indices, new
   images. A backbone that generalises scores the same up to sampling noise; one that memorised the public
   images (a lookup table) collapses. A row is ``memorised`` when
   ``claimed − fresh > max(MIN_DROP, ci_claimed + √(ci_claimed² + ci_fresh²))``: below the claimed CI by more
   than the combined CI (about 3.3 standard errors when the two CIs are equal).
3. **Plausibility.** :func:`implausible` flags leaderboard rows with accuracy ≥ :data:`PLAUSIBLE_ACC` and
   source NC1 ≤ :data:`PLAUSIBLE_NC1` (perfect transfer with perfectly collapsed features: a lookup, or test
   images in training); :func:`one_hot_share` flags features that are one-hot vectors (one nonzero entry per
   image; share ≥ :data:`ONE_HOT_SHARE`), measured on the re-extracted target features.

The verdicts are stored in ``<leaderboards>/<task>-verified.csv`` (:data:`COLUMNS`; one row per leaderboard
row key, merged per key on later runs, written atomically under a lock), beside the leaderboard, not in it:
the leaderboard, its manifest and the result files stay as they are. Each row names the sha256 of the result
file it verified: :func:`current` turns a row whose result file changed since into ``stale``, so a later
change of a result invalidates its mark. The ranked view (``<task>.md``) and the HTML report show the marks.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from filelock import FileLock

from ncbench import __version__
from ncbench.checkpoint import CARD_FILE, CheckpointError, checkpoint_info, read_card
from ncbench.files import atomic_write_text, sha256_file
from ncbench.metrics import uses
from ncbench.names import check_name, inside
from ncbench.registry import DATASETS
from ncbench.results import EpisodeScore, Result, Status, iter_results
from ncbench.run import pretrain_unit, scored_result, unit_classifier, unit_features
from ncbench.runtime import DEFAULT_MEMORY_GB, DEFAULT_TIMEOUT_S, THREADS_ENV, git_commit, set_threads
from ncbench.tasks import Task, TaskError, with_overrides
from ncbench.unit import RunOptions, Unit, checkpoint_dir, unit_data

log = logging.getLogger(__name__)

SUFFIX = "-verified.csv"
KEY = ["task", "model", "source_classes", "seed", "head", "shots"]
VERDICTS = ("verified", "mismatch", "memorised", "unverifiable")
STALE = "stale"  # shown for a row whose result file changed after it was verified (never stored)

ABS_TOLERANCE = 1e-6          # |Δacc| always allowed (float noise of a mean of 600 fractions)
SAME_WEIGHTS_FRACTION = 0.25  # × claimed CI, when the checkpoint is the claimed one (same sha256)
OTHER_WEIGHTS_FRACTION = 1.0  # × claimed CI, when it is not (re-pretrained elsewhere)
MIN_DROP = 0.01               # a fresh-seed drop below one accuracy point never counts as memorised
PLAUSIBLE_ACC = 0.999         # accuracy at or above this ...
PLAUSIBLE_NC1 = 1e-3          # ... with source NC1 at or below this is implausible
ONE_HOT_SHARE = 0.9           # target features with one nonzero entry in at least this share of images: one-hot

# the columns of <task>-verified.csv, in order, with their types
COLUMNS: dict[str, type] = {
    "task": str, "model": str, "source_classes": int, "seed": int, "head": str, "shots": int,
    "verdict": str, "claimed_acc": float, "claimed_ci95": float, "reproduced_acc": float, "delta": float,
    "tolerance": float, "identical": bool, "metrics_max_rel_diff": float,
    "fresh_seed": int, "fresh_acc": float, "fresh_ci95": float, "fresh_threshold": float,
    "one_hot_share": float, "flags": str, "note": str,
    "checkpoint_sha256": str, "checkpoint_match": bool, "result_file": str, "result_sha256": str,
    "date": str, "machine": str, "threads": int, "ncbench_version": str, "git_commit": str,
}
FLOAT_FORMAT = "%.8g"


class VerifyError(ValueError):
    """Bad input to verify (names the argument or file)."""


@dataclass(frozen=True)
class VerifyOptions:
    """What to verify and where things are. ``checkpoints``: where units' checkpoints are looked up (default
    ``<out>/checkpoints``); ``out``: scratch folders and re-pretrained checkpoints (``<out>/checkpoints``);
    ``units``: how many units to sample (``None``: all); ``fresh_seed``: the fresh render's seed (None: drawn
    at random and recorded); ``fresh``: run the fresh-seed check where the dataset supports it."""

    results: Path = Path("leaderboards/results")
    leaderboards: Path = Path("leaderboards")
    out: Path = Path("runs")
    checkpoints: Path | None = None
    data_root: str | None = None
    models: list[str] | None = None
    source_classes: list[int] | None = None
    seeds: list[int] | None = None
    units: int | None = 3
    sample_seed: int = 0
    fresh: bool = True
    fresh_seed: int | None = None
    pretrain_missing: bool = False
    threads: int | None = None
    isolate: bool | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_gb: float = DEFAULT_MEMORY_GB

    def __post_init__(self) -> None:
        for name in self.models or []:
            check_name(name, "--model")
        if self.units is not None and (not isinstance(self.units, int) or self.units < 1):
            raise VerifyError(f"--units: expected a positive integer, got {self.units!r}")
        if self.threads is not None and self.threads < 1:
            raise VerifyError(f"--threads: expected a positive integer, got {self.threads!r}")

    @property
    def checkpoint_root(self) -> Path:
        return Path(self.checkpoints) if self.checkpoints is not None else Path(self.out) / "checkpoints"


# ------------------------------------------------------------------------------------------- checks
def implausible(df: pd.DataFrame) -> pd.Series:
    """Per leaderboard row (a DataFrame with ``status``, ``acc_mean``, ``nc1``): True when the row is finished
    with ``acc_mean ≥ PLAUSIBLE_ACC`` and ``nc1 ≤ PLAUSIBLE_NC1``; bool Series aligned with ``df``."""
    if not len(df) or "nc1" not in df.columns:
        return pd.Series(False, index=df.index, dtype=bool)
    ok = df["status"].eq(Status.OK.value)
    acc = pd.to_numeric(df["acc_mean"], errors="coerce")
    nc1 = pd.to_numeric(df["nc1"], errors="coerce")
    return (ok & acc.ge(PLAUSIBLE_ACC) & nc1.le(PLAUSIBLE_NC1)).fillna(False).astype(bool)


PLAUSIBILITY_FLAG = f"acc≥{PLAUSIBLE_ACC:g} & nc1≤{PLAUSIBLE_NC1:g}"
ONE_HOT_FLAG = "one-hot features"


def one_hot_share(features: torch.Tensor) -> float:
    """Share of the rows of ``features`` [N, m] with exactly one nonzero entry (one-hot, or a scaled and
    permuted identity); 0.0 for no rows."""
    if features.ndim != 2 or features.shape[0] == 0:
        return 0.0
    return float(((features != 0).sum(1) == 1).double().mean())


def fresh_option(task: Task) -> tuple[str, str] | None:
    """(dotted task field, loader option) that re-renders the task's target data with a fresh seed, or None
    when its dataset has no such option (real images cannot be drawn again)."""
    name, field = (task.dataset, "dataset") if task.target is None else (task.target.dataset, "target.dataset")
    option = getattr(DATASETS.get(name), "fresh_seed_option", None)
    return (f"{field}.options.{option}", option) if option else None


def fresh_task(task: Task, seed: int) -> Task | None:
    """``task`` with its (target) data rendered with fresh seed ``seed`` and without layer-scope metrics (the
    fresh check needs the target features only); None when the dataset cannot draw fresh data."""
    opt = fresh_option(task)
    if opt is None:
        return None
    try:
        return with_overrides(task, {opt[0]: int(seed), "metrics": [m for m in task.metrics if not uses("layer", [m])]})
    except TaskError as e:  # e.g. a dataset given by name only, without an options mapping to set
        log.warning("task %s: no fresh-seed check (%s)", task.name, "; ".join(e.problems))
        return None


def memorised_threshold(claimed_ci: float | None, fresh_ci: float | None) -> float:
    """The drop ``claimed − fresh`` above which a row counts as memorised: below the claimed CI by more than
    the combined CI, and at least :data:`MIN_DROP`."""
    c, f = claimed_ci or 0.0, fresh_ci or 0.0
    return max(MIN_DROP, c + math.sqrt(c * c + f * f))


def tolerance(claimed_ci: float | None, same_weights: bool) -> float:
    """The |Δacc| a reproduced row may differ by (module docstring)."""
    frac = SAME_WEIGHTS_FRACTION if same_weights else OTHER_WEIGHTS_FRACTION
    return max(ABS_TOLERANCE, frac * (claimed_ci or 0.0))


def _max_rel_diff(claimed: dict[str, Any], reproduced: dict[str, Any]) -> float:
    """Max over the numeric columns both hold of |a − b| / max(|a|, 1e-12); 0.0 when none differ; inf when a
    value is present on one side only."""
    worst = 0.0
    for k, a in claimed.items():
        b = reproduced.get(k)
        if isinstance(a, bool) or isinstance(b, bool):
            worst = worst if a == b else math.inf
            continue
        if a is None or b is None:
            worst = worst if a is b else math.inf
            continue
        worst = max(worst, abs(float(a) - float(b)) / max(abs(float(a)), 1e-12))
    return worst


# ------------------------------------------------------------------------------------------- units
def unit_of(task: Task, rec: Result) -> Unit:
    """The unit a result file was scored from (its zoo entry in the task file, else the backbone, options and
    overrides the result records; a given checkpoint from its provenance); VerifyError when its config hash
    does not come out as recorded (the task file or the model changed since)."""
    key, prov = rec.unit, rec.provenance
    zoo = task.models.get(key.model)
    if zoo is not None and zoo.backbone == key.backbone:
        backbone, options, pretrain = zoo.backbone, zoo.backbone_options, zoo.pretrain
    else:
        backbone, options, pretrain = key.backbone, dict(key.backbone_options or {}), dict(key.pretrain or {})
    if prov.pretrained:
        unit = Unit(task, key.model, backbone, options, key.source_classes, key.seed, pretrain)
    else:
        unit = Unit(task, key.model, backbone, options, key.source_classes, key.seed,
                    checkpoint_path=prov.checkpoint, checkpoint_sha256=prov.checkpoint_sha256)
    if unit.config_hash != key.config_hash:
        raise VerifyError(f"config hash {unit.config_hash} of the rebuilt unit is not the result's {key.config_hash} "
                          "(task file or model changed since)")
    return unit


def find_checkpoint(unit: Unit, root: Path) -> Path | None:
    """The unit's finished checkpoint folder (holding a card) under ``root`` as ``ncbench run`` names it, else
    (a given checkpoint) the path the result names; None when there is none."""
    candidates = [inside(root, checkpoint_dir(unit, RunOptions()).name)]
    if not unit.pretrained and unit.checkpoint_path:
        candidates.append(Path(unit.checkpoint_path))
    for path in candidates:
        if (path / CARD_FILE).is_file() or (path.is_file() and path.name.endswith(".json")):
            return path
    return None


@dataclass
class Scored:
    """A unit scored again: its result and the share of one-hot target features."""

    result: Result
    one_hot: float


def score_checkpoint(unit: Unit, ckpt: Path, sha: str, scratch: Path, opts: VerifyOptions,
                     task: Task | None = None) -> Scored:
    """Score checkpoint ``ckpt`` (weights sha256 ``sha``, from :func:`ncbench.checkpoint.checkpoint_info`) as
    ``unit`` (on ``task``, default the unit's) in ``scratch``: the checkpoint is adopted into
    ``scratch/checkpoints`` and its features extracted afresh (the feature cache there is empty), in a sandbox
    process for an untrusted backbone, then every metric and episode of the task is computed."""
    task = task or unit.task
    adopted = Unit(task, unit.model, unit.backbone, unit.backbone_options, unit.source_classes, unit.seed,
                   unit.pretrain, checkpoint_path=str(Path(ckpt).resolve()), checkpoint_sha256=sha)
    ropts = RunOptions(out=scratch, results=scratch / "results", data_root=opts.data_root, isolate=opts.isolate,
                       timeout_s=opts.timeout_s, memory_gb=opts.memory_gb)
    t0 = time.perf_counter()
    data = unit_data(adopted, ropts)
    feats = unit_features(adopted, ropts, data)
    card = read_card(feats.checkpoint)
    result = scored_result(adopted, data, feats, t0, checkpoint_sha256=sha, device=card.device,
                           world_size=card.world_size, classifier=unit_classifier(data, feats, card), curve=[])
    return Scored(result, one_hot_share(feats.target))


# ------------------------------------------------------------------------------------------- rows
def machine() -> str:
    """What decides bit-identity: the CPU model, the architecture and torch's version."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu or 'unknown CPU'} ({platform.machine()}), torch {torch.__version__}"


def _episodes(rec: Result | None) -> dict[tuple[str, int], EpisodeScore]:
    return {(e.head, e.shots): e for e in rec.episodes} if rec is not None else {}


def unit_rows(rec: Result, result_file: str, result_sha256: str, *, reproduced: Scored | None = None,
              fresh: Scored | None = None, fresh_seed: int | None = None, checkpoint_sha256: str | None = None,
              note: str = "", stamp: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The verification rows (:data:`COLUMNS`) of one claimed result: one per (head, shots), with the verdict.
    ``reproduced`` None: ``unverifiable`` (``note`` says why)."""
    key = rec.unit
    same = checkpoint_sha256 is not None and checkpoint_sha256 == rec.provenance.checkpoint_sha256
    rep, fr = _episodes(reproduced.result if reproduced else None), _episodes(fresh.result if fresh else None)
    rel = (_max_rel_diff({**rec.source, **rec.target},
                         {**reproduced.result.source, **reproduced.result.target}) if reproduced else None)
    one_hot = reproduced.one_hot if reproduced else None
    rows = []
    for ep in rec.episodes:
        r, f = rep.get((ep.head, ep.shots)), fr.get((ep.head, ep.shots))
        row: dict[str, Any] = {
            "task": key.task, "model": key.model, "source_classes": key.source_classes, "seed": key.seed,
            "head": ep.head, "shots": ep.shots, "claimed_acc": ep.acc_mean, "claimed_ci95": ep.acc_ci95,
            "checkpoint_sha256": checkpoint_sha256, "checkpoint_match": same if checkpoint_sha256 else None,
            "result_file": result_file, "result_sha256": result_sha256, "one_hot_share": one_hot,
            "metrics_max_rel_diff": rel if rel is None or math.isfinite(rel) else None,
            "fresh_seed": fresh_seed if f is not None else None, **(stamp or {}),
        }
        notes = [note] if note else []
        flags = []
        if ep.acc_mean is not None and ep.acc_mean >= PLAUSIBLE_ACC and (rec.source.get("nc1") is not None
                                                                         and rec.source["nc1"] <= PLAUSIBLE_NC1):
            flags.append(PLAUSIBILITY_FLAG)
        if one_hot is not None and one_hot >= ONE_HOT_SHARE:
            flags.append(ONE_HOT_FLAG)
        if r is None:
            verdict = "unverifiable"
            if reproduced is not None:
                notes.append("no such (head, shots) in the reproduction")
        else:
            tol = tolerance(ep.acc_ci95, same)
            delta = r.acc_mean - ep.acc_mean
            row.update(reproduced_acc=r.acc_mean, delta=delta, tolerance=tol, identical=r.per_episode == ep.per_episode)
            verdict = "verified" if abs(delta) <= tol else "mismatch"
            if rel is not None and not math.isfinite(rel):
                notes.append("a metric column is empty on one side only")
        if f is not None:
            threshold = memorised_threshold(ep.acc_ci95, f.acc_ci95)
            row.update(fresh_acc=f.acc_mean, fresh_ci95=f.acc_ci95, fresh_threshold=threshold)
            if verdict == "verified" and ep.acc_mean - f.acc_mean > threshold:
                verdict = "memorised"
        row.update(verdict=verdict, flags="; ".join(flags) or None, note="; ".join(notes) or None)
        rows.append(row)
    return rows


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Verification rows -> typed DataFrame with exactly :data:`COLUMNS`, sorted by :data:`KEY`."""
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for c, kind in COLUMNS.items():
        if kind is int:
            df[c] = pd.array(pd.to_numeric(df[c]), dtype="Int64")
        elif kind is str:
            df[c] = df[c].astype("string")
        elif kind is bool:
            df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v))
                              else (v if isinstance(v, bool) else str(v) == "True")).astype("boolean")
        else:
            df[c] = pd.to_numeric(df[c]).astype("float64")
    return df.sort_values(KEY, kind="mergesort").reset_index(drop=True)


# ------------------------------------------------------------------------------------------- storage
def verified_path(leaderboards_dir: Path, task: str) -> Path:
    """``<leaderboards>/<task>-verified.csv``."""
    return inside(leaderboards_dir, f"{check_name(task, 'task')}{SUFFIX}")


def is_verification_file(path: Path) -> bool:
    """Whether ``path`` is named like a verification CSV (``*-verified.csv``), not a leaderboard."""
    return Path(path).name.endswith(SUFFIX)


def read(leaderboards_dir: Path, task: str) -> pd.DataFrame | None:
    """The task's verification rows (:func:`to_frame`), or None when it has no ``<task>-verified.csv``;
    ValueError naming the file when it is not one."""
    path = verified_path(leaderboards_dir, task)
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path}: cannot read verification CSV ({e})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (expected those of ncbench.verify.COLUMNS)")
    bad = ~df["verdict"].isin(VERDICTS)
    if bad.any():
        raise ValueError(f"{path}: column 'verdict': expected one of {VERDICTS}, got {df.loc[bad, 'verdict'].iloc[0]!r}")
    try:
        return to_frame(df.to_dict("records"))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: a value of the wrong type ({e})") from None


def merge(old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """``new`` rows replace ``old`` rows of the same :data:`KEY`, except that an ``unverifiable`` row never
    replaces a decided one made from the same result file (a later run without the checkpoint proves nothing)."""
    if old is None or not len(old):
        return to_frame(new.to_dict("records"))
    keep_old = old.merge(new[KEY + ["verdict", "result_sha256"]], on=KEY, how="left", suffixes=("", "_new"),
                         indicator=True)
    replaced = keep_old["_merge"].eq("both") & ~(keep_old["verdict_new"].eq("unverifiable")
                                                  & ~keep_old["verdict"].eq("unverifiable")
                                                  & keep_old["result_sha256_new"].eq(keep_old["result_sha256"]))
    kept = old[~replaced.to_numpy()]
    newer = new.merge(kept[KEY], on=KEY, how="left", indicator=True)
    added = new[newer["_merge"].eq("left_only").to_numpy()]
    return to_frame(pd.concat([kept, added]).to_dict("records"))


def to_csv_text(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n")


def write(leaderboards_dir: Path, task: str, rows: pd.DataFrame) -> Path:
    """Merge ``rows`` into ``<leaderboards>/<task>-verified.csv`` (:func:`merge`) under its lock, atomically."""
    path = verified_path(leaderboards_dir, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        atomic_write_text(path, to_csv_text(merge(read(leaderboards_dir, task), rows)))
    return path


def current(df: pd.DataFrame | None, results_dir: Path) -> pd.DataFrame | None:
    """``df`` with the verdict of every row whose result file is missing or changed since (another sha256)
    replaced by :data:`STALE`."""
    if df is None:
        return None
    df = df.copy()
    digests: dict[str, str | None] = {}
    for rel in df["result_file"].dropna().unique():
        path = Path(results_dir) / rel
        digests[rel] = sha256_file(path) if path.is_file() else None
    now = df["result_file"].map(lambda r: digests.get(r) if isinstance(r, str) else None)
    df.loc[~df["result_sha256"].eq(now).fillna(False).astype(bool), "verdict"] = STALE
    return df


def marks(leaderboards_dir: Path, results_dir: Path, task: str) -> pd.DataFrame | None:
    """The task's verification rows as they stand now (:func:`read`, then :func:`current`); None without a
    ``<task>-verified.csv``."""
    return current(read(leaderboards_dir, task), results_dir)


def unit_verdicts(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, source_classes, seed) of verification rows ``df``: the unit's verdict, the worst of
    its rows (stale > mismatch > memorised > unverifiable > verified)."""
    order = {STALE: 0, "mismatch": 1, "memorised": 2, "unverifiable": 3, "verified": 4}
    d = df.assign(rank=df["verdict"].map(order))
    worst = d.sort_values("rank", kind="mergesort").drop_duplicates(["model", "source_classes", "seed"])
    return worst[["model", "source_classes", "seed", "verdict"]].sort_values(
        ["model", "source_classes", "seed"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------------- driver
def candidates(task: Task, opts: VerifyOptions, canon: Any = None) -> list[tuple[Path, Result]]:
    """The task's finished result files matching the options' filters, in path order."""
    out = []
    for path, rec in iter_results(opts.results, task.name, canon):
        u = rec.unit
        if not rec.ok or (opts.models and u.model not in opts.models):
            continue
        if (opts.source_classes and u.source_classes not in opts.source_classes) or (opts.seeds and u.seed not in opts.seeds):
            continue
        out.append((path, rec))
    return out


def sample(items: list, n: int | None, seed: int) -> list:
    """``n`` of ``items`` drawn without replacement with ``seed`` (all when ``n`` is None or ≥ len), in order."""
    if n is None or n >= len(items):
        return list(items)
    pick = np.random.default_rng(seed).choice(len(items), n, replace=False)
    return [items[i] for i in sorted(pick)]


def verify_task(task: Task, opts: VerifyOptions, canon: Any = None) -> pd.DataFrame:
    """Verify a sample of ``task``'s finished units (module docstring); returns their verification rows
    (:func:`to_frame`), not yet written."""
    if opts.checkpoints is not None and not Path(opts.checkpoints).is_dir():
        raise VerifyError(f"--checkpoints: {opts.checkpoints} is not a folder")
    public = (task.dataset_options if task.target is None else task.target.dataset_options).get("seed", 0)
    if opts.fresh_seed is not None and opts.fresh_seed == public:
        raise VerifyError(f"--fresh-seed: {opts.fresh_seed} is the seed of the public render; give another")
    chosen = sample(candidates(task, opts, canon), opts.units, opts.sample_seed)
    if not chosen:
        raise VerifyError(f"task {task.name!r}: no finished result under {opts.results} matches the filters "
                          f"(--model {opts.models or 'any'}, --source-classes {opts.source_classes or 'any'}, "
                          f"--seeds {opts.seeds or 'any'})")
    fresh_seed = opts.fresh_seed if opts.fresh_seed is not None else secrets.randbelow(2**31 - 1) + 1
    fresh_seed = fresh_seed + 1 if fresh_seed == public else fresh_seed  # never the public render
    fresh = fresh_task(task, fresh_seed) if opts.fresh else None
    if opts.fresh and fresh is None:
        log.info("task %s: dataset %r cannot render fresh data; no fresh-seed check", task.name, task.dataset)
    set_threads(opts.threads)
    stamp = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
             "threads": torch.get_num_threads(), "ncbench_version": __version__, "git_commit": git_commit()}
    rows = []
    Path(opts.out).mkdir(parents=True, exist_ok=True)
    for path, rec in chosen:
        rel = Path(path).relative_to(opts.results).as_posix()
        common = dict(stamp=stamp, fresh_seed=fresh_seed)
        name = f"{rec.unit.model} s={rec.unit.source_classes} seed {rec.unit.seed}"
        try:
            unit = unit_of(task, rec)
        except VerifyError as e:
            rows += unit_rows(rec, rel, sha256_file(path), note=f"unverifiable: {e}", **common)
            continue
        ckpt = find_checkpoint(unit, opts.checkpoint_root)
        if ckpt is None and opts.pretrain_missing and unit.pretrained:
            log.info("%s: no checkpoint under %s; pretraining it (--pretrain-missing)", name, opts.checkpoint_root)
            ckpt = pretrain_unit(unit, RunOptions(out=opts.out, data_root=opts.data_root, isolate=opts.isolate,
                                                  timeout_s=opts.timeout_s, memory_gb=opts.memory_gb))
        if ckpt is None:
            log.warning("%s: unverifiable, no checkpoint under %s", name, opts.checkpoint_root)
            rows += unit_rows(rec, rel, sha256_file(path), note=f"unverifiable: no checkpoint under "
                              f"{opts.checkpoint_root}", **common)
            continue
        scratch = Path(tempfile.mkdtemp(prefix=".verify-", dir=opts.out))
        try:
            sha = checkpoint_info(ckpt).sha256
            log.info("%s: re-extracting features from %s", name, ckpt)
            reproduced = score_checkpoint(unit, ckpt, sha, scratch / "reproduce", opts)
            again = None
            if fresh is not None:
                log.info("%s: scoring a fresh render (seed %d)", name, fresh_seed)
                again = score_checkpoint(unit, ckpt, sha, scratch / "fresh", opts, task=fresh)
        except (CheckpointError, ValueError, RuntimeError, OSError) as e:
            log.warning("%s: unverifiable: %s", name, e)
            rows += unit_rows(rec, rel, sha256_file(path), note=f"unverifiable: {type(e).__name__}: {e}", **common)
            continue
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        rows += unit_rows(rec, rel, sha256_file(path), reproduced=reproduced, fresh=again, checkpoint_sha256=sha,
                          note="" if sha == rec.provenance.checkpoint_sha256 else
                          "checkpoint sha256 differs from the claimed one (re-pretrained or replaced)", **common)
    return to_frame(rows)


def summary_lines(df: pd.DataFrame) -> list[str]:
    """Human-readable lines: one per row, then the verdict counts."""
    lines = []
    for r in df.itertuples():
        rep = "–" if pd.isna(r.reproduced_acc) else f"{r.reproduced_acc:.4f} (Δ {r.delta:+.2g}, tol {r.tolerance:.2g}" \
              + (", identical)" if pd.notna(r.identical) and bool(r.identical) else ")")
        fr = "" if pd.isna(r.fresh_acc) else f"  fresh {r.fresh_acc:.4f}"
        flags = "" if pd.isna(r.flags) else f"  [{r.flags}]"
        note = "" if pd.isna(r.note) else f"  ({r.note})"
        lines.append(f"{r.model} s={r.source_classes} seed {r.seed} {r.head} {r.shots}-shot: claimed "
                     f"{r.claimed_acc:.4f} ± {r.claimed_ci95 if pd.notna(r.claimed_ci95) else 0:.4f}, reproduced {rep}"
                     f"{fr}: {r.verdict}{flags}{note}")
    counts = df["verdict"].value_counts()
    lines.append(", ".join(f"{int(counts.get(v, 0))} {v}" for v in VERDICTS) + f" of {len(df)} rows"
                 + f" ({int(df['identical'].eq(True).sum())} bit-identical)")
    return lines


def checks_failed(df: pd.DataFrame) -> bool:
    """Whether a row is a mismatch or memorised (the command's exit code 1)."""
    return bool(df["verdict"].isin(["mismatch", "memorised"]).any())


def env_threads() -> int | None:
    """``$NCBENCH_THREADS`` when set, else 1: the thread count of the committed leaderboards' workers."""
    value = os.environ.get(THREADS_ENV)
    return int(value) if value and value.isdigit() and int(value) > 0 else 1

