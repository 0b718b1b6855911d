"""Preprocessing: how a dataset's uint8 images become a backbone's float input, and raw images become rows.

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

from typing import Any

import numpy as np
import torch
from PIL import Image

from ncbench.data.base import ImageDataset, mean_std
from ncbench.data.transforms import MODES, check_transform, decode, plain_transform


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


def check_preprocessing(pp: dict[str, Any]) -> tuple[tuple[int, int], int, torch.Tensor, torch.Tensor]:
    """((H, W), C, mean [C], std [C]) of a preprocessing dict; ValueError naming what is wrong."""
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
    (h, w), c, _, _ = check_preprocessing(preprocessing)
    if preprocessing.get("transform") is None:
        return plain_transform(c, (h, w))
    t = check_transform(preprocessing["transform"], "preprocessing.transform")
    if t["resize"] != [h, w] or MODES[t["mode"]] != c:
        raise ValueError(f"preprocessing.transform gives [{t['resize'][0]}, {t['resize'][1]}, {MODES[t['mode']]}] images "
                         f"(mode {t['mode']!r}), expected [{h}, {w}, {c}] (preprocessing.image_size, .channels)")
    return t


def to_input(images: torch.Tensor, preprocessing: dict[str, Any]) -> torch.Tensor:
    """images: [B, H, W, C] uint8 tensor -> [B, C, H, W] float32, normalised as the preprocessing says."""
    _, _, mean, std = check_preprocessing(preprocessing)
    x = images.permute(0, 3, 1, 2).to(torch.float32)
    return ((x * (1 / 255) - mean[:, None, None]) / std[:, None, None]).contiguous()


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
