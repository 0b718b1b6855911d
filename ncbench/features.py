"""Features of a frozen checkpoint, computed once per (checkpoint, images) and kept on disk.

:class:`FeatureCache` serves the pipeline (every head and episode reuses one extraction);
:func:`embed_images` serves a user with raw images: the card's preprocessing
(:mod:`ncbench.data.preprocessing`) is replayed on each, then :func:`ncbench.backbones.extract` runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ncbench.backbones import extract
from ncbench.checkpoint import Card, CheckpointError, load_checkpoint, read_weights, save_tensors
from ncbench.data.base import ImageDataset
from ncbench.data.preprocessing import pil_to_array

log = logging.getLogger(__name__)


def embed_images(checkpoint_dir: Path, images: list[Image.Image], *, batch_size: int = 256) -> torch.Tensor:
    """Penultimate features [N, m] float32 of PIL ``images`` (raw, as a user has them: files opened with
    PIL, ``torchvision`` dataset items) under the checkpoint in ``checkpoint_dir``: the card's transform
    record is replayed on each image (inversion, transposition, channels, resize), then its normalisation."""
    model, card = load_checkpoint(checkpoint_dir)
    return extract(model, pil_to_array(list(images), card.preprocessing), card.preprocessing, batch_size=batch_size)


class FeatureCache:
    """Features of one checkpoint on one dataset, computed once per set of images and kept on disk.

    Files are ``root/<card sha256[:16]>/features-<key>.safetensors``, where the key hashes the dataset's
    name, images and labels, the card's preprocessing and the requested indices, so a changed checkpoint,
    normalisation or dataset never reads stale features. Written atomically; safe to share between runs of
    the same checkpoint.
    """

    def __init__(self, root: Path, model: nn.Module, card: Card, dataset: ImageDataset, *, batch_size: int = 256):
        self.dir = Path(root) / card.sha256[:16]
        self.model, self.preprocessing, self.dataset, self.batch_size = model, card.preprocessing, dataset, batch_size
        self._dataset_key: str | None = None

    def _path(self, idx: np.ndarray) -> Path:
        if self._dataset_key is None:  # hashed once: the images may be large
            h = hashlib.sha256(self.dataset.name.encode())
            h.update(np.ascontiguousarray(self.dataset.images).data)
            h.update(np.ascontiguousarray(self.dataset.labels, dtype=np.int64).data)
            h.update(json.dumps(self.preprocessing, sort_keys=True).encode())
            self._dataset_key = h.hexdigest()
        key = hashlib.sha256(self._dataset_key.encode() + np.ascontiguousarray(idx, dtype=np.int64).data).hexdigest()[:24]
        return self.dir / f"features-{key}.safetensors"

    def features(self, idx: np.ndarray) -> torch.Tensor:
        """Penultimate features [len(idx), m] float32 of ``dataset.images[idx]``."""
        idx = np.asarray(idx)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"idx must be a 1-D integer array, got {idx.dtype} {idx.shape}")
        path = self._path(idx)
        if path.is_file():
            try:
                return read_weights(path)["features"]
            except CheckpointError as e:  # a cut or corrupted cache file: extract again
                log.warning("feature cache: %s; extracting again", e)
        features = extract(self.model, self.dataset.images[idx], self.preprocessing, batch_size=self.batch_size)
        self.dir.mkdir(parents=True, exist_ok=True)
        save_tensors(path, {"features": features})
        return features
