"""``digits``: scikit-learn's bundled 8x8 handwritten digits (offline, 1,797 images)."""

from __future__ import annotations

import os

import numpy as np

from ncbench.data.base import ImageDataset
from ncbench.data.common import per_class_split, seeded_class_splits
from ncbench.data.transforms import decode_arrays, make_transform
from ncbench.registry import register_dataset


@register_dataset("digits")
def load(*, root: str | os.PathLike | None = None, download: bool = False, seed: int = 0) -> ImageDataset:
    """scikit-learn's ``load_digits``: 10 classes ('0'..'9'), about 180 images each.

    Options:
        root, download: accepted for a uniform loader signature; ignored (the data ships with sklearn).
        seed: seeds the class split.

    Images: uint8 [1797, 8, 8, 1], pixel values 0..16 scaled to 0..255 (bright strokes on dark); these
    uint8 images are the raw form (transform record: mode L, resize [8, 8], nothing else).
    Per-class split: in scikit-learn's order, the first ceil(0.75 n) images of each class are TRAIN,
    the rest TEST. Class split: seeded 6 / 2 / 2 train / val / test classes.
    """
    from sklearn.datasets import load_digits  # lazy: start-up time (scikit-learn takes seconds to import)

    del root, download
    bunch = load_digits()
    raw = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # [1797, 8, 8]
    transform = make_transform("L", raw.shape[1:3])
    images = decode_arrays(raw, transform)
    labels = bunch.target.astype(np.int64)
    split = per_class_split(labels)
    return ImageDataset(name="digits", images=images, labels=labels, class_names=[str(n) for n in bunch.target_names],
                        split=split, class_splits=seeded_class_splits(10, seed), transform=transform)
