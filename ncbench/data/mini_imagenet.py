"""``mini-imagenet``: 100 ImageNet classes with the Ravi & Larochelle (ICLR 2017) 64 / 16 / 20 split.

Read from an image folder or a Hugging Face ``datasets`` dataset (``save_to_disk`` directory, or the
hub when ``download=True``). The split lists ship in ``ncbench/data/splits/mini_imagenet_*.txt``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ncbench.data.base import DatasetError, ImageDataset
from ncbench.data.common import (check_size, missing_files_error, named_class_splits, per_class_split, read_image,
                                 require_root, split_list)
from ncbench.data.transforms import decode, make_transform
from ncbench.registry import register_dataset

log = logging.getLogger(__name__)

HUB_NAME = "timm/mini-imagenet"
_EXPECTED = ("an image folder <root>/<wnid>/*.jpg or <root>/{train,val,test}/<wnid>/*.jpg, or a Hugging Face "
             "datasets directory written by save_to_disk (with an image column and a 'label' column of wnids)")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
_HF_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")


def _folder_classes(root: Path) -> list[tuple[str, list[Path]]]:
    """(wnid, sorted image files) per class folder under ``root`` or its train/val/test subfolders."""
    parents = [root / s for s in ("train", "val", "test") if (root / s).is_dir()] or [root]
    classes = []
    for parent in parents:
        for folder in sorted(p for p in parent.iterdir() if p.is_dir()):
            files = sorted(f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
            if files:
                classes.append((folder.name, files))
    return sorted(classes)


def _from_folder(root: Path, transform: dict) -> tuple[list[str], list[np.ndarray], list[int]]:
    classes = _folder_classes(root)
    if not classes:
        raise missing_files_error("mini-imagenet", root, _EXPECTED, downloadable=True, cause="no class folder with images")
    names = [n for n, _ in classes]
    if len(set(names)) != len(names):
        raise DatasetError(f"mini-imagenet: root {str(root)!r} has the same class folder in several splits")
    images, labels = [], []
    for k, (_, files) in enumerate(tqdm(classes, desc="mini-imagenet: reading", unit="class", disable=None)):
        for f in files:
            images.append(read_image("mini-imagenet", f, transform))
            labels.append(k)
    return names, images, labels


def _from_hf(dataset, transform: dict) -> tuple[list[str], list[np.ndarray], list[int]]:
    """Rows of a ``datasets.Dataset`` / ``DatasetDict`` with an image column and a ``label`` column
    (ClassLabel or string wnids); classes are taken in sorted name order."""
    import datasets  # lazy: Hugging Face datasets takes seconds to import; only this path needs it

    parts = list(dataset.values()) if isinstance(dataset, datasets.DatasetDict) else [dataset]
    rows: list[tuple[str, Image.Image]] = []
    for part in parts:
        features = part.features
        image_col = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
        if image_col is None or "label" not in features:
            raise DatasetError(f"mini-imagenet: Hugging Face dataset needs an Image column and a 'label' column, "
                               f"got columns {list(features)}")
        label = features["label"]
        to_name = label.int2str if isinstance(label, datasets.ClassLabel) else str
        for row in tqdm(part, desc="mini-imagenet: reading", unit="image", disable=None):
            rows.append((to_name(row["label"]), row[image_col]))
    names = sorted({n for n, _ in rows})
    index = {n: i for i, n in enumerate(names)}
    return names, [decode(im, transform) for _, im in rows], [index[n] for n, _ in rows]


@register_dataset("mini-imagenet")
def load(
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    seed: int = 0,
    image_size: int = 84,
    hub_name: str = HUB_NAME,
) -> ImageDataset:
    """mini-ImageNet (Vinyals et al. 2016; Ravi & Larochelle 2017 class split), RGB.

    Options:
        root:       an image folder (``<root>/<wnid>/*.jpg`` or ``<root>/{train,val,test}/<wnid>/*``) or a
                    directory written by ``datasets``' ``save_to_disk`` (read with ``load_from_disk``).
                    With ``download=True`` it is the Hugging Face cache directory (optional).
        download:   True loads ``hub_name`` with ``datasets.load_dataset`` (network; opt-in).
        seed:       unused (the class split is the standard one); accepted for a uniform signature.
        image_size: side of the square output images (default 84): each image is converted to RGB and resized
                    bilinearly with antialiasing, not cropped (transform record ``{"mode": "RGB",
                    "resize": [image_size, image_size], "resample": "bilinear", ...}``).
        hub_name:   the Hugging Face dataset to download (default ``timm/mini-imagenet``).

    Class names: wnids (folder names, or the ``label`` column's names), sorted. Per-class split: in
    file-name (folder) or row (datasets) order, the first ceil(0.75 n) images of each class TRAIN
    (450 of 600), the rest TEST. Class splits: the Ravi lists (64 / 16 / 20 wnids) restricted to the
    classes present.
    """
    del seed
    size = check_size("mini-imagenet", image_size)
    transform = make_transform("RGB", (size, size))
    if download:
        import datasets  # lazy: Hugging Face datasets takes seconds to import; only this path needs it

        log.info("mini-imagenet: loading %s from the Hugging Face hub", hub_name)
        names, images, labels = _from_hf(datasets.load_dataset(hub_name, cache_dir=root), transform)
    else:
        path = require_root("mini-imagenet", root, _EXPECTED, downloadable=True)
        if path.is_dir() and any((path / m).is_file() for m in _HF_MARKERS):
            import datasets  # lazy: Hugging Face datasets takes seconds to import; only this path needs it

            names, images, labels = _from_hf(datasets.load_from_disk(str(path)), transform)
        elif path.is_dir():
            names, images, labels = _from_folder(path, transform)
        else:
            raise missing_files_error("mini-imagenet", path, _EXPECTED, downloadable=True, cause="not a folder")
    images_arr = np.stack(images)
    labels_arr = np.asarray(labels, np.int64)
    split = per_class_split(labels_arr)
    lists = {s: split_list(f"mini_imagenet_{s}.txt") for s in ("train", "val", "test")}
    return ImageDataset(name="mini-imagenet", images=images_arr, labels=labels_arr, class_names=names, split=split,
                        class_splits=named_class_splits(names, lists), transform=transform)
