"""The one in-memory form every dataset loader returns.

A loader is a function registered with ``@register_dataset(name)`` that takes keyword options
(``root``, ``download``, ``seed``, ``per_class`` ... as the loader documents) and returns an
:class:`ImageDataset`. Everything downstream (pools, episodes, pretraining, features) only sees this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ncbench.data.transforms import MODES, check_transform, plain_transform

TRAIN, TEST = 0, 1  # values of ImageDataset.split


class DatasetError(ValueError):
    """A dataset cannot be loaded: missing or incomplete root, unreadable file, bad option."""


@dataclass
class ImageDataset:
    """Images with integer labels, class names, a per-image train/test split and class splits.

    images:       uint8 array [N, H, W, C] (C = 1 for grayscale, 3 for RGB), all the same size.
    labels:       int64 array [N], values in 0..K-1, indexing ``class_names``.
    class_names:  K strings, unique; class k is ``class_names[k]``.
    split:        int8 array [N], ``TRAIN`` (0) or ``TEST`` (1): the dataset's documented per-class
                  split of images (official one where the dataset has it).
    class_splits: standard split of the *classes* where the dataset has one, e.g.
                  ``{"train": [...], "val": [...], "test": [...]}`` of class indices; empty otherwise.
    transform:    the record of how one raw image became one row of ``images``
                  (:mod:`ncbench.data.transforms`: mode, invert, transpose, resize [H, W], resample);
                  checkpoint cards store it so that ``embed_images`` replays it on a user's raw images.
                  None means "convert to L / RGB and resize" (filled in for C = 1 or 3).

    There are no normalisation statistics here: they are fitted on chosen images only (the source pool's
    TRAIN images in a task) by :func:`ncbench.data.preprocessing.preprocessing_of`, never on the whole dataset.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    split: np.ndarray
    class_splits: dict[str, list[int]] = field(default_factory=dict)
    transform: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DatasetError(f"{self.name}: images must be uint8 [N, H, W, C], got {self.images.dtype} {self.images.shape}")
        if len(self.images) != n or len(self.split) != n:
            raise DatasetError(f"{self.name}: images ({len(self.images)}), labels ({n}) and split ({len(self.split)}) differ in length")
        if len(set(self.class_names)) != len(self.class_names):
            raise DatasetError(f"{self.name}: class names are not unique")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise DatasetError(f"{self.name}: labels must lie in 0..{len(self.class_names) - 1}")
        if self.transform is None and self.channels in MODES.values():
            self.transform = plain_transform(self.channels, self.image_size)
        if self.transform is not None:
            try:
                self.transform = check_transform(self.transform)
            except ValueError as e:
                raise DatasetError(f"{self.name}: {e}") from None
            if MODES[self.transform["mode"]] != self.channels or self.transform["resize"] != list(self.image_size):
                raise DatasetError(f"{self.name}: transform gives [{', '.join(map(str, self.transform['resize']))}, "
                                   f"{MODES[self.transform['mode']]}] images (mode {self.transform['mode']!r}), the "
                                   f"images are [{', '.join(map(str, self.images.shape[1:]))}]")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def indices(self, cls: int, split: int | None = None) -> np.ndarray:
        """Indices of class ``cls`` (optionally only its ``TRAIN`` or ``TEST`` images), ascending."""
        mask = self.labels == cls
        if split is not None:
            mask &= self.split == split
        return np.flatnonzero(mask)


def mean_std(images: np.ndarray, idx: np.ndarray | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population, in [0, 1] units) of ``images[idx]`` (all images when None).

    images: uint8 [N, H, W, C]; idx: int [n], n >= 1 (an index listed twice counts twice).
    Returns (mean, std), C floats each (std >= 1e-6). Exact integer pixel counts over chunks of images
    (a 256-bin histogram per channel), so memory stays small for 50,000-image datasets.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 array [N, H, W, C], got {got}")
    idx = np.arange(len(images)) if idx is None else np.asarray(idx)
    if idx.ndim != 1 or len(idx) == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"idx must be a non-empty 1-D integer array, got {idx.dtype} {idx.shape}")
    c = images.shape[-1]
    counts = np.zeros((c, 256), np.int64)
    for lo in range(0, len(idx), 1024):
        chunk = images[idx[lo : lo + 1024]]
        for ch in range(c):
            counts[ch] += np.bincount(chunk[..., ch].ravel(), minlength=256)
    values = np.arange(256, dtype=np.int64)
    n = int(counts[0].sum())
    mean, std = [], []
    for ch in range(c):  # exact integers (Python ints), one rounding at the end
        total, squares = int(counts[ch] @ values), int(counts[ch] @ (values * values))
        mean.append(total / (n * 255))
        std.append(max(math.sqrt((n * squares - total * total) / (n * n * 255 * 255)), 1e-6))
    return tuple(mean), tuple(std)
