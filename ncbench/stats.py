"""Summary statistics of repeated measurements (episodes, seeds)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def mean_ci95(values: Any) -> tuple[float, float, int]:
    """Mean and 95 % confidence half-width of the mean: ``1.96 * std / sqrt(n)``, std with ``ddof=1``.

    values: [n] finite numbers (e.g. per-episode accuracies). The sample standard deviation (ddof=1) is
    the unbiased-variance estimate used for a confidence interval of a mean; with n = 1 it is undefined
    and ci95 is NaN. Returns (mean: float, ci95: float, n: int).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values: expected a non-empty 1-D array of numbers, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("values: contains NaN or infinite values")
    n = int(v.size)
    ci = 1.96 * float(v.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return float(v.mean()), ci, n
