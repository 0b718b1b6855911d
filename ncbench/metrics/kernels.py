"""Small float64 kernels shared by the functional metrics and the streaming accumulators.

Everything here works on class statistics (means, per-class variances, within-class scatter) or on
one row chunk of features at a time, so the same formula serves the two-pass functional forms and the
one-pass streaming forms. No kernel loops over classes, pairs or samples in Python; the only loop is
over row chunks, which bounds memory to ``CHUNK_ELEMENTS`` float64 values per intermediate and keeps
element-wise work in cache.

Shapes: ``N`` samples, ``m`` feature dimensions, ``K`` classes, ``r = min(K - 1, m)`` the rank of
the between-class covariance.
"""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import torch

logger = logging.getLogger(__name__)

DTYPE = torch.float64
CHUNK_ELEMENTS = 1 << 20  # float64 values per row chunk of an [rows, max(m, K)] intermediate (8 MiB, cache-sized)


# ----------------------------------------------------------------------------------------- inputs
def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        arr = np.asarray(x)
    except Exception as err:  # ragged lists and other objects numpy cannot read
        raise ValueError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}") from err
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 8:  # long double: torch has no such dtype
        arr = arr.astype(np.float64)
    return torch.as_tensor(np.ascontiguousarray(arr))


def as_features(features, name: str = "features", check_finite: bool = True) -> torch.Tensor:
    """Validate ``features: [N, m]`` real (torch or numpy, any float dtype); returned in its own dtype.

    Float64 conversion happens per row chunk (:func:`row_chunks`), so a float32 input is never copied
    whole. NaN/inf values raise ``ValueError`` (``check_finite=False`` skips that read of the whole
    input, for callers that find non-finite values in their own results and then call this again).
    """
    f = _as_tensor(features, name)
    if f.is_complex() or f.dtype == torch.bool:
        raise ValueError(f"{name} must be real-valued, got dtype {f.dtype}")
    if f.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, m] array, got shape {tuple(f.shape)}")
    if f.shape[0] == 0 or f.shape[1] == 0:
        raise ValueError(f"{name} must have at least one sample and one dimension, got shape {tuple(f.shape)}")
    # one reduction: finite unless a NaN/inf is present or the sum overflows (then look element-wise)
    if check_finite and f.is_floating_point() and not bool(torch.isfinite(f.sum())) and not bool(torch.isfinite(f).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return f


def as_labels(labels, n: int, device: torch.device, name: str = "labels") -> torch.Tensor:
    """Validate ``labels: [N]`` integers (any values); returned as int64 on ``device``."""
    y = _as_tensor(labels, name)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name} must be integers, got dtype {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D [N] array, got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries but the features have {n} rows")
    return y.to(device=device, dtype=torch.int64)


def compute_device(features: torch.Tensor) -> torch.device:
    """Device the float64 work runs on: the input's own, except MPS (no float64 there) -> CPU."""
    return torch.device("cpu") if features.device.type == "mps" else features.device


def encode_labels(labels: torch.Tensor, name: str = "labels") -> tuple[torch.Tensor, torch.Tensor]:
    """``labels: [N]`` int64 -> (``classes: [K]`` sorted unique values, ``codes: [N]`` in 0..K-1).

    Labels spanning a range of at most 4N + 1024 values are encoded by counting (O(N), no sort).
    Raises ``ValueError`` for fewer than 2 classes.
    """
    low = int(labels.min()) if labels.numel() else 0
    span = int(labels.max()) - low + 1 if labels.numel() else 0
    if 0 < span <= 4 * labels.numel() + 1024:
        present = torch.bincount(labels - low, minlength=span) > 0
        classes = present.nonzero().squeeze(1) + low
        codes = (torch.cumsum(present, 0) - 1)[labels - low]
    else:
        classes, codes = torch.unique(labels, sorted=True, return_inverse=True)
    if classes.numel() < 2:
        raise ValueError(f"{name} must contain at least 2 classes, got {classes.tolist()}")
    return classes, codes


def codes_in(classes: torch.Tensor, labels: torch.Tensor, name: str) -> torch.Tensor:
    """Index of each of ``labels: [N]`` in sorted ``classes: [K]``; ``ValueError`` for unknown labels."""
    idx = torch.searchsorted(classes, labels).clamp_(max=classes.numel() - 1)
    unknown = classes[idx] != labels
    if bool(unknown.any()):
        missing = torch.unique(labels[unknown])[:10].tolist()
        raise ValueError(f"{name} contains classes absent from the reference classes: {missing}")
    return idx


def check_weight(weight, bias, num_classes: int, dim: int, device: torch.device):
    """Validate ``weight: [K, m]`` and optional ``bias: [K]``; returned float64 on ``device``."""
    a = as_features(weight, "weight").to(device=device, dtype=DTYPE)
    if tuple(a.shape) != (num_classes, dim):
        raise ValueError(f"weight must have shape [K, m] = [{num_classes}, {dim}] (rows in sorted class order), "
                         f"got {tuple(a.shape)}")
    if bias is None:
        return a, None
    b = _as_tensor(bias, "bias")
    if b.is_complex() or b.dtype == torch.bool or tuple(b.shape) != (num_classes,):
        raise ValueError(f"bias must be a real [K] = [{num_classes}] vector, got {b.dtype} {tuple(b.shape)}")
    b = b.to(device=device, dtype=DTYPE)
    if not bool(torch.isfinite(b).all()):
        raise ValueError("bias contains NaN or inf values")
    return a, b


def row_chunks(features: torch.Tensor, width: int, device: torch.device) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, chunk)`` with ``chunk: [rows, m]`` float64 on ``device``.

    The chunk height keeps a ``[rows, width]`` intermediate under ``CHUNK_ELEMENTS`` values.
    """
    n = features.shape[0]
    step = max(1, CHUNK_ELEMENTS // max(width, 1))
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        yield rows, features[rows].to(device=device, dtype=DTYPE)


SHIFT_CHUNK_ELEMENTS = 1 << 18  # float64 values of the reused [rows, m] buffer of shifted_chunks (2 MiB: in cache)


def shifted_chunks(features: torch.Tensor, codes: torch.Tensor,
                   reference: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, x)`` with ``x: [rows, m]`` float64 = features[rows] − reference[codes[rows]].

    ``features: [N, m]`` any float dtype, ``codes: [N]`` in 0..K−1 and ``reference: [K, m]`` float64 on
    the compute device. The conversion and the subtraction write one reused cache-sized buffer: ``x`` is
    overwritten by the next step, so consume it before asking for the next chunk.
    """
    n, dim = features.shape
    step = max(1, min(n, SHIFT_CHUNK_ELEMENTS // max(dim, 1)))
    buffer = torch.empty(step, dim, dtype=DTYPE, device=reference.device)
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        x = buffer[: rows.stop - start]
        torch.index_select(reference, 0, codes[rows], out=x)
        torch.sub(features[rows].to(device=reference.device), x, out=x)
        yield rows, x


# ------------------------------------------------------------------------------- class statistics
def check_counts(counts: torch.Tensor, classes: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the classes with no samples."""
    empty = counts == 0
    if bool(empty.any()):
        raise ValueError(f"classes with no samples: {classes[empty.to(classes.device)][:10].tolist()}")


def deviations(chunk: torch.Tensor, codes: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Rows f − μ_y: ``chunk: [n, m]``, ``codes: [n]``, ``means: [K, m]`` -> new ``[n, m]`` tensor."""
    return torch.index_select(means, 0, codes).neg_().add_(chunk)


def centred(means: torch.Tensor) -> torch.Tensor:
    """``means: [K, m]`` -> ``[K, m]`` rows μ_k − μ_G, μ_G the unweighted mean of class means."""
    return means - means.mean(0, keepdim=True)


# ------------------------------------------------------------------------------------------- CDNV
def cdnv_pairs(variances: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """CDNV of all pairs: ``variances: [K]`` (biased Var_k), ``means: [K, m]`` -> ``[K, K]``, zero diagonal.

    V(i, j) = (Var_i + Var_j) / (2 ‖μ_i − μ_j‖²), distances from one K×K Gram of centred means.
    Coinciding means give inf. The Gram expansion loses relative accuracy ~1e-16·‖μ − μ_G‖² / ‖μ_i − μ_j‖²
    for pairs much closer to each other than to the global mean.
    """
    mc = centred(means)
    gram = mc @ mc.T
    sq = gram.diagonal()
    dist2 = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_(min=0.0)
    num = variances[:, None] + variances[None, :]
    pairs = torch.where(dist2 > 0, num / (2.0 * dist2), torch.full_like(dist2, float("inf")))
    pairs.fill_diagonal_(0.0)
    if bool(torch.isinf(pairs).any()):
        logger.warning("two or more class means coincide: their CDNV is infinite")
    return pairs


def mean_over_pairs(matrix: torch.Tensor) -> float:
    """Mean of the strict upper triangle (the K(K−1)/2 unordered pairs) of ``matrix: [K, K]``."""
    k = matrix.shape[0]
    iu = torch.triu_indices(k, k, offset=1, device=matrix.device)
    return float(matrix[iu[0], iu[1]].mean())


# -------------------------------------------------------------------------------------------- NC1
ZERO_EIGENVALUE = 1e-10


def between_eigen(means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top eigenpairs of Σ_B = (1/K) Σ_k (μ_k − μ_G)(μ_k − μ_G)ᵀ with an explicit rank cut.

    ``means: [K, m]`` -> (``values: [r]``, ``vectors: [m, r]`` orthonormal), r ≤ min(K − 1, m).
    When m ≥ K the pairs come from the K×K Gram matrix Mc Mcᵀ / K (Σ_B v = λ v with v = Mcᵀu / √(Kλ)),
    so no m×m matrix is formed; otherwise from the m×m Σ_B itself.
    Of the top min(K − 1, m) pairs, those with λ ≤ ZERO_EIGENVALUE·λ_max are exact zeros of the
    pseudo-inverse (class means confined to a smaller subspace, e.g. dead ReLU units when m < K − 1) and
    are dropped, as Σ_B^† drops them; the cut is 1e-10 relative, far above float64 rounding and far below
    any real between-class direction.
    """
    k, m = means.shape
    mc = centred(means)
    r = min(k - 1, m)
    if m >= k:
        vals, u = torch.linalg.eigh(mc @ mc.T / k)
        vals, u = vals[-r:], u[:, -r:]
        vecs = (mc.T @ u) / torch.sqrt(k * vals.clamp(min=torch.finfo(DTYPE).tiny))
    else:
        vals, vecs = torch.linalg.eigh(mc.T @ mc / k)
        vals, vecs = vals[-r:], vecs[:, -r:]
    keep = vals > ZERO_EIGENVALUE * vals.max().clamp(min=0)
    if not bool(keep.all()):
        logger.info("Σ_B: %d of the top %d eigenvalues are zero; the pseudo-inverse skips them", int((~keep).sum()), r)
    return vals[keep], vecs[:, keep]


def nc1_value(within_along: torch.Tensor, values: torch.Tensor, num_classes: int) -> float:
    """NC1 = (1/K) tr(Σ_W Σ_B^†) = (1/K) Σ_i v_iᵀ Σ_W v_i / λ_i.

    ``within_along: [r]`` the v_iᵀ Σ_W v_i, ``values: [r]`` the λ_i from :func:`between_eigen`.
    All class means equal (Σ_B = 0, no eigenpair kept) gives inf.
    """
    if values.numel() == 0:
        logger.warning("all class means coincide (Σ_B = 0): NC1 is infinite")
        return float("inf")
    return float((within_along / values).sum()) / num_classes


def nc1_quotient_value(within_sq: torch.Tensor, counts: torch.Tensor, means: torch.Tensor) -> float:
    """tr(Σ_W) / tr(Σ_B) (Tirer et al. 2023) from per-class summed squared deviations ``within_sq: [K]``,
    ``counts: [K]`` and ``means: [K, m]``: tr(Σ_W) = Σ_k within_sq_k / N, tr(Σ_B) = (1/K) Σ_k ‖μ_k − μ_G‖².
    All class means equal gives inf."""
    between = float(centred(means).square().sum()) / means.shape[0]
    if between == 0.0:
        logger.warning("all class means coincide (tr Σ_B = 0): the NC1 quotient is infinite")
        return float("inf")
    return float(within_sq.sum() / counts.sum()) / between


def rank_limited(num_classes: int, dim: int) -> bool:
    """Whether K − 1 > m: then the K centred class means cannot form a simplex ETF in R^m and NC2 / NC3
    are bounded away from 0 whatever the training does."""
    return num_classes - 1 > dim


# ------------------------------------------------------------------------------------ NC2 and NC3
def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``x: [K, m]`` -> rows divided by their norms (a zero row gives NaN)."""
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True)


def etf_distance(gram: torch.Tensor) -> float:
    """‖G/‖G‖_F − (I_K − 11ᵀ/K)/√(K−1)‖_F for ``gram: [K, K]`` (NC2 with MMᵀ, NC3 with AMᵀ)."""
    k = gram.shape[0]
    etf = (torch.eye(k, dtype=DTYPE, device=gram.device) - 1.0 / k) / (k - 1) ** 0.5
    return float(torch.linalg.matrix_norm(gram / torch.linalg.matrix_norm(gram) - etf))


def nc2_values(means: torch.Tensor) -> dict[str, float]:
    """``means: [K, m]`` -> ``nc2``, ``nc2_equinorm`` (std/mean of ‖μ_k − μ_G‖, std with K − 1) and
    ``nc2_equiangularity`` (mean over pairs i ≠ j of |cos(μ_i − μ_G, μ_j − μ_G) + 1/(K − 1)|)."""
    k = means.shape[0]
    mc = centred(means)
    norms = torch.linalg.vector_norm(mc, dim=1)
    unit = unit_rows(mc)
    cos = unit @ unit.T
    off = ~torch.eye(k, dtype=torch.bool, device=means.device)
    return {
        "nc2": etf_distance(cos),
        "nc2_equinorm": float(norms.std() / norms.mean()),
        "nc2_equiangularity": float((cos[off] + 1.0 / (k - 1)).abs().mean()),
    }


def nc3_value(weight: torch.Tensor, means: torch.Tensor) -> float:
    """NC3 from ``weight: [K, m]`` (rows in sorted class order) and ``means: [K, m]``."""
    return etf_distance(weight @ unit_rows(centred(means)).T)


# ------------------------------------------------------------------------ nearest-mean decisions
def nearest_mean(chunk: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Index of the nearest class mean (Euclidean): ``chunk: [n, m]``, ``means: [K, m]`` -> ``[n]``.

    Both are shifted by μ_G first so the expansion ‖f‖² − 2⟨f, μ⟩ + ‖μ‖² does not lose the small
    distances of tight classes far from the origin.
    """
    g = means.mean(0, keepdim=True)
    mc = means - g
    return torch.argmax(2.0 * ((chunk - g) @ mc.T) - mc.square().sum(1), dim=1)


def classifier_argmax(chunk: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """argmax_c ⟨a_c, f⟩ + b_c: ``chunk: [n, m]``, ``weight: [K, m]``, ``bias: [K]`` or None -> ``[n]``."""
    logits = chunk @ weight.T
    if bias is not None:
        logits += bias
    return torch.argmax(logits, dim=1)


# ------------------------------------------------- float32 screening of float64 decisions (argmax)
def float32_products_exact_enough(device: torch.device) -> bool:
    """Whether float32 matrix products on ``device`` are plain IEEE float32 dot products (no TF32 / bf16
    shortcuts), the assumption of :func:`screened_argmax`'s error bound."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    return device.type != "cuda" or not torch.backends.cuda.matmul.allow_tf32


class LinearDecision:
    """argmax_c ⟨w_c, x⟩ + b_c over rows x, decided in float32 where that is provably the float64 decision.

    weight: ``[K, m]`` float64, bias: ``[K]`` float64 or None. :meth:`argmax` computes the scores with a
    float32 product; the float32 score of class c differs from the exact one by at most
    E·‖x‖·‖w_c‖ + tiny, E = (m + 4)·2⁻²⁴ / (1 − (m + 4)·2⁻²⁴) (rounding x and w to float32, and the
    γ_m bound of an m-term float32 dot product). A row whose float32 top-two margin exceeds twice that
    bound has the same argmax in exact arithmetic, hence in float64; the other rows (near-ties) are
    recomputed in float64 — so the decisions are the float64 ones, at float32 product speed.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight, self.bias = weight, bias
        k, m = weight.shape
        self.screen = k >= 2 and float32_products_exact_enough(weight.device)
        if self.screen:
            u = 2.0**-24
            self.rel = (m + 4) * u / (1 - (m + 4) * u)
            self.weight32 = weight.to(torch.float32)
            self.wmax = float(torch.linalg.vector_norm(weight, dim=1).max())
            self.bmax = 0.0 if bias is None else float(bias.abs().max())
            # float32 range: products below 2^-100 may underflow (absolute slack), above 2^100 fall back
            self.screen = bool(torch.isfinite(self.weight32).all()) and self.wmax < 2.0**60

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        """float64 argmax for ``x: [n, m]`` float64 -> ``[n]``."""
        logits = x @ self.weight.T
        if self.bias is not None:
            logits += self.bias
        return torch.argmax(logits, dim=1)

    def argmax(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [n, m]`` float64 -> ``[n]`` int64, equal to :meth:`exact` (ties to the lower class index)."""
        if not self.screen:
            return self.exact(x)
        norms = torch.linalg.vector_norm(x, dim=1)
        if not bool(norms.max() < 2.0**60):
            return self.exact(x)
        scores = (x.to(torch.float32) @ self.weight32.T).to(DTYPE)
        if self.bias is not None:
            scores += self.bias
        top = torch.topk(scores, 2, dim=1)
        bound = 2.0 * self.rel * norms * self.wmax
        bound += 2.0**-40 * (norms * self.wmax + self.bmax) + x.shape[1] * 2.0**-100  # float64 rounding, underflow
        pred = top.indices[:, 0]
        unsure = ~(top.values[:, 0] - top.values[:, 1] > bound)
        if bool(unsure.any()):
            pred[unsure] = self.exact(x[unsure])
        return pred


class NearestMeanDecision(LinearDecision):
    """Nearest class mean (Euclidean) as the linear rule of :func:`nearest_mean`: after shifting by μ_G,
    argmax_c 2⟨f − μ_G, μ_c − μ_G⟩ − ‖μ_c − μ_G‖², screened in float32 like :class:`LinearDecision`.
    ``means: [K, m]`` float64."""

    def __init__(self, means: torch.Tensor):
        self.g = means.mean(0, keepdim=True)
        mc = means - self.g
        self.mc = mc
        super().__init__(2.0 * mc, -mc.square().sum(1))

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        return torch.argmax(2.0 * (x @ self.mc.T) - self.mc.square().sum(1), dim=1)

    def argmax(self, chunk: torch.Tensor) -> torch.Tensor:
        """``chunk: [n, m]`` float64 features -> ``[n]`` nearest mean index (equal to :func:`nearest_mean`)."""
        return super().argmax(chunk - self.g)
