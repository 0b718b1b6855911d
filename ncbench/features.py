"""Features of a frozen checkpoint, computed once per (checkpoint, images) and kept on disk.

:class:`FeatureCache` serves the pipeline (every head and episode reuses one extraction);
:func:`embed_images` serves a user with raw images: the card's preprocessing
(:mod:`ncbench.data.preprocessing`) is replayed on each, then :func:`ncbench.backbones.extract` runs.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch
from PIL import Image
from torch import nn

from ncbench.backbones import extract
from ncbench.checkpoint import Card, CheckpointError, load_checkpoint
from ncbench.data.base import ImageDataset
from ncbench.data.preprocessing import pil_to_array
from ncbench.files import atomic_write

log = logging.getLogger(__name__)


def embed_images(checkpoint_dir: Path, images: list[Image.Image], *, batch_size: int = 256) -> torch.Tensor:
    """Penultimate features [N, m] float32 of PIL ``images`` (raw, as a user has them: files opened with
    PIL, ``torchvision`` dataset items) under the checkpoint in ``checkpoint_dir``: the card's transform
    record is replayed on each image (inversion, transposition, channels, resize), then its normalisation."""
    model, card = load_checkpoint(checkpoint_dir)
    return extract(model, pil_to_array(list(images), card.preprocessing), card.preprocessing, batch_size=batch_size)


FEATURE_CACHE_FORMAT = 2  # bump when the file layout or the key changes: older entries are never read


def code_digest(model: nn.Module) -> str:
    """sha256 of the source files of every module class in ``model`` (its own class and its submodules'),
    so editing a backbone's code invalidates the features it cached. A class without a source file
    (defined interactively) contributes its qualified name only."""
    h = hashlib.sha256()
    files: dict[str, str] = {}
    for cls in sorted({type(m) for m in model.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        files[f"{cls.__module__}.{cls.__qualname__}"] = _source_file(cls) or ""
    for name, src in files.items():
        h.update(name.encode() + b"\0")
        if src and Path(src).is_file():
            h.update(hashlib.sha256(Path(src).read_bytes()).digest())
    return h.hexdigest()


def _source_file(cls: type) -> str | None:
    """The file defining ``cls``: through its module, else through the code of a method it defines (a class
    loaded from a file spec whose module is not in ``sys.modules``)."""
    try:
        src = inspect.getsourcefile(cls)
    except TypeError:
        src = None
    if src is None:
        code = next((v.__code__ for v in vars(cls).values() if hasattr(v, "__code__")), None)
        src = code.co_filename if code is not None else None
    return src


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class FeatureCache:
    """Features of one checkpoint on one dataset, computed once per set of images and kept on disk.

    Files are ``root/<card sha256[:16]>/features-<key>.safetensors``, where the key hashes the checkpoint
    (the weights' sha256, the backbone spec and options, :func:`code_digest` of the backbone's code), the
    dataset's name, images and labels, the card's preprocessing and the requested indices, so a changed
    checkpoint, backbone code, normalisation or dataset never reads stale features. Each file carries the
    sha256 of its features (safetensors metadata), checked on read: a cut or corrupted entry is extracted
    again with a warning, never used. Written atomically; safe to share between runs of the same checkpoint.
    """

    def __init__(self, root: Path, model: nn.Module, card: Card, dataset: ImageDataset, *, batch_size: int = 256):
        self.dir = Path(root) / card.sha256[:16]
        self.model, self.preprocessing, self.dataset, self.batch_size = model, card.preprocessing, dataset, batch_size
        self._checkpoint_key = json.dumps({"format": FEATURE_CACHE_FORMAT, "weights_sha256": card.sha256,
                                           "backbone": card.backbone, "backbone_options": card.backbone_options,
                                           "code": code_digest(model)}, sort_keys=True, default=str)
        self._dataset_key: str | None = None

    def _path(self, idx: np.ndarray) -> Path:
        if self._dataset_key is None:  # hashed once: the images may be large
            h = hashlib.sha256(self._checkpoint_key.encode())
            h.update(self.dataset.name.encode())
            h.update(np.ascontiguousarray(self.dataset.images).data)
            h.update(np.ascontiguousarray(self.dataset.labels, dtype=np.int64).data)
            h.update(json.dumps(self.preprocessing, sort_keys=True).encode())
            self._dataset_key = h.hexdigest()
        key = hashlib.sha256(self._dataset_key.encode() + np.ascontiguousarray(idx, dtype=np.int64).data).hexdigest()[:24]
        return self.dir / f"features-{key}.safetensors"

    @staticmethod
    def _read(path: Path, n: int) -> torch.Tensor:
        """The features of cache file ``path`` (``n`` rows expected); CheckpointError when the file is cut,
        corrupted or does not match the sha256 it carries."""
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                features = f.get_tensor("features")
        except Exception as e:  # a cut header, a missing tensor: not a valid entry
            raise CheckpointError(f"{str(path)!r} is unreadable ({type(e).__name__}: {e})") from None
        if "sha256" not in meta:
            raise CheckpointError(f"{str(path)!r} carries no sha256")
        if _tensor_digest(features) != meta["sha256"]:
            raise CheckpointError(f"{str(path)!r}: features do not match their sha256 (corrupted)")
        if features.ndim != 2 or features.shape[0] != n:
            raise CheckpointError(f"{str(path)!r}: features of shape {list(features.shape)}, expected [{n}, m]")
        return features

    def features(self, idx: np.ndarray) -> torch.Tensor:
        """Penultimate features [len(idx), m] float32 of ``dataset.images[idx]``."""
        idx = np.asarray(idx)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"idx must be a 1-D integer array, got {idx.dtype} {idx.shape}")
        path = self._path(idx)
        if path.is_file():
            try:
                return self._read(path, len(idx))
            except CheckpointError as e:  # a cut or corrupted cache file: extract again, never use it
                log.warning("feature cache: %s; extracting again", e)
        features = extract(self.model, self.dataset.images[idx], self.preprocessing, batch_size=self.batch_size)
        self.dir.mkdir(parents=True, exist_ok=True)
        features = features.detach().cpu().contiguous().clone()
        atomic_write(path, safetensors.torch.save({"features": features},
                                                  metadata={"sha256": _tensor_digest(features)}))
        return features
