"""Small helpers shared by the real-format loaders: roots, shipped split lists, splits, reading image files."""

from __future__ import annotations

import math
import os
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from ncbench.data.base import TEST, TRAIN, DatasetError
from ncbench.data.transforms import decode

CLASS_SPLIT_FRACTIONS = (("train", 0.6), ("val", 0.2), ("test", 0.2))
TRAIN_FRACTION = 0.75  # per-class image split for datasets without an official one


def require_root(dataset: str, root: str | os.PathLike | None, expected: str, *, downloadable: bool,
                 download: bool = False) -> Path:
    """``root`` as a Path (created when ``download``); raises DatasetError naming what was expected when
    it is None or, without ``download``, missing."""
    hint = " (or pass download=True to fetch it)" if downloadable else ""
    if root is None:
        raise DatasetError(f"{dataset}: option 'root' is required: a folder holding {expected}{hint}")
    path = Path(root).expanduser()
    if download:
        path.mkdir(parents=True, exist_ok=True)
    elif not path.exists():
        raise DatasetError(f"{dataset}: root {str(path)!r} does not exist; expected {expected}{hint}")
    return path


def missing_files_error(dataset: str, root: Path, expected: str, *, downloadable: bool, cause: str = "") -> DatasetError:
    """The error for a root that exists but lacks (part of) the dataset."""
    hint = "; pass download=True to fetch it" if downloadable else ""
    detail = f" ({cause})" if cause else ""
    return DatasetError(f"{dataset}: root {str(root)!r} is missing or has an incomplete copy of the data{detail}: "
                        f"expected {expected}{hint}")


def split_list(filename: str) -> list[str]:
    """Lines of a split list shipped in ``ncbench/data/splits/`` (e.g. ``cifar_fs_train.txt``)."""
    text = resources.files("ncbench.data").joinpath("splits", filename).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def named_class_splits(class_names: list[str], lists: dict[str, list[str]]) -> dict[str, list[int]]:
    """Class splits given as lists of names -> lists of indices into ``class_names`` (names absent from
    ``class_names`` are left out, so a partial copy of a dataset keeps the splits of what it has)."""
    index = {name: i for i, name in enumerate(class_names)}
    return {split: sorted(index[n] for n in names if n in index) for split, names in lists.items()}


def seeded_class_splits(num_classes: int, seed: int) -> dict[str, list[int]]:
    """A seeded train / val / test partition of ``num_classes`` classes (60 / 20 / 20 %, each split
    non-empty when there are at least 3 classes). Returns sorted class indices per split."""
    order = np.random.default_rng([seed, num_classes]).permutation(num_classes)
    n_val = max(1, round(CLASS_SPLIT_FRACTIONS[1][1] * num_classes)) if num_classes >= 3 else 0
    n_test = max(1, round(CLASS_SPLIT_FRACTIONS[2][1] * num_classes)) if num_classes >= 3 else 0
    n_train = num_classes - n_val - n_test
    cuts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    return {k: sorted(int(i) for i in v) for k, v in cuts.items()}


def per_class_split(labels: np.ndarray) -> np.ndarray:
    """int8 [N]: within each class (in the given image order) the first ceil(0.75 * n) images are TRAIN,
    the rest TEST."""
    split = np.full(len(labels), TEST, np.int8)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        split[idx[: math.ceil(TRAIN_FRACTION * len(idx))]] = TRAIN
    return split


def read_image(dataset: str, path: Path, transform: dict) -> np.ndarray:
    """The image file at ``path`` decoded with the dataset's ``transform`` record
    (:func:`ncbench.data.transforms.decode`): uint8 [H, W, C]. An unreadable or truncated file raises
    DatasetError naming it."""
    try:
        with Image.open(path) as im:
            return decode(im, transform)
    except (OSError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{dataset}: image file {str(path)!r} is unreadable ({e}); expected an image file "
                           "PIL can decode (PNG, JPEG)") from None


def check_size(dataset: str, image_size: object) -> int:
    """``image_size`` as a positive int, or DatasetError."""
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 1:
        raise DatasetError(f"{dataset}: option 'image_size' must be a positive integer, got {image_size!r}")
    return int(image_size)


def torchvision_splits(name: str, factory, path: Path, expected: str, download: bool) -> list:
    """The official train and test sets of a torchvision dataset class (``factory(root, train=, download=)``),
    in that order; torchvision's "not found or corrupted" becomes a DatasetError naming ``path``."""
    parts = []
    for train in (True, False):
        try:
            parts.append(factory(str(path), train=train, download=download))
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted ..."
            raise missing_files_error(name, path, expected, downloadable=True, cause=str(err)) from err
    return parts
