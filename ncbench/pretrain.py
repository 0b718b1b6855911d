"""Pretrain a backbone on s source classes, past zero training error, and watch neural collapse happen.

``pretrain(...)`` trains ``backbone → classifier`` (a learnable linear layer, or a fixed simplex ETF) with
cross-entropy or MSE on one-hot targets, SGD with momentum and weight decay, and a per-epoch learning-rate
schedule. Every run is seeded and deterministic on CPU: the model is initialised under ``seed``, and epoch
e shuffles with a ``torch.Generator`` seeded from (seed, e) and reseeds torch's global RNG inside a forked
RNG state, so a run resumed from its last epoch checkpoint ends with the same weights as an uninterrupted one.

Launched as G processes (``torchrun``, or a submitit job with G tasks; see ``ncbench.distributed``) the same
function trains one model with DistributedDataParallel: every process draws the same epoch permutation and
takes every G-th image of each batch, and losses are scaled so the averaged gradient is that of the whole
batch of ``batch_size`` images. BatchNorm statistics are per process, so the weights are close to, not
identical with, single-process training. Rank 0 alone tracks collapse and writes files; the card records
``world_size`` and ``device``.

Pretraining trains; a :class:`Tracker` given by the caller watches (``ncbench.tracking.CollapseTracker``
measures the task's collapse metrics), so this module needs neither features nor metrics.

Files in ``out_dir``: ``run.json`` (what the run is), ``resume/`` (last epoch state, removed at the end),
``curve.csv`` (one row per epoch: lr, loss, running accuracy, and at tracked epochs the tracker's row:
accuracy, CDNV, NC1–NC4 of source train/test features, effective depth), ``layer_curve.csv`` (long form:
epoch, layer, variant, ncc_error, ncc_errors, n, cdnv per probed layer; see ``ncbench.layerwise``), then
``model.safetensors`` and ``card.json`` (see ncbench.checkpoint). With ``$NCBENCH_TENSORBOARD`` set to a
folder (and the ``ncbench[tensorboard]`` extra installed) the same curves are also logged live as TensorBoard
scalars under ``<that folder>/<out_dir's name>/``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ncbench import distributed
from ncbench.backbones import build_backbone, extract
from ncbench.checkpoint import CARD_FILE, Card, CheckpointError, read_card, read_weights, save_checkpoint, save_tensors
from ncbench.data.base import ImageDataset
from ncbench.data.preprocessing import preprocessing_of, to_input
from ncbench.files import atomic_write, sha256_file, write_json
from ncbench.recipe import PretrainConfig, is_int
from ncbench.runtime import set_threads

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
RESUME_DIR = "resume"
CURVE_FILE = "curve.csv"
LAYER_CURVE_FILE = "layer_curve.csv"
LOOP_COLUMNS = ("epoch", "lr", "loss", "running_acc")  # curve.csv columns of every epoch; a tracker adds the rest
TENSORBOARD_ENV = "NCBENCH_TENSORBOARD"  # a folder: also log the curves there as TensorBoard scalars


def simplex_etf(num_classes: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """A simplex equiangular tight frame [K, m]: unit rows with pairwise cosine −1/(K−1), randomly rotated
    into R^m (needs m ≥ K − 1)."""
    k = num_classes
    if dim < k - 1:
        raise ValueError(f"classifier 'etf' needs feature_dim >= num_classes - 1, got feature_dim {dim} for {k} classes")
    centred = torch.eye(k, dtype=torch.float64) - 1.0 / k
    basis = torch.linalg.eigh(centred).eigenvectors[:, 1:]  # [K, K-1], orthonormal basis of 1^⊥
    rows = basis / basis.norm(dim=1, keepdim=True)
    rotation, _ = torch.linalg.qr(torch.randn(dim, k - 1, generator=generator, dtype=torch.float64))  # [m, K-1]
    return (rows @ rotation.T).to(torch.float32)


def _make_classifier(kind: str, dim: int, k: int, seed: int) -> nn.Linear:
    if kind == "linear":
        return nn.Linear(dim, k)
    head = nn.Linear(dim, k, bias=False)
    head.weight.data.copy_(simplex_etf(k, dim, torch.Generator().manual_seed(seed)))
    head.weight.requires_grad_(False)
    return head


def _loss(kind: str, logits: torch.Tensor, target: torch.Tensor, mse: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """The batch's mean loss; ``mse`` = (k, M) of the rescaled squared error (see PretrainConfig)."""
    weight, scale = mse
    if kind == "ce":
        return F.cross_entropy(logits, target)
    onehot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    if weight == 1 and scale == 1:
        return F.mse_loss(logits, onehot, reduction="sum") / len(target)
    return ((1 + (weight - 1) * onehot) * (logits - scale * onehot).square()).sum() / len(target)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"ncbench-pretrain/{seed}/{epoch}".encode()).digest()[:8], "little") >> 1


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _check_indices(name: str, idx: Any, n: int) -> np.ndarray:
    arr = np.asarray(idx)
    if arr.ndim != 1 or len(arr) == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be a non-empty 1-D integer array, got {arr.dtype} {arr.shape}")
    if arr.min() < 0 or arr.max() >= n:
        raise ValueError(f"{name} must index the dataset's {n} images, got values in {arr.min()}..{arr.max()}")
    return arr.astype(np.int64)


def source_labels(dataset: ImageDataset, idx: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Pretraining labels of ``dataset.images[idx]``: 0..s-1, the position of each image's class among the
    sorted source ``classes`` (the classifier's rows follow the same order)."""
    return np.searchsorted(classes, dataset.labels[idx])


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class _Resume:
    """Last-epoch training state in ``out_dir/resume``: ``epoch-NNNN.safetensors`` (model, classifier,
    SGD momentum buffers) and ``state.json`` pointing at it (written after it, atomically)."""

    def __init__(self, out_dir: Path):
        self.dir = out_dir / RESUME_DIR
        self.state_file = self.dir / "state.json"

    def save(self, epoch: int, model: nn.Module, head: nn.Module, opt: torch.optim.SGD, records: list[dict]) -> None:
        self.dir.mkdir(exist_ok=True)
        tensors = {f"backbone.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"classifier.{k}": v for k, v in head.state_dict().items()})
        for i, p in enumerate(opt.param_groups[0]["params"]):
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"optimizer.{i}.momentum_buffer"] = buf
        name = f"epoch-{epoch:04d}.safetensors"
        digest = save_tensors(self.dir / name, tensors)
        write_json(self.state_file, {"epoch": epoch, "weights": name, "sha256": digest, "records": records})
        for old in self.dir.glob("epoch-*.safetensors"):
            if old.name != name:
                old.unlink()

    def load(self, model: nn.Module, head: nn.Module, opt: torch.optim.SGD) -> tuple[int, list[dict]]:
        """Restore the last saved epoch; returns (epochs done, curve records); (0, []) when there is none."""
        if not self.state_file.is_file():
            return 0, []
        state = json.loads(self.state_file.read_text())
        path = self.dir / state["weights"]
        if sha256_file(path) != state["sha256"]:
            raise CheckpointError(f"resume state {str(path)!r} does not match the sha256 in {str(self.state_file)!r}")
        tensors = read_weights(path)
        model.load_state_dict({k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")})
        head.load_state_dict({k.removeprefix("classifier."): v for k, v in tensors.items() if k.startswith("classifier.")})
        for i, p in enumerate(opt.param_groups[0]["params"]):
            buf = tensors.get(f"optimizer.{i}.momentum_buffer")
            if buf is not None:
                opt.state[p]["momentum_buffer"] = buf.to(p.device)
        return int(state["epoch"]), state["records"]

    def clear(self) -> None:
        for f in self.dir.glob("*"):
            f.unlink()
        if self.dir.is_dir():
            self.dir.rmdir()


@dataclass
class LabelledImages:
    """Images uint8 [N, H, W, C] and labels int64 [N] in 0..s-1 (the source classes in sorted order)."""

    images: np.ndarray
    labels: np.ndarray


class Tracker(Protocol):
    """What watches collapse during pretraining (``ncbench.tracking.CollapseTracker``): called on rank 0
    before training and at every tracked epoch with the model, its classifier, the source TRAIN and TEST
    images and the preprocessing; returns (scalar row, per-layer rows) for ``curve.csv`` and
    ``layer_curve.csv``. ``identity``: what it records, part of the run's identity (a run resumed with
    another tracker would mix curves)."""

    identity: dict[str, Any]

    def __call__(self, model: nn.Module, head: nn.Linear, train: LabelledImages, test: LabelledImages | None,
                 preprocessing: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]: ...


def _classifier_tensors(head: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    return head.weight.detach(), None if head.bias is None else head.bias.detach()


def _accuracy(head: nn.Linear, features: torch.Tensor, labels: np.ndarray) -> float:
    """Classifier accuracy on features [N, m] with labels [N] in 0..s-1."""
    with torch.inference_mode():
        return float((head(features.to(head.weight.device)).argmax(1).cpu().numpy() == labels).mean())


def _csv_bytes(rows: list[dict], lead: list[str]) -> bytes:
    """CSV of ``rows``: the ``lead`` columns, then the other keys sorted; missing values are empty cells."""
    rest = sorted({k for r in rows for k in r} - set(lead))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=lead + rest, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return buf.getvalue().encode()


def _write_curves(out_dir: Path, records: list[dict]) -> None:
    scalars = [{k: v for k, v in r.items() if k != "layers"} for r in records]
    layers = [{"epoch": r["epoch"], **lr} for r in records for lr in r.get("layers", [])]
    atomic_write(out_dir / CURVE_FILE, _csv_bytes(scalars, list(LOOP_COLUMNS)))
    if layers:
        atomic_write(out_dir / LAYER_CURVE_FILE, _csv_bytes(layers, ["epoch", "layer", "variant", "ncc_error", "ncc_errors", "n", "cdnv"]))


class _TensorBoard:
    """The curve records as TensorBoard scalars under ``$NCBENCH_TENSORBOARD/<out_dir's name>/`` when that
    variable is set (``pretrain/<column>`` per epoch, ``layers/<layer>/<variant>/<ncc_error|cdnv>`` at tracked
    epochs), else nothing. Logging only: curve.csv stays the record."""

    def __init__(self, out_dir: Path):
        root = os.environ.get(TENSORBOARD_ENV)
        self.writer = None
        if root:
            try:
                from torch.utils.tensorboard import SummaryWriter  # lazy: optional, the tensorboard extra
            except ImportError:
                raise ValueError(f"${TENSORBOARD_ENV} is set ({root}) but TensorBoard is not installed: "
                                 "pip install 'ncbench[tensorboard]'") from None
            self.writer = SummaryWriter(log_dir=str(Path(root) / out_dir.name))

    def log(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = record["epoch"]
        scalars = {f"pretrain/{k}": v for k, v in record.items() if k not in ("epoch", "layers")}
        for layer in record.get("layers", []):
            scalars.update({f"layers/{layer['layer']}/{layer['variant']}/{k}": layer.get(k) for k in ("ncc_error", "cdnv")})
        for tag, v in scalars.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
                self.writer.add_scalar(tag, v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _check_same_run(out_dir: Path, identity: dict) -> None:
    run_file = out_dir / RUN_FILE
    if not run_file.is_file():
        return
    previous = json.loads(run_file.read_text())
    differ = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
    if differ:
        detail = "; ".join(f"{k}: {previous.get(k)!r} there, {identity.get(k)!r} now" for k in differ)
        raise CheckpointError(f"{str(out_dir)!r} holds a different pretraining run ({detail}); use another out_dir or delete it")


class _Net(nn.Module):
    """backbone → classifier as one module, the unit DistributedDataParallel wraps."""

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> logits [B, K]
        return self.head(self.backbone(x))


def _train_epoch(net: nn.Module, opt: torch.optim.SGD, images: torch.Tensor, labels: torch.Tensor,
                 pp: dict, loss_kind: str, batch_size: int, generator: torch.Generator,
                 clip_grad_norm: float | None = None, mse: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float]:
    """One epoch over shuffled full batches of images uint8 [N, H, W, C] (CPU) and labels [N]; returns
    (mean loss, running accuracy) over the whole group.

    With G processes each takes every G-th image of the batch, and its loss is scaled by n_local·G / B so
    that DDP's gradient average equals the gradient of the batch's mean loss."""
    where = distributed.place()
    dev = next(net.parameters()).device
    net.train()
    n = len(labels)
    bs = min(batch_size, n)
    if bs < where.world_size:
        raise ValueError(f"a batch of {bs} images cannot be shared by {where.world_size} processes")
    order = torch.randperm(n, generator=generator)
    total_loss = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    steps = n // bs
    for b in range(steps):
        idx = order[b * bs : (b + 1) * bs][where.rank :: where.world_size]
        target = labels[idx].to(dev)
        logits = net(to_input(images[idx], pp).to(dev))
        loss = _loss(loss_kind, logits, target, mse)
        if where.world_size > 1:
            loss = loss * (len(idx) * where.world_size / bs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(net.parameters(), clip_grad_norm)
        opt.step()
        total_loss += loss.detach()
        correct += (logits.detach().argmax(1) == target).sum()
    loss_sum, correct_sum = distributed.all_sum([float(total_loss) / where.world_size, float(correct)])
    return loss_sum / steps, int(correct_sum) / (steps * bs)


@dataclass(frozen=True)
class _Run:
    """A checked pretraining run: what it trains on, with what recipe, and its identity (``run.json``)."""

    backbone: str
    options: dict[str, Any]          # build_backbone options, in_channels and image_size included
    config: PretrainConfig           # the recipe for this many images (PretrainConfig.for_size)
    train: LabelledImages
    test: LabelledImages | None
    classes: np.ndarray              # [s] dataset class indices, sorted
    preprocessing: dict[str, Any]
    identity: dict[str, Any]

    @property
    def run_id(self) -> str:
        return _digest(self.identity)


def _plan_run(backbone: str, dataset: ImageDataset, train_idx: Any, test_idx: Any, config: PretrainConfig, *,
              seed: int, backbone_options: dict | None, card_extra: dict | None, tracker: Tracker | None,
              norm_idx: Any, norm_source: str | None) -> _Run:
    """Validate the arguments of :func:`pretrain` and gather the run they describe."""
    if not isinstance(config, PretrainConfig):
        raise ValueError(f"config must be a PretrainConfig, got {type(config).__name__}")
    if not is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    clash = sorted(set(card_extra or {}) & {f.name for f in dataclasses.fields(Card)})
    if clash:
        raise ValueError(f"card_extra keys {clash} are card fields set by pretrain; use other names")
    n = len(dataset.labels)
    train_idx = _check_indices("train_idx", train_idx, n)
    classes = np.unique(dataset.labels[train_idx])
    if len(classes) < 2:
        raise ValueError(f"train_idx must cover at least 2 classes, got {len(classes)}")
    train = LabelledImages(np.ascontiguousarray(dataset.images[train_idx]), source_labels(dataset, train_idx, classes))
    test = None
    if test_idx is not None:
        test_idx = _check_indices("test_idx", test_idx, n)
        if not np.isin(dataset.labels[test_idx], classes).all():
            raise ValueError("test_idx holds images of classes that are not in train_idx")
        test = LabelledImages(np.ascontiguousarray(dataset.images[test_idx]), source_labels(dataset, test_idx, classes))
    config = config.for_size(len(train_idx))
    options = {"in_channels": dataset.channels, "image_size": list(dataset.image_size), **(backbone_options or {})}
    if norm_idx is None:
        norm_idx, norm_source = train_idx, norm_source or "pretraining train images (train_idx)"
    pp = preprocessing_of(dataset, _check_indices("norm_idx", norm_idx, n), source=norm_source or "norm_idx images")
    identity = {
        "backbone": backbone,
        "backbone_options": options,
        "dataset": dataset.name,
        "source_classes": [dataset.class_names[c] for c in classes],
        "train_idx_sha256": hashlib.sha256(train_idx.tobytes()).hexdigest(),
        "test_idx_sha256": None if test_idx is None else hashlib.sha256(test_idx.tobytes()).hexdigest(),
        "recipe": {k: v for k, v in dataclasses.asdict(config).items() if k != "num_threads"},
        "seed": int(seed),
        "preprocessing": pp,
        **(tracker.identity if tracker is not None else {}),
    }
    identity = json.loads(json.dumps(identity))  # tuples -> lists, as read back from run.json
    return _Run(backbone, options, config, train, test, classes, pp, identity)


def _finished(out_dir: Path, run: _Run) -> bool:
    """Whether ``out_dir`` already holds this run's checkpoint; CheckpointError if it holds another run's."""
    _check_same_run(out_dir, run.identity)
    if not (out_dir / CARD_FILE).is_file():
        return False
    if read_card(out_dir).run_id != run.run_id:
        raise CheckpointError(f"{str(out_dir)!r} holds the checkpoint of a different run; use another out_dir")
    return True


def _train(run: _Run, out_dir: Path, seed: int, tracker: Tracker | None) -> tuple[nn.Module, nn.Linear, list[dict]]:
    """Build (or resume) the model and classifier and train them for ``run.config.epochs``; returns them and
    the curve records (rank 0 writes the resume state and curves after every epoch)."""
    config, train, where, dev = run.config, run.train, distributed.place(), distributed.device()
    track = tracker if config.track_every and where.is_main else None
    images_t, labels_t = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    resume = _Resume(out_dir)
    with _deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_backbone(run.backbone, **run.options).to(dev)
        head = _make_classifier(config.classifier, model.feature_dim, len(run.classes), seed).to(dev)
        params = [p for p in (*model.parameters(), *head.parameters()) if p.requires_grad]
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        start, records = resume.load(model, head, opt)
        board = _TensorBoard(out_dir) if where.is_main else None
        if start:
            logger.info("resuming %s from epoch %d of %d", out_dir, start, config.epochs)
        elif track is not None:
            row, layer_rows = track(model, head, train, run.test, run.preprocessing)
            records.append({"epoch": 0, **row, "layers": layer_rows})
            board.log(records[-1])
        net = _parallel(_Net(model, head), run.backbone)
        bar = tqdm(range(start, config.epochs), initial=start, total=config.epochs, desc=f"pretrain {run.backbone}",
                   unit="epoch", disable=None if where.is_main else True)
        for epoch in bar:
            lr = config.lr_at(epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            torch.manual_seed(_epoch_seed(seed, epoch))
            generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
            loss, acc = _train_epoch(net, opt, images_t, labels_t, run.preprocessing, config.loss, config.batch_size,
                                     generator, config.clip_grad_norm, (config.mse_weight, config.mse_target))
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "loss": loss, "running_acc": acc}
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}")
            if not where.is_main:
                continue
            if track is not None and ((epoch + 1) % config.track_every == 0 or epoch + 1 == config.epochs):
                row, layer_rows = track(model, head, train, run.test, run.preprocessing)
                record.update(row, layers=layer_rows)
            records.append(record)
            resume.save(epoch + 1, model, head, opt, records)
            _write_curves(out_dir, records)
            board.log(record)
        if board is not None:
            board.close()
    return model, head, records


def _parallel(net: nn.Module, backbone: str) -> nn.Module:
    """``net`` wrapped in DistributedDataParallel inside a process group of several processes, else itself."""
    where, dev = distributed.place(), distributed.device()
    if where.world_size == 1:
        return net
    # a size-1 dimension (e.g. a conv on one input channel) gives grads other strides than DDP's buckets:
    # harmless, but torch warns at every step
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    logger.info("training %s with DistributedDataParallel on %d processes (%s)", backbone, where.world_size, dev)
    return nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)


def _save(run: _Run, out_dir: Path, model: nn.Module, head: nn.Linear, records: list[dict], seed: int,
          dataset_name: str, card_extra: dict | None) -> Card:
    """Write the weights and the card (rank 0); the card's train accuracy is the last tracked one, else measured."""
    last = records[-1]  # the last epoch's record (every epoch appends one)
    if "train_acc" in last:  # tracked at the last epoch
        train_acc = last["train_acc"]
    else:
        train_acc = _accuracy(head, extract(model, run.train.images, run.preprocessing), run.train.labels)
    weight, bias = _classifier_tensors(head)
    card = Card(
        backbone=run.backbone,
        backbone_options=run.options,
        feature_dim=int(model.feature_dim),
        dataset=dataset_name,
        source_classes=run.identity["source_classes"],
        num_train=len(run.train.labels),
        recipe=dataclasses.asdict(run.config),
        seed=int(seed),
        epochs=run.config.epochs,
        preprocessing=run.preprocessing,
        run_id=run.run_id,
        train_loss=last["loss"],
        train_acc=train_acc,
        world_size=distributed.place().world_size,
        device=distributed.device().type,
        extra=dict(card_extra or {}),
    )
    return save_checkpoint(out_dir, model, card, classifier={"weight": weight, "bias": bias})


def pretrain(
    backbone: str,
    dataset: ImageDataset,
    train_idx: np.ndarray,
    test_idx: np.ndarray | None,
    config: PretrainConfig,
    out_dir: Path,
    *,
    seed: int,
    backbone_options: dict | None = None,
    card_extra: dict | None = None,
    tracker: Tracker | None = None,
    norm_idx: np.ndarray | None = None,
    norm_source: str | None = None,
) -> Path:
    """Train ``backbone`` on ``dataset.images[train_idx]`` (labels remapped to 0..s-1 in sorted order of the
    original labels) and write the checkpoint, card and collapse curves into ``out_dir``; returns ``out_dir``.

    ``test_idx`` (held-out images of the same source classes) is only used for tracking. A partial run in
    ``out_dir`` with the same inputs is resumed; a finished one is returned at once; a different run there
    raises CheckpointError. ``card_extra`` keys (e.g. ``name``, ``task``) are added to the card.
    ``tracker`` (e.g. ``ncbench.tracking.CollapseTracker(eps)``) records collapse before training and every
    ``config.track_every`` epochs into ``curve.csv`` / ``layer_curve.csv``; without one nothing is tracked.
    The normalisation mean / std (card ``preprocessing``, part of the run's identity) are computed from
    ``dataset.images[norm_idx]`` (int [n]; default ``train_idx``), described as ``norm_source`` in
    ``preprocessing["normalization"]``; the pipeline passes the TRAIN images of the task's whole source pool.
    Inside a process group (``ncbench.distributed.session``) every process calls this with the same
    arguments; they train one model with DistributedDataParallel and rank 0 writes the files.
    """
    run = _plan_run(backbone, dataset, train_idx, test_idx, config, seed=seed, backbone_options=backbone_options,
                    card_extra=card_extra, tracker=tracker, norm_idx=norm_idx, norm_source=norm_source)
    out_dir = Path(out_dir)
    if _finished(out_dir, run):
        logger.info("%s already holds this finished checkpoint", out_dir)
        return out_dir
    distributed.barrier()  # every process has looked for the card before rank 0 can write one
    if distributed.place().is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / RUN_FILE, run.identity)
    set_threads(run.config.num_threads)
    model, head, records = _train(run, out_dir, seed, tracker)
    if not distributed.place().is_main:
        distributed.barrier()  # until rank 0 has written the checkpoint
        return out_dir
    with _deterministic():
        card = _save(run, out_dir, model, head, records, seed, dataset.name, card_extra)
    _Resume(out_dir).clear()
    distributed.barrier()
    logger.info("pretrained %s on %d classes: train accuracy %.4f, loss %.4g -> %s", backbone, len(run.classes),
                card.train_acc, card.train_loss, out_dir)
    return out_dir
