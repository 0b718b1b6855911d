"""Features of a frozen backbone: penultimate features and, optionally, every probe layer.

:class:`FeatureCache` keeps them on disk so that every head and episode reuses one extraction.

Preprocessing (the same for training and evaluation) is a dict stored in each checkpoint's card::

    {"image_size": [H, W], "channels": C, "mean": [C floats], "std": [C floats],
     "transform": {"mode": "L", "invert": false, "transpose": false, "resize": [H, W], "resample": "bilinear"},
     "normalization": {"source": "source-pool train images", "images": n, "classes": k}}

``transform`` (:mod:`ncbench.data.transforms`) turns a raw PIL image into uint8 [H, W, C], exactly as the
dataset's loader did; ``mean`` / ``std`` then map uint8 images [N, H, W, C] to float32 [N, C, H, W] as
(x / 255 - mean) / std. ``normalization`` says which images the statistics were computed from. Cards
written before transforms were recorded have neither key: their transform is convert to L / RGB and
resize bilinearly (:func:`ncbench.data.transforms.plain_transform`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ncbench.backbones import probe_layers
from ncbench.checkpoint import Card, CheckpointError, load_checkpoint, read_weights, save_tensors
from ncbench.data.base import ImageDataset, mean_std
from ncbench.data.transforms import MODES, check_transform, decode, plain_transform

log = logging.getLogger(__name__)


def preprocessing_of(dataset: ImageDataset, norm_idx: np.ndarray, *, source: str = "chosen images") -> dict[str, Any]:
    """The preprocessing dict of checkpoints trained on ``dataset``: its image size, channels and transform
    record, and mean / std (:func:`ncbench.data.base.mean_std`) of exactly ``dataset.images[norm_idx]``.

    norm_idx: int [n], n >= 1, dataset indices of the images the statistics are fitted on; in a task, the
    source pool's TRAIN images, never a target class. ``source`` describes them in
    ``preprocessing["normalization"] = {"source": source, "images": n, "classes": <classes among them>}``.
    """
    idx = np.asarray(norm_idx)
    if idx.ndim != 1 or len(idx) == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"norm_idx must be a non-empty 1-D integer array, got {idx.dtype} {idx.shape}")
    if idx.min() < 0 or idx.max() >= len(dataset.labels):
        raise ValueError(f"norm_idx must index the dataset's {len(dataset.labels)} images, got values in {idx.min()}..{idx.max()}")
    if not isinstance(source, str) or not source:
        raise ValueError(f"source must be a non-empty string describing the images, got {source!r}")
    mean, std = mean_std(dataset.images, idx)
    pp: dict[str, Any] = {"image_size": list(dataset.image_size), "channels": dataset.channels,
                          "mean": list(mean), "std": list(std)}
    if dataset.transform is not None:
        pp["transform"] = dict(dataset.transform)
    pp["normalization"] = {"source": source, "images": int(len(idx)),
                           "classes": int(len(np.unique(dataset.labels[idx])))}
    return pp


def _check_preprocessing(pp: dict[str, Any]) -> tuple[tuple[int, int], int, torch.Tensor, torch.Tensor]:
    try:
        h, w = (int(v) for v in pp["image_size"])
        c = int(pp["channels"])
        mean = torch.tensor(pp["mean"], dtype=torch.float32)
        std = torch.tensor(pp["std"], dtype=torch.float32)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"preprocessing must be {{'image_size': [H, W], 'channels': C, 'mean': [...], 'std': [...]}}"
                         f" (optionally 'transform', 'normalization'), got {pp!r}") from e
    if mean.shape != (c,) or std.shape != (c,) or not (std > 0).all():
        raise ValueError(f"preprocessing: mean and std must hold {c} values (std > 0), got {pp['mean']!r}, {pp['std']!r}")
    return (h, w), c, mean, std


def transform_of(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """The transform record of a preprocessing dict, validated against its image size and channels; a dict
    without one (a card written before transforms were recorded) gets :func:`plain_transform`."""
    (h, w), c, _, _ = _check_preprocessing(preprocessing)
    if preprocessing.get("transform") is None:
        return plain_transform(c, (h, w))
    t = check_transform(preprocessing["transform"], "preprocessing.transform")
    if t["resize"] != [h, w] or MODES[t["mode"]] != c:
        raise ValueError(f"preprocessing.transform gives [{t['resize'][0]}, {t['resize'][1]}, {MODES[t['mode']]}] images "
                         f"(mode {t['mode']!r}), expected [{h}, {w}, {c}] (preprocessing.image_size, .channels)")
    return t


def to_input(images: torch.Tensor, preprocessing: dict[str, Any]) -> torch.Tensor:
    """images: [B, H, W, C] uint8 tensor -> [B, C, H, W] float32, normalised as the preprocessing says."""
    _, _, mean, std = _check_preprocessing(preprocessing)
    x = images.permute(0, 3, 1, 2).to(torch.float32)
    return ((x * (1 / 255) - mean[:, None, None]) / std[:, None, None]).contiguous()


def _check_images(images: np.ndarray, preprocessing: dict[str, Any]) -> None:
    (h, w), c, _, _ = _check_preprocessing(preprocessing)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 array [N, H, W, C], got {got}")
    if images.shape[1:] != (h, w, c):
        raise ValueError(f"images have shape [N, {', '.join(map(str, images.shape[1:]))}], the preprocessing expects [N, {h}, {w}, {c}]")


def extract(
    model: nn.Module,
    images: np.ndarray,
    preprocessing: dict[str, Any],
    *,
    batch_size: int = 256,
    layers: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Features of ``images`` (uint8 [N, H, W, C]) under ``model`` in eval mode, float32 on CPU.

    Returns features [N, m]; with ``layers=True`` also a dict, in stage order, with
    ``"<stage>/flat"``: [N, d] (the stage output flattened) for every probe layer and
    ``"<stage>/pooled"``: [N, c] (global average over H, W) for stages whose output is a map [B, c, H, W].
    The model's train/eval mode is restored afterwards.
    """
    _check_images(images, preprocessing)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = len(images)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    outputs: dict[str, torch.Tensor] = {}
    span = [0, 0]

    def store(key: str, value: torch.Tensor) -> None:
        if key not in outputs:
            outputs[key] = torch.empty(n, value.shape[1], dtype=torch.float32)
        outputs[key][span[0] : span[1]] = value  # copied now: later in-place ops cannot change it

    def hook(name: str):
        def fn(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            store(f"{name}/flat", out.flatten(1))
            if out.ndim == 4:
                store(f"{name}/pooled", out.mean(dim=(2, 3)))

        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in probe_layers(model)] if layers else []
    was_training = model.training
    model.eval()
    source = torch.from_numpy(images)
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, n, batch_size), desc="features", unit="batch", disable=None, leave=False):
                span[:] = [start, min(start + batch_size, n)]
                x = to_input(source[start : span[1]], preprocessing).to(device)
                store("features", model(x))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    features = outputs.pop("features", torch.empty(0, int(getattr(model, "feature_dim", 0))))
    return (features, outputs) if layers else features


def pil_to_array(images: list[Image.Image], preprocessing: dict[str, Any]) -> np.ndarray:
    """PIL images (any mode and size) -> uint8 [N, H, W, C], each through the preprocessing's transform record
    (:func:`transform_of`, :func:`ncbench.data.transforms.decode`): the dataset's own raw-image steps."""
    transform = transform_of(preprocessing)
    h, w = transform["resize"]
    arrays = []
    for i, img in enumerate(images):
        if not isinstance(img, Image.Image):
            raise ValueError(f"images[{i}] must be a PIL image, got {type(img).__name__}")
        arrays.append(decode(img, transform))
    return np.stack(arrays) if arrays else np.zeros((0, h, w, MODES[transform["mode"]]), np.uint8)


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
