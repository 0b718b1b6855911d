"""Dataset loaders, registered by name, and :func:`load_dataset`.

Each loader module registers itself with ``@register_dataset(name)``; importing this package imports
them all. ``load_dataset("glyphs", classes=100)`` looks the name up (unknown names raise the
registry's "did you mean" error) and checks the options against the loader's signature.
"""

from __future__ import annotations

import inspect

from ncbench.data import cifar, digits, glyphs, mini_imagenet, mnist_like, omniglot  # noqa: F401  (register loaders)
from ncbench.data.base import TEST, TRAIN, DatasetError, ImageDataset
from ncbench.registry import DATASETS

__all__ = ["DatasetError", "ImageDataset", "TEST", "TRAIN", "dataset_options", "load_dataset"]


def dataset_options(name: str) -> list[str]:
    """The keyword options the loader registered as ``name`` accepts, sorted."""
    return sorted(inspect.signature(DATASETS.get(name)).parameters)


def load_dataset(name: str, **options) -> ImageDataset:
    """Load the dataset registered as ``name`` with its documented keyword ``options``."""
    loader = DATASETS.get(name)
    accepted = dataset_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(f"dataset {name!r}: unknown option(s) {', '.join(map(repr, unknown))}; "
                           f"accepted options: {', '.join(accepted)}")
    return loader(**options)
