"""Layer-wise collapse of a frozen backbone: NCC train error and CDNV per probed layer, and ε-effective depth.

One definition, used by the training curve (``ncbench.pretrain``) and the leaderboard (``ncbench.run``)
alike: **all** train images of the source classes, streamed through the model in batches, twice —

1. pass 1 accumulates each layer's class statistics (:class:`ncbench.metrics.ClassStatistics`: counts,
   means, squared deviations; no ``[d, d]`` scatter), which give the layer's CDNV;
2. pass 2 classifies every image by its nearest class mean *of that layer* and counts the errors
   (:class:`ncbench.metrics.ReferencedStatistics`).

So the flattened maps of thousands of images are never held in memory (Conv-4's first block alone is
16,384 numbers per 32×32 image).

Layers (DESIGN.md §1): for each variant — ``flat`` (a stage's output flattened) and ``pooled`` (global
average over H, W, for stages whose output is a map) — the probe stages of the backbone in forward order,
then the penultimate features. A layer whose tensor equals a later layer of its variant on every image is
the same layer probed twice (Conv-4's flattened last block *is* its penultimate feature vector; a ResNet's
pooled last stage *is* its pooled output) and is kept once, under the later name. L of a variant is the
number of distinct layers left; ``docs/metrics.md`` lists L for each registered backbone.

ε-effective depth = the first layer (1-based) whose NCC train error is ≤ ε, else L; decided on exact
counts (:func:`ncbench.metrics.reaches_eps`: k errors of n reach ε iff k ≤ ⌊ε·n⌋).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ncbench.backbones import extract
from ncbench.metrics import ClassStatistics, check_eps, depth_of, reaches_eps
from ncbench.metrics.kernels import mean_over_pairs

VARIANTS = ("flat", "pooled")
PENULTIMATE = "penultimate"
ROW_KEYS = ("layer", "variant", "ncc_error", "ncc_errors", "n", "cdnv")


@dataclass(frozen=True)
class LayerCurves:
    """The layer curves of one model on one set of labelled images.

    rows: one dict per (variant, layer) in layer order within each variant, keys :data:`ROW_KEYS`:
          ``layer`` (stage name or ``penultimate``), ``variant``, ``ncc_error`` (float, = ncc_errors / n),
          ``ncc_errors`` (int), ``n`` (int images), ``cdnv`` (float, None when two class means coincide).
    eps:  the ε of the depths.
    """

    rows: list[dict[str, Any]]
    eps: float

    def __post_init__(self) -> None:
        check_eps(self.eps)
        for i, r in enumerate(self.rows):
            if not isinstance(r, dict) or set(r) != set(ROW_KEYS):
                raise ValueError(f"layer curve row {i}: expected keys {list(ROW_KEYS)}, got {r!r}")
            if r["variant"] not in VARIANTS or not isinstance(r["layer"], str):
                raise ValueError(f"layer curve row {i}: variant must be one of {list(VARIANTS)} and layer a name")
            n, k = r["n"], r["ncc_errors"]
            if not (type(n) is int and type(k) is int and 0 <= k <= n and n > 0):
                raise ValueError(f"layer curve row {i}: need integers 0 <= ncc_errors <= n, n > 0; got {k!r} of {n!r}")
            if r["cdnv"] is not None and not (isinstance(r["cdnv"], float) and math.isfinite(r["cdnv"]) and r["cdnv"] >= 0):
                raise ValueError(f"layer curve row {i}: cdnv must be a finite float >= 0 or None, got {r['cdnv']!r}")

    def variant(self, variant: str) -> list[dict[str, Any]]:
        """The rows of one variant, layer 1 first."""
        return [r for r in self.rows if r["variant"] == variant]

    @property
    def depths(self) -> dict[str, int]:
        """ε-effective depth (1-based) of each variant present, from the exact error counts (L when no
        layer reaches ε: see :attr:`reached`)."""
        out = {}
        for v in VARIANTS:
            rows = self.variant(v)
            if rows:
                out[v] = depth_of([r["ncc_errors"] for r in rows], rows[0]["n"], self.eps)
        return out

    @property
    def reached(self) -> dict[str, bool]:
        """Whether some layer of each variant reaches ε, so that depth L means "reached at the last layer"
        rather than "never reached"."""
        return {v: any(reaches_eps(r["ncc_errors"], r["n"], self.eps) for r in self.variant(v))
                for v in VARIANTS if self.variant(v)}


def _layers(features: torch.Tensor, taps: dict[str, torch.Tensor], variant: str) -> list[tuple[str, torch.Tensor]]:
    """(name, [B, d]) of one variant in layer order: the stages' taps, then the penultimate features."""
    return [(k.rsplit("/", 1)[0], t) for k, t in taps.items() if k.endswith("/" + variant)] + [(PENULTIMATE, features)]


def _batches(model: nn.Module, images: np.ndarray, preprocessing: dict, batch_size: int, desc: str):
    for lo in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=None, leave=False):
        features, taps = extract(model, images[lo : lo + batch_size], preprocessing, batch_size=batch_size, layers=True)
        yield lo, features, taps


def layer_collapse(model: nn.Module, images: np.ndarray, labels: np.ndarray, preprocessing: dict[str, Any],
                   eps: float = 0.01, *, batch_size: int = 256) -> LayerCurves:
    """Stream ``images`` (uint8 [N, H, W, C]) with ``labels`` ([N] int, ≥ 2 classes) through ``model``
    twice and return the :class:`LayerCurves` of every variant (a variant no stage has, e.g. an MLP's
    ``pooled``, is absent; ``flat`` always holds at least the penultimate features, so a model without
    probe layers has L = 1)."""
    check_eps(eps)
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape [{len(images)}] like the images, got {list(labels.shape)}")
    classes = np.unique(labels)
    stats: dict[tuple[str, str], ClassStatistics] = {}
    same: dict[tuple[str, str, str], bool] = {}  # (variant, earlier, later) still equal on every image seen
    for lo, features, taps in _batches(model, images, preprocessing, batch_size, "layer curves (1/2)"):
        y = labels[lo : lo + len(features)]
        for v in VARIANTS:
            layers = _layers(features, taps, v)
            if len(layers) == 1 and v != "flat":  # no stage has this variant (an MLP has no maps to pool)
                continue
            for i, (name, t) in enumerate(layers):
                stats.setdefault((v, name), ClassStatistics(classes, within_scatter=False)).update(t, y)
                for later, u in layers[i + 1 :]:
                    key = (v, name, later)
                    same[key] = same.get(key, True) and t.shape == u.shape and torch.equal(t, u)
    kept = [(v, name) for (v, name) in stats if not any(same.get((v, name, other), False) for (w, other) in stats if w == v)]
    passes = {key: stats[key].referenced(collapse=False, nearest=True) for key in kept}
    for lo, features, taps in _batches(model, images, preprocessing, batch_size, "layer curves (2/2)"):
        y = labels[lo : lo + len(features)]
        for v in VARIANTS:
            for name, t in _layers(features, taps, v):
                if (v, name) in passes:
                    passes[(v, name)].update(t, y)
    rows = []
    for v, name in kept:
        done = passes[(v, name)].compute()
        cdnv = mean_over_pairs(stats[(v, name)].cdnv_matrix())
        rows.append({"layer": name, "variant": v, "ncc_error": done["ncc_errors"] / done["n"],
                     "ncc_errors": int(done["ncc_errors"]), "n": int(done["n"]),
                     "cdnv": cdnv if math.isfinite(cdnv) else None})
    return LayerCurves(rows, float(eps))
