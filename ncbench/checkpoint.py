"""Trusted, reusable checkpoints: ``model.safetensors`` + a typed ``card.json`` next to it.

The weights file holds the backbone's state dict under ``backbone.<key>`` and, when the run had one, the
source classifier under ``classifier.weight`` / ``classifier.bias``. The card says what the weights are,
what they were trained on and how, and carries their sha256, which :func:`load_checkpoint` verifies
before anything is read. Files are written atomically (temporary file + ``os.replace``); the card is
written last, so a directory with a card holds a finished checkpoint. Pickles are never unpickled
unless ``allow_pickle=True`` is passed, and then only with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

import ncbench
from ncbench.backbones import build_backbone
from ncbench.files import atomic_write, sha256_file, write_json
from ncbench.runtime import git_commit

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
CARD_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted (sha256 mismatch) or inconsistent; names the file."""


@dataclass
class Card:
    """What a checkpoint is (MTEB-style metadata record), stored flat as ``card.json``.

    Keys of ``extra`` (e.g. ``name: conv4.glyphs-s20-seed0``, ``task``) are written at the top level of
    the JSON and read back into ``extra``. ``backbone_options`` holds every option given to
    ``build_backbone`` (including ``in_channels`` and ``image_size``), so the card alone rebuilds the model.
    ``preprocessing`` is ``{"image_size": [H, W], "channels": C, "mean": [C floats], "std": [C floats],
    "transform": {...}, "normalization": {"source": str, "images": n, "classes": k}}``: the dataset's
    transform record (:mod:`ncbench.data.transforms`) and where mean / std were computed
    (:mod:`ncbench.data.preprocessing`); cards written before those two keys existed still load.
    """

    backbone: str
    backbone_options: dict[str, Any]
    feature_dim: int
    dataset: str
    source_classes: list[str]
    num_train: int
    recipe: dict[str, Any]
    seed: int
    epochs: int
    preprocessing: dict[str, Any]
    run_id: str = ""
    train_loss: float | None = None
    train_acc: float | None = None
    world_size: int = 1        # processes that trained it (DistributedDataParallel when > 1)
    device: str = "cpu"        # device type it was trained on ("cpu", "cuda")
    weights: str = WEIGHTS_FILE
    sha256: str = ""
    format: int = CARD_FORMAT
    ncbench_version: str = field(default_factory=lambda: ncbench.__version__)
    git_commit: str | None = field(default_factory=git_commit)
    torch_version: str = field(default_factory=lambda: torch.__version__)
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        clash = sorted(set(extra) & set(d))
        if clash:
            raise ValueError(f"card extra keys {clash} clash with card fields")
        return {**d, **extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "card") -> "Card":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise CheckpointError(f"{source}: missing card field(s) {missing}")
        if d.get("format", CARD_FORMAT) != CARD_FORMAT:
            raise CheckpointError(f"{source}: card format {d['format']!r} is not supported (expected {CARD_FORMAT})")
        return cls(**{k: v for k, v in d.items() if k in names}, extra={k: v for k, v in d.items() if k not in names})


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Atomically write ``tensors`` as safetensors; returns the file's sha256 (hex)."""
    data = safetensors.torch.save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest()


def read_weights(path: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file; ``.pt``/``.pth``/``.bin`` only with ``allow_pickle=True``
    (then through ``torch.load(weights_only=True)``). Raises CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} not found")
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(path)
        if path.suffix in (".pt", ".pth", ".bin"):
            if not allow_pickle:
                raise CheckpointError(
                    f"{str(path)!r} is a pickle; refusing to unpickle it. Convert it to safetensors, or pass "
                    "allow_pickle=True to load it with torch.load(weights_only=True) if you trust its source"
                )
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise CheckpointError(f"{str(path)!r}: expected a dict of tensors")
            return state
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"cannot read weights file {str(path)!r} (expected a valid {path.suffix[1:]} file): "
                              f"{type(e).__name__}: {e}") from e
    raise CheckpointError(f"weights file {str(path)!r}: expected a .safetensors file (or .pt/.pth/.bin with allow_pickle)")


def save_checkpoint(
    out_dir: Path, backbone: nn.Module, card: Card, classifier: dict[str, torch.Tensor] | None = None
) -> Card:
    """Write ``model.safetensors`` (backbone + optional ``classifier`` {"weight": [K, m], "bias": [K]})
    and then ``card.json`` into ``out_dir``; fills ``card.weights`` and ``card.sha256``; returns the card."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    tensors.update({f"classifier.{k}": v for k, v in (classifier or {}).items() if v is not None})
    card.weights = WEIGHTS_FILE
    card.sha256 = save_tensors(out_dir / WEIGHTS_FILE, tensors)
    write_json(out_dir / CARD_FILE, card.to_dict())
    return card


def read_card(path: Path) -> Card:
    """The card of a checkpoint directory (or of a ``card.json`` path)."""
    path = Path(path)
    card_path = path / CARD_FILE if path.is_dir() else path
    try:
        d = json.loads(card_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint card {str(card_path)!r} not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint card {str(card_path)!r} is unreadable: {e}") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"checkpoint card {str(card_path)!r}: expected a JSON object")
    return Card.from_dict(d, source=str(card_path))


def _verified_weights(path: Path, *, allow_pickle: bool) -> tuple[Card, dict[str, torch.Tensor]]:
    path = Path(path)
    card = read_card(path)
    directory = path if path.is_dir() else path.parent
    if Path(card.weights).name != card.weights:
        raise CheckpointError(f"{str(directory / CARD_FILE)!r}: weights must be a file name in the checkpoint directory, got {card.weights!r}")
    weights_path = directory / card.weights
    if not weights_path.is_file():
        raise CheckpointError(f"weights file {str(weights_path)!r} named by the card not found")
    digest = sha256_file(weights_path)
    if digest != card.sha256:
        raise CheckpointError(
            f"weights file {str(weights_path)!r} has sha256 {digest}, the card says {card.sha256}: truncated or modified"
        )
    return card, read_weights(weights_path, allow_pickle=allow_pickle)


def load_checkpoint(path: Path, *, allow_pickle: bool = False) -> tuple[nn.Module, Card]:
    """Rebuild the backbone from the card, verify the weights' sha256, load them; model in eval mode."""
    card, tensors = _verified_weights(path, allow_pickle=allow_pickle)
    model = build_backbone(card.backbone, **card.backbone_options)
    state = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{str(Path(path))!r}: weights do not fit backbone {card.backbone!r}: {e}") from e
    return model.eval(), card


def load_classifier(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The source classifier of a checkpoint: weight [K, m] (rows in sorted source-class order), bias [K] or None."""
    _, tensors = _verified_weights(path, allow_pickle=False)
    if "classifier.weight" not in tensors:
        raise CheckpointError(f"{str(Path(path))!r}: the checkpoint holds no classifier")
    return tensors["classifier.weight"], tensors.get("classifier.bias")
