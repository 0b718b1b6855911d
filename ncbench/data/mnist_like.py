"""``emnist`` and ``fashion-mnist``: torchvision's readers of the raw idx-ubyte files."""

from __future__ import annotations

import os

import numpy as np

from ncbench.data.base import TEST, TRAIN, DatasetError, ImageDataset
from ncbench.data.common import require_root, seeded_class_splits, torchvision_splits
from ncbench.data.transforms import decode_arrays, make_transform
from ncbench.registry import register_dataset


def _load(name: str, factory, folder: str, files: str, root, download: bool, seed: int, transpose: bool) -> ImageDataset:
    expected = f"torchvision's layout <root>/{folder}/raw/ with {files}"
    path = require_root(name, root, expected, downloadable=True, download=download)
    parts = torchvision_splits(name, factory, path, expected, download)
    raw = np.concatenate([p.data.numpy() for p in parts]).astype(np.uint8)  # [N, 28, 28], as ds[i][0] holds them
    transform = make_transform("L", raw.shape[2:0:-1] if transpose else raw.shape[1:3], transpose=transpose)
    images = decode_arrays(raw, transform)
    labels = np.concatenate([p.targets.numpy().astype(np.int64) for p in parts])
    split = np.concatenate([np.full(len(p.data), s, np.int8) for p, s in zip(parts, (TRAIN, TEST))])
    classes = list(parts[0].classes)
    present = np.unique(labels)  # EMNIST "letters" lists an image-less "N/A" class 0: drop such classes
    remap = np.full(len(classes), -1, np.int64)
    remap[present] = np.arange(len(present))
    labels, classes = remap[labels], [classes[i] for i in present]
    return ImageDataset(name=name, images=images, labels=labels, class_names=classes, split=split,
                        class_splits=seeded_class_splits(len(classes), seed), transform=transform)


@register_dataset("emnist")
def load_emnist(*, root: str | os.PathLike | None = None, download: bool = False, seed: int = 0,
                split: str = "balanced") -> ImageDataset:
    """EMNIST (28x28 grayscale handwritten characters) through ``torchvision.datasets.EMNIST``.

    Options:
        root:     folder holding ``EMNIST/raw/emnist-<split>-{train,test}-{images-idx3,labels-idx1}-ubyte``.
        download: True lets torchvision fetch EMNIST (about 560 MB zip) into ``root`` (opt-in).
        seed:     seeds the class split.
        split:    torchvision's EMNIST split: byclass, bymerge, balanced (default, 47 classes), letters,
                  digits or mnist.

    Images: uint8 [N, 28, 28, 1], transposed to upright (EMNIST's files, and so torchvision's ``ds[i][0]``,
    store them transposed; transform record ``{"mode": "L", "transpose": true, "resize": [28, 28], ...}``).
    Class names: torchvision's (``'0'``..``'9'``, letters); classes without images (letters' "N/A")
    are dropped. Per-class split: the official train = TRAIN, test = TEST. Class split: seeded
    60 / 20 / 20 % train / val / test.
    """
    from torchvision.datasets import EMNIST  # lazy: start-up time (torchvision imports torch._dynamo)

    if split not in EMNIST.splits:
        raise DatasetError(f"emnist: option 'split' must be one of {', '.join(EMNIST.splits)}, got {split!r}")

    def factory(r, train, download):
        return EMNIST(r, split=split, train=train, download=download)

    return _load("emnist", factory, "EMNIST", f"emnist-{split}-{{train,test}}-{{images-idx3,labels-idx1}}-ubyte",
                 root, download, seed, transpose=True)


@register_dataset("fashion-mnist")
def load_fashion_mnist(*, root: str | os.PathLike | None = None, download: bool = False, seed: int = 0) -> ImageDataset:
    """Fashion-MNIST (28x28 grayscale, 10 classes) through ``torchvision.datasets.FashionMNIST``.

    Options:
        root:     folder holding ``FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.
        download: True lets torchvision fetch it into ``root`` (opt-in).
        seed:     seeds the class split.

    Images: uint8 [70000, 28, 28, 1], as stored (transform record: mode L, resize [28, 28], nothing
    else). Per-class split: official train (6,000 / class) = TRAIN, test (1,000 / class) = TEST. Class
    split: seeded 6 / 2 / 2 train / val / test classes.
    """
    from torchvision.datasets import FashionMNIST  # lazy: start-up time (torchvision imports torch._dynamo)

    return _load("fashion-mnist", FashionMNIST, "FashionMNIST", "{train,t10k}-{images-idx3,labels-idx1}-ubyte",
                 root, download, seed, transpose=False)
