"""``cifar-fs`` and ``fc100``: CIFAR-100 read by torchvision, with the standard few-shot class splits.

Both return all 100 CIFAR-100 classes (names as in the dataset's ``meta`` file); they differ only in
``class_splits``, read from the lists shipped in ``ncbench/data/splits/``:

- CIFAR-FS (Bertinetto et al., ICLR 2019): 64 / 16 / 20 classes (``cifar_fs_{train,val,test}.txt``).
- FC100 (Oreshkin et al., NeurIPS 2018): superclass split, 12 / 4 / 4 superclasses = 60 / 20 / 20
  classes (``fc100.json`` lists both the superclasses and their fine classes).
"""

from __future__ import annotations

import json
import os
from importlib import resources

import numpy as np

from ncbench.data.base import TEST, TRAIN, ImageDataset
from ncbench.data.common import named_class_splits, require_root, split_list, torchvision_splits
from ncbench.data.transforms import decode_arrays, make_transform
from ncbench.registry import register_dataset

_EXPECTED = "torchvision's CIFAR-100 layout: <root>/cifar-100-python/{train,test,meta} (pickles)"


def _cifar100(name: str, root, download: bool, lists: dict[str, list[str]]) -> ImageDataset:
    """CIFAR-100 through ``torchvision.datasets.CIFAR100`` (which checks the files' md5 sums)."""
    from torchvision.datasets import CIFAR100  # lazy: start-up time (torchvision imports torch._dynamo)

    path = require_root(name, root, _EXPECTED, downloadable=True, download=download)
    parts = torchvision_splits(name, CIFAR100, path, _EXPECTED, download)
    raw = np.concatenate([p.data for p in parts]).astype(np.uint8)  # [N, 32, 32, 3], as ds[i][0] holds them
    transform = make_transform("RGB", raw.shape[1:3])
    images = decode_arrays(raw, transform)
    labels = np.concatenate([np.asarray(p.targets, np.int64) for p in parts])
    split = np.concatenate([np.full(len(p.data), s, np.int8) for p, s in zip(parts, (TRAIN, TEST))])
    classes = list(parts[0].classes)
    return ImageDataset(name=name, images=images, labels=labels, class_names=classes, split=split,
                        class_splits=named_class_splits(classes, lists), transform=transform)


def fc100_lists() -> dict[str, list[str]]:
    """FC100's fine class names per split (train / val / test), from the shipped ``fc100.json``."""
    text = resources.files("ncbench.data").joinpath("splits", "fc100.json").read_text(encoding="utf-8")
    return json.loads(text)["classes"]


@register_dataset("cifar-fs")
def load_cifar_fs(*, root: str | os.PathLike | None = None, download: bool = False, seed: int = 0) -> ImageDataset:
    """CIFAR-FS: CIFAR-100 (32x32 RGB) with Bertinetto et al.'s 64 / 16 / 20 class split.

    Options:
        root:     folder holding ``cifar-100-python/`` (torchvision's layout).
        download: True lets torchvision fetch CIFAR-100 into ``root`` (opt-in; never in tests).
        seed:     unused (the class split is the standard one); accepted for a uniform signature.

    Images: uint8 [60000, 32, 32, 3], as torchvision reads them (transform record: mode RGB, resize
    [32, 32], nothing else). Per-class split: CIFAR's official train (500 / class) = TRAIN, test
    (100 / class) = TEST. Class splits: ``train`` 64, ``val`` 16, ``test`` 20 classes.
    """
    del seed
    lists = {s: split_list(f"cifar_fs_{s}.txt") for s in ("train", "val", "test")}
    return _cifar100("cifar-fs", root, download, lists)


@register_dataset("fc100")
def load_fc100(*, root: str | os.PathLike | None = None, download: bool = False, seed: int = 0) -> ImageDataset:
    """FC100: CIFAR-100 (32x32 RGB) with Oreshkin et al.'s superclass split, 60 / 20 / 20 classes.

    Options:
        root:     folder holding ``cifar-100-python/`` (torchvision's layout).
        download: True lets torchvision fetch CIFAR-100 into ``root`` (opt-in; never in tests).
        seed:     unused (the class split is the standard one); accepted for a uniform signature.

    Images: uint8 [60000, 32, 32, 3], as for ``cifar-fs``. Per-class split: CIFAR's official train
    (500 / class) = TRAIN, test (100 / class) = TEST. Class splits: superclasses
    {1,2,3,4,5,6,9,10,15,17,18,19} -> ``train``, {8,11,13,16} -> ``val``, {0,7,12,14} -> ``test``.
    """
    del seed
    return _cifar100("fc100", root, download, fc100_lists())
