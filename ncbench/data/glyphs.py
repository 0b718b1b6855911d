"""``glyphs``: the embedded, offline default dataset — characters rendered from matplotlib's own fonts.

Classes are Unicode characters present in at least :data:`MIN_FONTS` of the :data:`FONT_FILES` that
ship inside matplotlib (12 DejaVu faces + 4 STIXGeneral faces). Each image draws its character in a
font drawn at random among those containing it, then applies seeded distortions, batched in torch:
stroke width (thin / dilate), affine (rotation, scale, aspect, shear, translation), an elastic warp,
clutter strokes, blur, contrast / background change and pixel noise.

Determinism: image ``i`` of the class with code point ``cp`` is a function of ``(seed, cp, i,
image_size)`` only: its random numbers are row ``i`` of one uniform matrix drawn per class from
``np.random.default_rng([seed, cp])``, so it does not depend on how many images or classes were asked
for. Datasets are rendered once and cached on disk (``.npz`` keyed by a hash of the options and
:data:`RENDERER_VERSION`); a corrupt or partial cache file is detected and re-rendered.

The font scan that finds the usable characters takes seconds; its result (the code points) is cached on
disk too, keyed by the matplotlib version, the scan's settings and the font files (paths, sizes, mtimes), so
a process that finds its images cached (a sandboxed unit, ``ncbench validate``) neither scans the fonts nor
imports torch or matplotlib.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import math
import os
import time
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ncbench.data.base import TEST, TRAIN, DatasetError, ImageDataset
from ncbench.runtime import default_cache_dir
from ncbench.data.transforms import decode_arrays, make_transform
from ncbench.files import atomic_write
from ncbench.registry import register_dataset

log = logging.getLogger(__name__)

RENDERER_VERSION = 5  # bump whenever rendered bytes change; part of the cache key
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)
MIN_FONTS = 12  # a character is a class when at least this many fonts draw it
CANVAS = 64  # clean glyphs are centred on a CANVAS x CANVAS float canvas
EM_PX = 44  # font size in pixels on that canvas
MIN_INK = 40.0  # a glyph whose ink (sum of pixel values / 255) is below this counts as empty
_SKIP_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Me"}

# Distortion strengths (uniform ranges); see _distort.
ROTATION_DEG = 18.0
SCALE = (0.75, 1.15)
ASPECT = 0.15  # log-aspect range +-
SHEAR = 0.35
TRANSLATE = 0.14  # fraction of the half-width
ELASTIC_GRID, ELASTIC_AMP = 5, 0.07
MAX_STROKES = 3
BLUR_SIGMA = (0.0, 0.8)  # output pixels
CONTRAST = (0.7, 1.0)
BACKGROUND = (0.0, 0.15)
NOISE_SIGMA = (0.02, 0.1)

# Column layout of the per-image uniform parameter row (pixel noise comes last: its width depends
# on image_size, so the columns before it are the same for every size).
_FONT, _ROT, _SCALE, _ASPECT, _SHEAR, _TX, _TY, _MORPH, _BLUR, _CONTRAST, _BG, _NOISE, _NSTROKES = range(13)
_STROKES = 13  # MAX_STROKES x (x0, y0, x1, y1, intensity, width)
_ELASTIC = _STROKES + 6 * MAX_STROKES
_PIXELS = _ELASTIC + 2 * ELASTIC_GRID * ELASTIC_GRID


def font_dir() -> Path:
    """The folder of TrueType fonts bundled with matplotlib (``matplotlib.get_data_path()/fonts/ttf``), found
    without importing matplotlib."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        raise DatasetError("glyphs: matplotlib is not installed; the glyphs dataset renders its bundled fonts")
    return Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"


def _font_paths() -> list[Path]:
    """The paths of :data:`FONT_FILES`; DatasetError naming the first one missing."""
    paths = [font_dir() / name for name in FONT_FILES]
    for path in paths:
        if not path.is_file():
            raise DatasetError(f"glyphs: matplotlib font {path} is missing; expected the fonts matplotlib ships")
    return paths


@functools.lru_cache(maxsize=1)
def _glyph_table() -> tuple[list[int], dict[int, list[np.ndarray]]]:
    """Render every candidate (character, font) once at EM_PX pixels.

    Returns the usable code points (ascending) and, for each, its clean bitmaps (uint8 [h, w], one per
    font that draws it with ink). Usable: not whitespace / control / combining, drawn with ink by
    >= MIN_FONTS fonts, and not pixel-identical in some font to an earlier usable character (Latin
    'A' / Greek 'Alpha' / Cyrillic 'A' are one class, not three).
    """
    from matplotlib.ft2font import FT2Font, LoadFlags  # lazy: start-up time (only a font scan needs matplotlib)

    start = time.perf_counter()
    fonts = []
    for path in _font_paths():
        font = FT2Font(str(path))
        font.set_size(EM_PX, 72)
        fonts.append(font)
    charmaps = [set(f.get_charmap()) for f in fonts]
    counts: dict[int, int] = {}
    for cmap in charmaps:
        for cp in cmap:
            counts[cp] = counts.get(cp, 0) + 1
    candidates = sorted(
        cp for cp, n in counts.items() if n >= MIN_FONTS and unicodedata.category(chr(cp)) not in _SKIP_CATEGORIES
    )
    usable: list[int] = []
    bitmaps: dict[int, list[np.ndarray]] = {}
    seen: set[tuple[int, tuple[int, int], bytes]] = set()
    for cp in candidates:
        crops, keys = [], []
        for fi, font in enumerate(fonts):
            if cp not in charmaps[fi]:
                continue
            font.set_text(chr(cp), 0.0, flags=LoadFlags.NO_HINTING)
            font.draw_glyphs_to_bitmap(antialiased=True)
            img = np.asarray(font.get_image())
            if img.size == 0 or img.sum() / 255.0 < MIN_INK:
                continue
            rows, cols = np.flatnonzero(img.any(1)), np.flatnonzero(img.any(0))
            crop = np.ascontiguousarray(img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
            crops.append(crop)
            keys.append((fi, crop.shape, crop.tobytes()))
        if len(crops) >= MIN_FONTS and not any(k in seen for k in keys):
            usable.append(cp)
            bitmaps[cp] = crops
            seen.update(keys)
    log.info("glyphs: %d usable characters from %d candidates in %.1f s", len(usable), len(candidates),
             time.perf_counter() - start)
    return usable, bitmaps


def scan_cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """The file caching the font scan's usable code points: ``<cache>/glyphs/fonts-<key>.json``, the key a hash
    of the matplotlib version, :data:`RENDERER_VERSION`, the scan's settings and each font file's path, size
    and modification time (a new matplotlib or a changed font gets a new file)."""
    fonts = []
    for path in _font_paths():
        st = path.stat()
        fonts.append([str(path), st.st_size, st.st_mtime_ns])
    key = json.dumps({"renderer": RENDERER_VERSION, "matplotlib": importlib.metadata.version("matplotlib"),
                      "min_fonts": MIN_FONTS, "em_px": EM_PX, "min_ink": MIN_INK,
                      "skip": sorted(_SKIP_CATEGORIES), "fonts": fonts}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return Path(cache_dir or default_cache_dir()) / "glyphs" / f"fonts-{digest}.json"


def _read_scan(path: Path) -> list[int] | None:
    """The cached usable code points in ``path``; None when it is absent or not a valid scan."""
    try:
        codepoints = json.loads(path.read_text(encoding="utf-8"))["codepoints"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("glyphs: font-scan cache %s is unreadable (%s); scanning the fonts again", path, err)
        return None
    if (not isinstance(codepoints, list) or not codepoints
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in codepoints)
            or codepoints != sorted(set(codepoints))):
        log.warning("glyphs: font-scan cache %s does not hold ascending code points; scanning the fonts again", path)
        return None
    return codepoints


@functools.lru_cache(maxsize=8)
def _usable(path: Path) -> tuple[int, ...]:
    cached = _read_scan(path)
    if cached is not None:
        return tuple(cached)
    usable = _glyph_table()[0]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({"codepoints": usable}).encode())
    except OSError as err:  # a read-only cache: the scan is still right, only not kept
        log.warning("glyphs: could not write the font-scan cache %s (%s)", path, err)
    return tuple(usable)


def usable_characters(cache_dir: str | os.PathLike | None = None) -> list[int]:
    """Code points of every usable glyph class, ascending (2,101 with matplotlib 3.11).

    Read from the font-scan cache (:func:`scan_cache_path` of ``cache_dir``) when it is there; otherwise the
    fonts are scanned and the result written there."""
    return list(_usable(scan_cache_path(cache_dir)))


def _clean_canvases(cp: int, size: int) -> torch.Tensor:
    """Clean glyphs of one character, one per font that draws it, in three stroke widths.

    The ink's bounding box is centred on a CANVAS x CANVAS canvas (shrunk when larger than its margin),
    half-eroded / kept / dilated there (3x3 max-pool), then resampled (antialiased) to ``size``.
    Returns float [F, 3, size, size] in [0, 1].
    """
    import torch  # lazy: start-up time (only rendering needs torch; cached images do not)
    import torch.nn.functional as F

    crops = _glyph_table()[1][cp]
    canvas = torch.zeros(len(crops), 1, CANVAS, CANVAS)
    limit = CANVAS - 4
    for k, crop in enumerate(crops):
        g = torch.from_numpy(crop).float().div(255.0)
        h, w = g.shape
        if max(h, w) > limit:
            f = limit / max(h, w)
            h, w = max(1, round(h * f)), max(1, round(w * f))
            g = F.interpolate(g[None, None], size=(h, w), mode="area")[0, 0]
        top, left = (CANVAS - h) // 2, (CANVAS - w) // 2
        canvas[k, 0, top : top + h, left : left + w] = g
    thin = 0.5 * (canvas - F.max_pool2d(-canvas, 3, 1, 1))  # half-way to the 3x3 erosion
    widths = torch.cat([thin, canvas, F.max_pool2d(canvas, 3, 1, 1)], 1)
    return F.interpolate(widths, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def _lerp(u: torch.Tensor, lo_hi: tuple[float, float]) -> torch.Tensor:
    return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * u


def _distort(clean: torch.Tensor, u: torch.Tensor, size: int) -> torch.Tensor:
    """Distort a batch of clean glyphs.

    clean: [B, 1, size, size] float in [0, 1] (stroke width already chosen); u: [B, _PIXELS + size*size] float64 uniforms.
    Returns float [B, size, size] in [0, 1], strokes bright on dark.
    """
    import torch  # lazy: start-up time (only rendering needs torch; cached images do not)
    import torch.nn.functional as F

    b = clean.shape[0]
    u = u.float()
    x = clean

    # affine (output -> input coordinates) plus a smooth elastic displacement
    angle = (u[:, _ROT] * 2 - 1) * math.radians(ROTATION_DEG)
    scale = _lerp(u[:, _SCALE], SCALE)
    aspect = torch.exp((u[:, _ASPECT] * 2 - 1) * ASPECT)
    shear = (u[:, _SHEAR] * 2 - 1) * SHEAR
    sx, sy = scale * aspect, scale / aspect
    cos, sin = torch.cos(angle), torch.sin(angle)
    # forward map A = R @ Sh @ S (2x2); the grid needs its inverse, written out (elementwise, so the
    # bytes do not depend on torch's thread count or matmul kernels)
    a11, a12 = cos * sx, (cos * shear - sin) * sy
    a21, a22 = sin * sx, (sin * shear + cos) * sy
    det = a11 * a22 - a12 * a21
    i11, i12, i21, i22 = a22 / det, -a12 / det, -a21 / det, a11 / det
    tx, ty = (u[:, _TX] * 2 - 1) * TRANSLATE, (u[:, _TY] * 2 - 1) * TRANSLATE
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    py, px = torch.meshgrid(coords, coords, indexing="ij")  # output pixel centres
    dx, dy = px[None] - tx[:, None, None], py[None] - ty[:, None, None]
    grid = torch.stack([i11[:, None, None] * dx + i12[:, None, None] * dy,
                        i21[:, None, None] * dx + i22[:, None, None] * dy], -1)  # [B, S, S, 2]
    g = ELASTIC_GRID
    field = (u[:, _ELASTIC : _ELASTIC + 2 * g * g].reshape(b, 2, g, g) * 2 - 1) * ELASTIC_AMP
    field = F.interpolate(field, size=(size, size), mode="bilinear", align_corners=True)
    grid = grid + field.permute(0, 2, 3, 1)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]  # [B, S, S]

    # clutter: 0..MAX_STROKES straight strokes (distance-to-segment), max-composited
    nstrokes = (u[:, _NSTROKES] * (MAX_STROKES + 1)).long().clamp(max=MAX_STROKES)
    for k in range(MAX_STROKES):
        p = u[:, _STROKES + 6 * k : _STROKES + 6 * (k + 1), None, None]  # [B, 6, 1, 1]
        ax, ay = (p[:, 0] * 2 - 1) * 0.95, (p[:, 1] * 2 - 1) * 0.95  # start point
        vx, vy = (p[:, 2] * 2 - 1) * 0.6, (p[:, 3] * 2 - 1) * 0.6  # segment vector
        t = (((px - ax) * vx + (py - ay) * vy) / (vx * vx + vy * vy).clamp(min=1e-6)).clamp(0, 1)
        dist = torch.sqrt((px - ax - t * vx) ** 2 + (py - ay - t * vy) ** 2)  # [B, S, S]
        half = 0.04 + 0.05 * p[:, 5]
        ink = (1 - dist / half).clamp(0, 1) * _lerp(p[:, 4], (0.35, 0.9)) * (k < nstrokes).float()[:, None, None]
        x = torch.maximum(x, ink)

    # blur with a per-image 5-tap Gaussian (separable, as weighted sums of shifted copies)
    sigma = _lerp(u[:, _BLUR], BLUR_SIGMA).clamp(min=1e-3)
    r = torch.arange(-2, 3, dtype=torch.float32)
    kern = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    kern = kern / kern.sum(1, keepdim=True)  # [B, 5]
    w = kern[:, None, None, :]
    xp = F.pad(x[:, None], (2, 2, 2, 2), mode="replicate")[:, 0]  # [B, S+4, S+4]
    x = sum(w[..., k] * xp[:, :, k : k + size] for k in range(5))  # horizontal pass, [B, S+4, S]
    x = sum(w[..., k] * x[:, k : k + size, :] for k in range(5))  # vertical pass, [B, S, S]

    # contrast, background, pixel noise (uniform noise with the drawn standard deviation)
    contrast = _lerp(u[:, _CONTRAST], CONTRAST)[:, None, None]
    bg = _lerp(u[:, _BG], BACKGROUND)[:, None, None]
    sd = _lerp(u[:, _NOISE], NOISE_SIGMA)[:, None, None]
    noise = (u[:, _PIXELS : _PIXELS + size * size].reshape(b, size, size) - 0.5) * math.sqrt(12.0)
    return (bg + (1 - bg) * contrast * x + sd * noise).clamp(0, 1)


def render(codepoints: list[int], per_class: int, seed: int, image_size: int) -> np.ndarray:
    """Render ``per_class`` distorted images of each character.

    codepoints: K usable code points. Returns uint8 [K, per_class, image_size, image_size].
    """
    import torch  # lazy: start-up time (only rendering needs torch; cached images do not)

    start = time.perf_counter()
    table = _glyph_table()[1]
    unknown = [cp for cp in codepoints if cp not in table]
    if unknown:
        raise DatasetError(f"glyphs: code points {unknown[:5]} are not usable glyph classes; see usable_characters()")
    out = np.empty((len(codepoints), per_class, image_size, image_size), np.uint8)
    width = _PIXELS + image_size * image_size
    chunk = max(1, 4096 // per_class)
    bar = tqdm(range(0, len(codepoints), chunk), desc="glyphs: rendering", unit="chunk", disable=None)
    for lo in bar:
        cps = codepoints[lo : lo + chunk]
        cleans, params = [], []
        for cp in cps:
            canv = _clean_canvases(cp, image_size)
            u = np.random.default_rng([seed, cp]).random((per_class, width))
            font = np.minimum((u[:, _FONT] * len(canv)).astype(np.int64), len(canv) - 1)
            morph = np.minimum((u[:, _MORPH] * 3).astype(np.int64), 2)
            cleans.append(canv[torch.from_numpy(font), torch.from_numpy(morph)])
            params.append(torch.from_numpy(u))
        imgs = _distort(torch.cat(cleans)[:, None], torch.cat(params), image_size)
        out[lo : lo + len(cps)] = (imgs * 255).round().to(torch.uint8).reshape(len(cps), per_class, image_size, image_size).numpy()
        bar.set_postfix(images=(lo + len(cps)) * per_class)
    log.info("glyphs: rendered %d classes x %d images at %dpx in %.1f s", len(codepoints), per_class, image_size,
             time.perf_counter() - start)
    return out


def _read_cache(path: Path, codepoints: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached images if ``path`` holds a complete, matching render; None otherwise."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images, cps = z["images"], z["codepoints"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        log.warning("glyphs: cache file %s is unreadable (%s); rendering again", path, err)
        return None
    if images.shape != shape or images.dtype != np.uint8 or not np.array_equal(cps, codepoints):
        log.warning("glyphs: cache file %s does not match its options; rendering again", path)
        return None
    return images


def _write_cache(path: Path, images: np.ndarray, codepoints: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, images=images, codepoints=codepoints)
    atomic_write(path, buf.getvalue())


# The loader option that re-renders the same classes with fresh distortions (``ncbench verify``'s fresh-seed
# check); a procedurally generated dataset says so with this attribute on its registered loader.
FRESH_SEED_OPTION = "distortion_seed"


@register_dataset("glyphs")
def load(
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    seed: int = 0,
    per_class: int = 40,
    classes: int | None = None,
    image_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    distortion_seed: int | None = None,
) -> ImageDataset:
    """Characters rendered from matplotlib's bundled fonts, with seeded distortions (offline).

    Options:
        root, download: accepted for a uniform loader signature; ignored (nothing to download).
        seed:       seeds the distortions and the class subset (int).
        per_class:  images per class (default 40).
        classes:    None = every usable character (2,101 with matplotlib 3.11); an int n = a seeded subset of n
                    characters, returned in code-point order.
        image_size: side of the square grayscale images (default 32).
        cache_dir:  where renders are cached (default ``$NCBENCH_CACHE`` or ``~/.cache/ncbench``).
        distortion_seed: None (default) = ``seed``; an int renders the same characters (still chosen by
                    ``seed``) with other distortions: a fresh draw of the same distribution, which
                    ``ncbench verify`` uses to expose a backbone that memorised the public images
                    (:data:`FRESH_SEED_OPTION`).

    Images: uint8 [K * per_class, image_size, image_size, 1], strokes bright on dark. Class names are
    the characters themselves. Per-class split: the first ceil(0.75 * per_class) images of each class
    are TRAIN, the rest TEST. No standard class split (``class_splits`` is empty). The rendered uint8
    images are the raw form (transform record: mode L, resize [image_size, image_size], nothing else).
    """
    del root, download
    if distortion_seed is not None and (not isinstance(distortion_seed, (int, np.integer))
                                        or isinstance(distortion_seed, bool)):
        raise DatasetError(f"glyphs: option 'distortion_seed' must be None or an integer, got {distortion_seed!r}")
    render_seed = int(seed if distortion_seed is None else distortion_seed)
    for opt, value in (("per_class", per_class), ("image_size", image_size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise DatasetError(f"glyphs: option {opt!r} must be a positive integer, got {value!r}")
    if image_size < 8:
        raise DatasetError(f"glyphs: option 'image_size' must be at least 8, got {image_size}")
    usable = usable_characters(cache_dir)
    if classes is None:
        chosen = usable
    elif isinstance(classes, (int, np.integer)) and not isinstance(classes, bool) and 1 <= classes <= len(usable):
        pick = np.random.default_rng([seed, len(usable)]).choice(len(usable), int(classes), replace=False)
        chosen = [usable[i] for i in sorted(pick)]
    else:
        raise DatasetError(f"glyphs: option 'classes' must be None or an int in 1..{len(usable)}, got {classes!r}")
    codepoints = np.asarray(chosen, dtype=np.int64)
    key = json.dumps({"v": RENDERER_VERSION, "fonts": FONT_FILES, "seed": render_seed, "per_class": int(per_class),
                      "image_size": int(image_size), "codepoints": hashlib.sha256(codepoints.tobytes()).hexdigest()},
                     sort_keys=True)
    path = Path(cache_dir or default_cache_dir()) / "glyphs" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"
    shape = (len(chosen), int(per_class), int(image_size), int(image_size))
    images = _read_cache(path, codepoints, shape)
    if images is None:
        images = render(chosen, int(per_class), render_seed, int(image_size))
        _write_cache(path, images, codepoints)
    else:
        log.info("glyphs: loaded %d classes from cache %s", len(chosen), path)
    n_train = math.ceil(0.75 * per_class)
    split = np.tile(np.where(np.arange(per_class) < n_train, TRAIN, TEST).astype(np.int8), len(chosen))
    labels = np.repeat(np.arange(len(chosen), dtype=np.int64), per_class)
    transform = make_transform("L", (int(image_size), int(image_size)))
    flat = decode_arrays(images.reshape(-1, image_size, image_size, 1), transform)
    return ImageDataset(name="glyphs", images=flat, labels=labels, class_names=[chr(c) for c in chosen],
                        split=split, transform=transform)


load.fresh_seed_option = FRESH_SEED_OPTION
