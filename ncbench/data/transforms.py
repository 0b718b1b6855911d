"""The evaluation transform of a dataset: how one raw image becomes one row of ``ImageDataset.images``.

A *transform record* is a small JSON-serialisable dict kept on the dataset (``ImageDataset.transform``)
and, through :func:`ncbench.data.preprocessing.preprocessing_of`, in every checkpoint card
(``card.preprocessing["transform"]``)::

    {"mode": "L", "invert": true, "transpose": false, "resize": [28, 28], "resample": "bilinear"}

Its steps, always in this order:

1. ``mode``      ``"L"`` (grayscale, C = 1) or ``"RGB"`` (C = 3): PIL ``Image.convert(mode)``.
2. ``invert``    bool (default false): x -> 255 - x (Omniglot's black-on-white PNGs -> bright strokes).
3. ``transpose`` bool (default false): swap rows and columns (EMNIST's files store characters transposed).
4. ``resize``    [H, W], required: PIL ``resize`` to H rows x W columns with ``resample`` (antialiased when
                 shrinking); skipped when the image is already H x W.
5. ``resample``  the PIL filter of step 4: ``"bilinear"`` (default), ``"nearest"``, ``"bicubic"``,
                 ``"lanczos"``, ``"box"`` or ``"hamming"``.

:func:`decode` applies a record to a PIL image (a file a user opened, ``torchvision``'s ``ds[i][0]``);
:func:`decode_arrays` applies steps 2-4 to a batch of images already stored as arrays in the record's mode
(CIFAR's pickles, idx-ubyte files, rendered glyphs). Both run the same code; the loaders build their
``images`` with them and :func:`ncbench.features.embed_images` replays the card's record, so a user's raw
images reach the model exactly as the dataset's did.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

MODES = {"L": 1, "RGB": 3}  # PIL mode -> channels
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
            "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}
KEYS = ("mode", "invert", "transpose", "resize", "resample")
_DEFAULTS = {"invert": False, "transpose": False, "resample": "bilinear"}


def check_transform(transform: Any, where: str = "transform") -> dict[str, Any]:
    """The record ``transform`` validated and completed with defaults: a new dict with exactly the keys
    :data:`KEYS`, in that order. Raises ValueError naming the field (``<where>.<key>``) and what was expected."""
    if not isinstance(transform, dict):
        raise ValueError(f"{where}: expected a dict with keys {list(KEYS)}, got {type(transform).__name__}")
    unknown = sorted(set(transform) - set(KEYS), key=str)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; accepted keys: {list(KEYS)}")
    missing = [k for k in ("mode", "resize") if k not in transform]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; 'mode' and 'resize' are required")
    t = {**_DEFAULTS, **transform}
    if t["mode"] not in MODES:
        raise ValueError(f"{where}.mode: expected one of {list(MODES)}, got {t['mode']!r}")
    for key in ("invert", "transpose"):
        if not isinstance(t[key], (bool, np.bool_)):
            raise ValueError(f"{where}.{key}: expected true or false, got {t[key]!r}")
    size = t["resize"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in size)):
        raise ValueError(f"{where}.resize: expected [H, W], two positive integers, got {size!r}")
    if t["resample"] not in RESAMPLE:
        raise ValueError(f"{where}.resample: expected one of {list(RESAMPLE)}, got {t['resample']!r}")
    return {"mode": t["mode"], "invert": bool(t["invert"]), "transpose": bool(t["transpose"]),
            "resize": [int(size[0]), int(size[1])], "resample": t["resample"]}


def make_transform(mode: str, resize: tuple[int, int] | list[int], *, invert: bool = False, transpose: bool = False,
                   resample: str = "bilinear") -> dict[str, Any]:
    """A validated transform record (see the module docstring)."""
    return check_transform({"mode": mode, "invert": invert, "transpose": transpose, "resize": list(resize),
                            "resample": resample})


def plain_transform(channels: int, image_size: tuple[int, int] | list[int]) -> dict[str, Any]:
    """Convert to L (``channels`` 1) or RGB (3) and resize bilinearly to ``image_size`` [H, W]: what cards
    written before transforms were recorded meant."""
    modes = {c: m for m, c in MODES.items()}
    if channels not in modes:
        raise ValueError(f"channels: PIL images can only become 1 (L) or 3 (RGB) channels, got {channels!r}")
    return make_transform(modes[channels], image_size)


def decode_arrays(arrays: np.ndarray, transform: dict[str, Any]) -> np.ndarray:
    """Steps 2-4 of ``transform`` (invert, transpose, resize) on images already in its mode.

    arrays: uint8 [N, h, w] or [N, h, w, C] with C = 1 for mode L, 3 for RGB.
    Returns uint8 [N, H, W, C], C-contiguous, H x W = ``transform["resize"]`` (a view of ``arrays`` when
    no step changes them).
    """
    t = check_transform(transform)
    c = MODES[t["mode"]]
    x = np.asarray(arrays)
    if x.ndim == 3 and c == 1:
        x = x[..., None]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != c:
        raise ValueError(f"images for transform mode {t['mode']!r} must be uint8 [N, h, w, {c}]"
                         f"{' or [N, h, w]' if c == 1 else ''}, got {x.dtype} {list(x.shape)}")
    if t["invert"]:
        x = 255 - x
    if t["transpose"]:
        x = x.transpose(0, 2, 1, 3)
    h, w = t["resize"]
    if x.shape[1:3] != (h, w):
        resample = RESAMPLE[t["resample"]]
        x = np.stack([np.asarray(Image.fromarray(im[..., 0] if c == 1 else im).resize((w, h), resample), np.uint8)
                      for im in x]).reshape(len(x), h, w, c) if len(x) else np.zeros((0, h, w, c), np.uint8)
    return np.ascontiguousarray(x)


def decode(image: Image.Image, transform: dict[str, Any]) -> np.ndarray:
    """A PIL image (any mode or size) -> uint8 [H, W, C]: converted to the record's mode, then
    :func:`decode_arrays`' steps. The one function that turns a raw image into a dataset row."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image, got {type(image).__name__}")
    t = check_transform(transform)
    return decode_arrays(np.array(image.convert(t["mode"]), dtype=np.uint8)[None], t)[0]
