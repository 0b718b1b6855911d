"""``omniglot``: handwritten characters (Lake et al. 2015) from a folder, torchvision root, or zip archive."""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ncbench.data.base import DatasetError, ImageDataset
from ncbench.data.common import (check_size, missing_files_error, per_class_split, require_root,
                                 read_image, seeded_class_splits)
from ncbench.data.transforms import make_transform
from ncbench.files import atomic_folder
from ncbench.registry import register_dataset
from ncbench.runtime import default_cache_dir

log = logging.getLogger(__name__)

_EXPECTED = ("a folder <alphabet>/<character>/*.png, a folder holding images_background/ and/or "
             "images_evaluation/ (torchvision's omniglot-py/), a .zip archive of one of these, or a folder of "
             "such archives")
_SETS = ("images_background", "images_evaluation")


def _extract(archive: Path, cache_dir: Path) -> Path:
    """Unzip ``archive`` once into ``cache_dir/omniglot/`` (keyed by path, size and mtime); return the folder.
    A single top-level folder inside the archive is descended into."""
    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / "omniglot" / f"{archive.stem}-{key}"
    if not target.is_dir():
        try:
            with atomic_folder(target) as tmp, zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        except zipfile.BadZipFile as err:
            raise missing_files_error("omniglot", archive, _EXPECTED, downloadable=False, cause=str(err)) from err
        log.info("omniglot: extracted %s into %s", archive, target)
    entries = [p for p in target.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target


def _character_folders(folder: Path) -> list[tuple[str, Path]]:
    """(``alphabet/character``, path) for every character folder under ``folder``, sorted."""
    return [(f"{a.name}/{c.name}", c)
            for a in sorted(p for p in folder.iterdir() if p.is_dir())
            for c in sorted(p for p in a.iterdir() if p.is_dir())]


def _union(groups: list[list[tuple[str, Path]]]) -> list[tuple[str, Path]]:
    """Characters of several sets, each name once (the first set's folder wins), sorted by name."""
    first: dict[str, Path] = {}
    for name, folder in (item for g in groups for item in g):
        first.setdefault(name, folder)
    return sorted(first.items())


@register_dataset("omniglot")
def load(
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    seed: int = 0,
    image_size: int = 28,
    cache_dir: str | os.PathLike | None = None,
) -> ImageDataset:
    """Omniglot in torchvision's on-disk layout.

    Options:
        root:       one of: a folder of ``<alphabet>/<character>/*.png`` (e.g. ``images_background``);
                    a folder holding ``images_background/`` and/or ``images_evaluation/``, or a
                    torchvision root holding ``omniglot-py/`` with them; a ``.zip`` of any of these
                    (unzipped once into ``cache_dir``); or a folder of such ``.zip`` archives (e.g.
                    ``omniglot-small/``: the union of their characters, a character in several archives
                    taken once, from the first archive by file name).
        download:   True lets ``torchvision.datasets.Omniglot`` fetch both sets into ``root/omniglot-py``.
        seed:       seeds the class split (when it is not background / evaluation).
        image_size: side of the square output images (default 28; the originals are 105x105).
        cache_dir:  where archives are unzipped (default ``$NCBENCH_CACHE`` or ``~/.cache/ncbench``).

    Images: uint8 [N, image_size, image_size, 1]: each PNG converted to L, inverted so strokes are bright
    on dark, resized bilinearly with antialiasing (transform record ``{"mode": "L", "invert": true,
    "transpose": false, "resize": [image_size, image_size], "resample": "bilinear"}``). Class names
    ``alphabet/character``. Per-class split: images sorted by file name, the first ceil(0.75 n) TRAIN
    (15 of the 20 drawers), the rest TEST. Class split: when both ``images_background`` and
    ``images_evaluation`` are present, background classes = ``train`` and evaluation classes = ``test``;
    otherwise seeded 60 / 20 / 20 % train / val / test.
    """
    size = check_size("omniglot", image_size)
    path = require_root("omniglot", root, _EXPECTED, downloadable=True, download=download)
    if download:
        from torchvision.datasets import Omniglot  # lazy: start-up time (torchvision imports torch._dynamo)

        for background in (True, False):
            Omniglot(str(path), background=background, download=True)
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise DatasetError(f"omniglot: root {str(path)!r} is a file but not a .zip archive; expected {_EXPECTED}")
        path = _extract(path, Path(cache_dir) if cache_dir else default_cache_dir())
    if (path / "omniglot-py").is_dir():
        path = path / "omniglot-py"
    sets = [path / s for s in _SETS if (path / s).is_dir()]
    archives = sorted(path.glob("*.zip")) if path.is_dir() and not sets else []
    if archives:  # a folder of archives (e.g. the small background sets): the union of their characters
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        groups = [_union([_character_folders(_extract(a, cache)) for a in archives])]
    else:
        groups = [_character_folders(s) for s in sets] if sets else [_character_folders(path)]
    names = [n for g in groups for n, _ in g]
    files = [sorted(c.glob("*.png")) for g in groups for _, c in g]
    if not names or not any(files):
        raise missing_files_error("omniglot", path, _EXPECTED, downloadable=True, cause="no <alphabet>/<character>/*.png found")
    transform = make_transform("L", (size, size), invert=True)
    images, labels = [], []
    for k, pngs in enumerate(tqdm(files, desc="omniglot: reading", unit="class", disable=None)):
        for png in pngs:
            images.append(read_image("omniglot", png, transform))
            labels.append(k)
    images_arr = np.stack(images)
    labels_arr = np.asarray(labels, np.int64)
    split = per_class_split(labels_arr)
    if len(sets) == 2:
        n_bg = len(groups[0])
        class_splits = {"train": list(range(n_bg)), "test": list(range(n_bg, len(names)))}
    else:
        class_splits = seeded_class_splits(len(names), seed)
    return ImageDataset(name="omniglot", images=images_arr, labels=labels_arr, class_names=names, split=split,
                        class_splits=class_splits, transform=transform)
