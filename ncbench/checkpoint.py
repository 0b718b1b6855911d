"""Trusted, reusable checkpoints: ``model.safetensors`` + a typed ``card.json`` next to it.

The weights file holds the backbone's state dict under ``backbone.<key>`` and, when the run had one, the
source classifier under ``classifier.weight`` / ``classifier.bias``. The card says what the weights are,
what they were trained on and how, and carries their sha256, which :func:`load_checkpoint` verifies
before anything is read. Files are written atomically (temporary file + ``os.replace``); the card is
written last, so a directory with a card holds a finished checkpoint. Pickles are never unpickled
unless ``allow_pickle=True`` is passed, and then only with ``torch.load(weights_only=True)``.

Weights trained elsewhere are evaluated through :func:`adopt_checkpoint`: a folder holding a safetensors
file and a *hand-written* card that needs only ``backbone`` (:data:`HAND_WRITTEN_FIELDS` lists what else it
may say; ``docs/api.md`` documents the format). The card is completed (the task's preprocessing, the
weights' sha256) and copied with the weights into the unit's own checkpoint folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

import ncbench
from ncbench.backbones import build_backbone
from ncbench.data.preprocessing import check_preprocessing
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
    if not state:  # a plain state dict (a hand-written card's weights, e.g. safetensors.torch.save_file(m.state_dict()))
        state = tensors
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{str(Path(path))!r}: weights do not fit backbone {card.backbone!r}: {e}") from e
    return model.eval(), card


def load_classifier(path: Path, *, required: bool = True) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The source classifier of a checkpoint: weight [K, m] (rows in sorted source-class order), bias [K] or None.
    A checkpoint without one raises CheckpointError, or returns None when not ``required``."""
    _, tensors = _verified_weights(path, allow_pickle=False)
    if "classifier.weight" not in tensors:
        if not required:
            return None
        raise CheckpointError(f"{str(Path(path))!r}: the checkpoint holds no classifier")
    return tensors["classifier.weight"], tensors.get("classifier.bias")


# ------------------------------------------------------------------------- checkpoints trained elsewhere
# The fields a hand-written card may give, with their JSON types; only ``backbone`` is required. Any other
# key (``name``, ``license``, ``notes`` …) is kept in the card's ``extra``.
HAND_WRITTEN_FIELDS: dict[str, tuple[type, ...]] = {
    "backbone": (str,),              # registered name, module:callable or file.py[:callable]
    "backbone_options": (dict,),     # keyword options of the backbone (default {}; in_channels and image_size
                                     # default to the task's images)
    "weights": (str,),               # file name of the weights in the card's folder (default model.safetensors)
    "sha256": (str,),                # sha256 of the weights file: verified when given
    "preprocessing": (dict,),        # image_size, channels, mean, std (default: the task's, fitted on its
                                     # source-pool train images as ncbench's own pretraining does)
    "source_classes": (list,),       # class names the weights were trained on (default: none known)
    "seed": (int,),                  # pretraining seed (default: none known)
    "dataset": (str,), "feature_dim": (int,), "num_train": (int,), "epochs": (int,), "recipe": (dict,),
    "device": (str,), "world_size": (int,), "train_loss": (float, int), "train_acc": (float, int),
}
# what a hand-written card leaves unknown, as stored in its completed card
_UNKNOWN = {"backbone_options": {}, "feature_dim": 0, "dataset": None, "source_classes": [], "num_train": 0,
            "recipe": {}, "seed": None, "epochs": 0, "device": None, "world_size": 1}
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class CheckpointInfo:
    """What the pipeline needs to know of a given checkpoint before running anything: its backbone spec and
    options, the sha256 of its weights file, the number of source classes and seed its card gives (None
    when it gives none), and a name (the card's ``name``, else the folder's name)."""

    path: Path                       # the checkpoint folder
    backbone: str
    backbone_options: dict[str, Any]
    sha256: str
    source_classes: int | None
    seed: int | None
    name: str


def _card_dict(path: Path) -> tuple[Path, dict[str, Any]]:
    """(card path, its JSON object) of a checkpoint folder or card path; CheckpointError naming the file."""
    path = Path(path)
    card_path = path / CARD_FILE if path.is_dir() else path
    try:
        d = json.loads(card_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint card {str(card_path)!r} not found (expected a checkpoint folder holding "
                              f"{CARD_FILE} and its weights, or the path of its card)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint card {str(card_path)!r} is unreadable: {e}") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"checkpoint card {str(card_path)!r}: expected a JSON object")
    return card_path, d


def _is_complete(d: dict[str, Any]) -> bool:
    """Whether a card dict holds every required field of :class:`Card` (a card written by ncbench)."""
    return all(f.name in d for f in dataclasses.fields(Card)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def _check_hand_written(d: dict[str, Any], where: str) -> None:
    """Raise CheckpointError naming the field of a hand-written card that is missing or of the wrong type."""
    if "backbone" not in d:
        raise CheckpointError(f"{where}: field 'backbone': required (a registered backbone name, module:callable or "
                              "file.py[:callable]; see docs/api.md)")
    for key, kinds in HAND_WRITTEN_FIELDS.items():
        value = d.get(key)
        if key not in d or (value is None and key in _UNKNOWN):
            continue
        if not isinstance(value, kinds) or isinstance(value, bool):
            names = " or ".join({str: "a string", dict: "an object", list: "a list", int: "an integer",
                                 float: "a number"}[k] for k in kinds)
            raise CheckpointError(f"{where}: field {key!r}: expected {names}, got {value!r}")
    if not d["backbone"]:
        raise CheckpointError(f"{where}: field 'backbone': must not be empty")
    if "sha256" in d and not _SHA256.fullmatch(d["sha256"]):
        raise CheckpointError(f"{where}: field 'sha256': expected 64 lowercase hex digits, got {d['sha256']!r}")
    if not all(isinstance(c, str) for c in d.get("source_classes") or []):
        raise CheckpointError(f"{where}: field 'source_classes': expected a list of class names (strings)")
    if "preprocessing" in d:
        try:
            check_preprocessing(d["preprocessing"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: field 'preprocessing': {e} (expected image_size [H, W], channels, "
                                  "mean and std with one value per channel)") from None


def checkpoint_info(path: Path) -> CheckpointInfo:
    """Read and check a given checkpoint's card (written by ncbench or by hand) and hash its weights file;
    nothing of the backbone is imported. Raises CheckpointError naming the file and field."""
    card_path, d = _card_dict(path)
    where = str(card_path)
    if _is_complete(d):
        card = Card.from_dict(d, source=where)
        spec, options, count = card.backbone, card.backbone_options, len(card.source_classes) or None
        seed = card.seed
    else:
        _check_hand_written(d, where)
        spec, options = d["backbone"], dict(d.get("backbone_options") or {})
        count, seed = len(d.get("source_classes") or []) or None, d.get("seed")
    weights = d.get("weights", WEIGHTS_FILE)
    if not isinstance(weights, str) or not weights or Path(weights).name != weights:
        raise CheckpointError(f"{where}: field 'weights': must be a file name in the card's folder, got {weights!r}")
    weights_path = card_path.parent / weights
    if not weights_path.is_file():
        raise CheckpointError(f"weights file {str(weights_path)!r} named by the card {where!r} not found")
    digest = sha256_file(weights_path)
    if d.get("sha256") and digest != d["sha256"]:
        raise CheckpointError(f"weights file {str(weights_path)!r} has sha256 {digest}, the card {where!r} says "
                              f"{d['sha256']}: truncated or modified")
    name = d.get("name")
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        name = card_path.parent.resolve().name  # the card's name is no usable path segment (results/<task>/<model>/)
    return CheckpointInfo(card_path.parent, spec, options, digest, count, seed, name)


def adopt_checkpoint(path: Path, out_dir: Path, preprocessing: Any) -> Path:
    """Copy the checkpoint at ``path`` (folder or card path; written by ncbench or with a hand-written card)
    into ``out_dir`` as an ncbench checkpoint and return ``out_dir``. A hand-written card is completed: the
    weights' sha256, ``preprocessing`` when it gives none (a dict, or a callable returning it, called only
    then), ``in_channels`` / ``image_size`` from the preprocessing when its backbone options lack them, and
    ``adopted_from`` = the card's path. Adopted afresh each time (a hard link and a JSON file), so an edited
    card is never shadowed by an earlier copy."""
    info = checkpoint_info(path)
    card_path, d = _card_dict(path)
    out_dir = Path(out_dir)
    weights = d.get("weights", WEIGHTS_FILE)
    if _is_complete(d):
        card = Card.from_dict(d, source=str(card_path))
    else:
        pp = d.get("preprocessing")
        if pp is None:
            pp = preprocessing() if callable(preprocessing) else preprocessing
        (h, w), c, _, _ = check_preprocessing(pp)
        given = {k: v for k, v in d.items() if v is not None}
        fields = {**_UNKNOWN, **given, "preprocessing": pp,
                  "backbone_options": {"in_channels": c, "image_size": [h, w], **(given.get("backbone_options") or {})}}
        fields.setdefault("format", CARD_FORMAT)
        card = Card.from_dict(fields, source=str(card_path))
    card.extra["adopted_from"] = str(card_path.resolve())
    card.sha256 = info.sha256
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{weights}.adopting"
    tmp.unlink(missing_ok=True)
    try:
        os.link(card_path.parent / weights, tmp)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(card_path.parent / weights, tmp)
    os.replace(tmp, out_dir / weights)
    write_json(out_dir / CARD_FILE, card.to_dict())  # last: a folder with a card holds a finished checkpoint
    return out_dir
