"""Few-shot heads on cached features, fitted on one support set or on thousands of episodes at once.

Every head here is a linear classifier on (possibly transformed) features: it turns a support set into a
weight ``[W, m]`` (one row per class, like sklearn's ``coef_``) and a bias ``[W]``, and predicts
``argmax_c (weight @ t(x) + bias)_c``.

- :class:`RidgeHead` -- least squares onto one-hot targets, unpenalised intercept, penalty ``alpha``.
  Same argmax as scikit-learn's ``RidgeClassifier(alpha)``: sklearn regresses onto ``2 T - 1`` (``T`` the
  one-hot matrix) after centring X and Y. Ridge with an intercept is linear in the targets, so its scores
  are ``2 s - 1`` for our scores ``s``: same argmax, same first-index tie-break. For two classes sklearn
  fits the single column ``2 T[:, 1] - 1 = T[:, 1] - T[:, 0]`` and predicts class 1 iff its decision
  ``s_1 - s_0 > 0``, which is again our argmax (a tie goes to class 0 in both).
- :class:`NCCHead` -- nearest class mean, Euclidean; with ``cl2n=True`` SimpleShot's CL2N: subtract
  ``center`` (the source-train mean feature) and L2-normalise before taking means. As a linear rule:
  ``-|x - mu_c|^2 = 2 x.mu_c - |mu_c|^2 - |x|^2`` and ``|x|^2`` does not depend on the class.
- :class:`LogisticHead` -- RFS (Tian et al. 2020): L2-normalised features, multinomial logistic regression
  with sklearn's ``LogisticRegression(C)`` objective ``C * sum_i CE_i + |weight|_F^2 / 2`` (intercept not
  penalised), solved by batched Newton's method. For two classes sklearn fits a binary (sigmoid) model
  ``C * sum_i log(1 + exp(-y_i v.x_i)) + |v|^2 / 2``; a two-class softmax with weights ``(w_0, w_1)`` only
  sees ``v = w_1 - w_0`` and its penalty is smallest at ``w_1 = -w_0 = v / 2``, where it equals ``|v|^2 / 4``,
  so the two-class softmax with ``C / 2`` is exactly sklearn's binary model.

Each head class registers itself (:func:`register_head`) under the name tasks use (``ridge``, ``ncc``,
``logistic``); its options are its constructor's keyword arguments, so centring and normalisation are
options of one NCC head, not separate heads. ``ncc-cl2n`` is kept as an alias of ``ncc`` with
``cl2n=True`` (older tasks and leaderboard rows use that name, and :func:`head_label` gives it back).

Fits are computed in float64 (the inputs may be any float dtype) and checked against sklearn's float64
solutions. The ridge dual form centres the n x n gram rather than X (no centred copy of the support set);
its rounding grows like (|common mean| / spread)^2 * 1e-16, about 1e-11 for an offset 100 x the spread.
In :func:`episode_accuracy` the head's (row-wise) transform is applied once to the N feature rows, supports are
solved in float64, and queries are scored in float32 (the features themselves when they are float32 and the head
uses raw features, else the float32 rounding of the transformed float64 rows) with a proven error bound, and
rescored in float64 where the bound does not separate the top class (:func:`_certified_argmax`): the
predictions are those of the float64 scores.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ncbench.registry import HEADS

log = logging.getLogger(__name__)

#: working memory of one chunk of episodes in :func:`episode_accuracy` when ``chunk_size`` is not given:
#: a share of a last-level cache; chunks of about 32-64 five-way 640-d episodes measured fastest (per-chunk op
#: launches against cache misses)
CHUNK_BUDGET_BYTES = 32 * 2**20
_F64 = 8


# ----------------------------------------------------------------------------------------------- validation
def _float_tensor(x: Any, name: str, shape: str, ndim: int) -> torch.Tensor:
    """``x`` as a float64 tensor, checked for rank and finiteness; ``shape`` names the expected shape."""
    t = torch.as_tensor(x)
    if t.ndim != ndim or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected a real {shape} array, got {t.dtype} with shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return t


def _int_tensor(x: Any, name: str, shape: tuple[int, ...] | None, shape_text: str) -> torch.Tensor:
    """``x`` as an int64 tensor of exactly ``shape`` (``None``: any 2-D shape)."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer labels/indices, got dtype {t.dtype}")
    if (t.ndim != 2) if shape is None else (tuple(t.shape) != shape):
        raise ValueError(f"{name}: expected shape {shape_text}{'' if shape is None else f' = {shape}'}, "
                         f"got {tuple(t.shape)}")
    return t.to(torch.int64)


def _positive(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _one_hot(labels: torch.Tensor, name: str) -> torch.Tensor:
    """labels: [E, n] int in 0..W-1, every label present in every episode -> [E, n, W] float64."""
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{name}: labels must lie in 0..W-1, got {int(labels.min())}")
    ways = int(labels.max()) + 1 if labels.numel() else 0
    if ways < 2:
        raise ValueError(f"{name}: need at least 2 classes per episode, got labels 0..{ways - 1}")
    onehot = torch.nn.functional.one_hot(labels, ways).to(torch.float64)
    missing = (onehot.sum(1) == 0).nonzero()
    if len(missing):
        e, k = (int(v) for v in missing[0])
        raise ValueError(f"{name}: episode {e} has no support example of label {k}; every episode must "
                         f"contain every label 0..{ways - 1}")
    return onehot


# -------------------------------------------------------------------------------------------------- heads
def register_head(name: str, **fixed: Any):
    """Class decorator: register a :class:`Head` class under ``name``, as timm registers models. With
    ``fixed`` options the name is an alias of the class with those options set (``ncc-cl2n`` = ``ncc`` with
    ``cl2n=True``): the registry entry is then ``functools.partial(cls, **fixed)``. A head's options are its
    constructor's keyword arguments."""

    def add(cls: type[Head]) -> type[Head]:
        HEADS.register(name, functools.partial(cls, **fixed) if fixed else cls)
        return cls

    return add


def _parts(entry: Any) -> tuple[type[Head], dict[str, Any]]:
    """(head class, fixed options) of a registry entry."""
    return (entry.func, dict(entry.keywords)) if isinstance(entry, functools.partial) else (entry, {})


class Head:
    """A linear few-shot head: ``scores = transform(x) @ weight.T + bias``, prediction = argmax.

    Subclasses define :meth:`transform` (features -> features; :attr:`raw_features` says it is the identity),
    :meth:`solve` (the batched fit) and :meth:`bytes_per_episode` (memory estimate that sizes chunks).
    """

    classes_: np.ndarray

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., m] float64 -> [..., m] float64; identity unless the head normalises features. Must map each row
        on its own: :func:`episode_accuracy` applies it once to all N feature rows."""
        return x

    def solve(self, support_x: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """support_x: [E, n, m] float64 (transformed), onehot: [E, n, W] float64 -> (weight [E, W, m], bias [E, W])."""
        raise NotImplementedError

    def solve_rows(self, features: torch.Tensor, rows: torch.Tensor, onehot: torch.Tensor,
                   out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`solve` on support sets given as rows of a feature table.

        features: [N, m] float64 (transformed), rows: [k, n] int64 indices into it, onehot: [k, n, W] float64;
        out: an optional [>= k * n, m] float64 buffer for the gathered rows -> (weight [k, W, m], bias [k, W]).
        """
        k, n = rows.shape
        sx = torch.index_select(features, 0, rows.reshape(-1), out=None if out is None else out[: k * n])
        return self.solve(sx.view(k, n, features.shape[1]), onehot)

    def bytes_per_episode(self, n_support: int, n_query: int, dim: int, ways: int) -> int:
        """Approximate working memory (bytes) of one episode in :func:`episode_accuracy`: its gathered features
        (support in float64, queries in float32), the float32 weight and the [n_q, W] scores and bounds, plus what
        :meth:`solve` allocates (the subclasses add that)."""
        return _F64 * n_support * dim + 4 * n_query * dim + _F64 * (ways * dim + 6 * n_query * ways)

    # -- one support set
    def fit(self, X: Any, y: Any) -> "Head":
        """X: [n, m] float (numpy or torch), y: [n] int labels (any integers, at least two distinct)."""
        X = _float_tensor(X, "X", "[n, m]", 2)
        y = _int_tensor(y, "y", (X.shape[0],), "[n] matching X")
        classes, codes = torch.unique(y, return_inverse=True)
        self.classes_ = classes.numpy()
        self.weight_, self.bias_ = (p[0] for p in self.solve(self.transform(X)[None], _one_hot(codes[None], "y")))
        return self

    def predict(self, Xq: Any) -> np.ndarray:
        """Xq: [q, m] float -> [q] int64 labels from the label set of ``y`` given to :meth:`fit`."""
        if not hasattr(self, "weight_"):
            raise RuntimeError(f"{type(self).__name__}.predict called before fit")
        Xq = _float_tensor(Xq, "Xq", "[q, m]", 2)
        if Xq.shape[1] != self.weight_.shape[1]:
            raise ValueError(f"Xq: expected {self.weight_.shape[1]} features per row (as in fit), got {Xq.shape[1]}")
        scores = self.transform(Xq) @ self.weight_.T + self.bias_
        return self.classes_[scores.argmax(-1).numpy()]

    # -- many episodes at once
    def predict_episodes(self, support_x: Any, support_y: Any, query_x: Any) -> np.ndarray:
        """Fit one head per episode and predict its queries, all episodes in one batched solve.

        support_x: [E, n_s, m] float, support_y: [E, n_s] int in 0..W-1 (every label in every episode),
        query_x: [E, n_q, m] float -> [E, n_q] int64 predicted labels in 0..W-1.
        """
        sx = _float_tensor(support_x, "support_x", "[E, n_s, m]", 3)
        qx = _float_tensor(query_x, "query_x", "[E, n_q, m]", 3)
        if qx.shape[0] != sx.shape[0] or qx.shape[2] != sx.shape[2]:
            raise ValueError(f"query_x: expected shape [E={sx.shape[0]}, n_q, m={sx.shape[2]}] to match support_x, "
                             f"got {tuple(qx.shape)}")
        onehot = _one_hot(_int_tensor(support_y, "support_y", tuple(sx.shape[:2]), "[E, n_s]"), "support_y")
        return self._predict_checked(sx, onehot, qx).numpy()

    @property
    def raw_features(self) -> bool:
        """True when :meth:`transform` is the identity (queries may then be scored by :func:`_certified_argmax`)."""
        return False

    def _predict_checked(self, support_x: torch.Tensor, onehot: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Validated float64 support_x [E, n_s, m], onehot [E, n_s, W], query_x [E, n_q, m] -> [E, n_q] int64.

        query_x may be float32 when :attr:`raw_features`: it is then scored by :func:`_certified_argmax`,
        which returns the float64 argmax.
        """
        weight, bias = self.solve(self.transform(support_x), onehot)
        if query_x.dtype == torch.float32 and self.raw_features:
            return _certified_argmax(weight, bias, query_x)
        query_x = self.transform(query_x.to(torch.float64))
        # [E, W, n_q] = weight query^T: the faster layout for a few classes and many features
        return torch.baddbmm(bias[:, :, None], weight, query_x.transpose(1, 2)).argmax(1)


def _gamma(n: int, unit_roundoff: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): bounds the relative error of an n-term float sum, in any order."""
    return n * unit_roundoff / (1 - n * unit_roundoff)


def _certified_argmax(weight: torch.Tensor, bias: torch.Tensor, query_x: torch.Tensor, *,
                      q_norm: torch.Tensor | None = None, exact_query: Any = None) -> torch.Tensor:
    """argmax_c of ``weight @ q + bias`` scored in float32, with float64 rescoring wherever float32 is not enough.

    weight: [E, W, m] float64, bias: [E, W] float64, query_x: [E, n_q, m] float32 -> [E, n_q] int64;
    q_norm: [E, n_q] float64, the 2-norms of query_x's rows (computed here when None).
    Without ``exact_query`` the float32 queries are the exact inputs. With it they are the float32 roundings
    of float64 queries ``q`` and ``exact_query(e, j)`` -> [len(e), m] float64 returns those rows of ``q``
    (indices e, j as from ``nonzero``); the rounding adds ``u32 |w|.|q|`` (plus ``2^-149 |w|_1`` for subnormals).

    With w, b rounded to float32 (relative error u32) and the m + 1 term sum done in float32 in any order,
    each float32 score is within ``(gamma32_{m+1} + 2 u32) (|w|.|q| + |b|)`` of the exact score, and
    ``|w|.|q| <= |w|_2 |q|_2 <= max_c |w_c|_2 |q|_2`` (plus an absolute term for float32 underflow; a query
    whose ``max_c |w_c|_2 |q|_2 + |b|_max`` could let a float32 partial sum overflow is never trusted). Adding twice float64's own bound ``gamma64_{m+1}`` gives one bound per query, for all its
    classes: a query whose two largest float32 scores differ by more than twice it has the same argmax as the
    exact and the float64 scores (first index on exact ties, as torch's argmax); the few others are rescored in
    float64.
    """
    m = weight.shape[2]
    u32, u64 = 2.0 ** -24, 2.0 ** -53
    rel = 1.001 * (_gamma(m + 1, u32) + 2 * u32 + 2 * _gamma(m + 1, u64) + (u32 if exact_query is not None else 0))
    # [E, n_q, W]: the class axis last, so the reductions over it are contiguous
    scores = torch.baddbmm(bias.to(torch.float32)[:, None, :], query_x, weight.to(torch.float32).transpose(1, 2))
    if q_norm is None:
        q_norm = torch.linalg.vector_norm(query_x, dim=2).to(torch.float64)  # [E, n_q]; rounding (< 1e-4) in 1.001
    w_max = torch.linalg.vector_norm(weight, dim=2).amax(1, keepdim=True)                      # [E, 1]
    b_max = bias.abs().amax(1, keepdim=True)
    size = torch.addcmul(b_max, q_norm, w_max)                  # [E, n_q]: bounds every float32 partial sum / (1 + u)
    bound = size * rel + (m + 2) * 2.0 ** -126 * (1 + m ** 0.5 * q_norm)                        # + underflow
    if exact_query is not None:                                                              # subnormal queries
        bound += 2.0 ** -149 * m ** 0.5 * w_max
    top, pred = scores.topk(2, dim=2) if scores.shape[2] > 1 else (scores.expand(-1, -1, 2), scores.argmax(2, True))
    top = top.to(torch.float64)
    # unsure: a margin not above twice the bound (or NaN), or a float32 partial sum that may have overflowed
    unsure = ~(top[:, :, 0] - top[:, :, 1] > 2 * bound) | ~(size < 2.0 ** 127)
    pred = pred[:, :, 0]
    e, j = unsure.nonzero(as_tuple=True)
    if len(e):
        q = exact_query(e, j) if exact_query is not None else query_x[e, j].to(torch.float64)
        exact = torch.baddbmm(bias[e][:, :, None], weight[e], q[:, :, None])
        pred[e, j] = exact[:, :, 0].argmax(1)
    return pred


@register_head("ridge")
class RidgeHead(Head):
    """Ridge regression onto one-hot targets with an unpenalised intercept (= sklearn ``RidgeClassifier``).

    ``min_{w, b} |X w + 1 b - T|_F^2 + alpha |w|_F^2``; with centred ``Xc``, ``Tc`` the weight is
    ``(Xc^T Xc + alpha I_m)^-1 Xc^T Tc`` (primal, n >= m) or ``Xc^T (Xc Xc^T + alpha I_n)^-1 Tc`` (dual, n < m),
    and ``b = mean(T) - mean(X) w``. Both are batched Cholesky solves.
    """

    def __init__(self, alpha: float = 1.0):
        self.alpha = _positive(alpha, "alpha")

    raw_features = True

    def solve(self, support_x, onehot):
        n, m = support_x.shape[1:]
        t_mean = onehot.mean(1, keepdim=True)                                             # [E, 1, W]
        tc = onehot - t_mean
        if n < m:
            # centred gram (I - 11^T/n) X X^T (I - 11^T/n) from the n x n gram: no centred copy of X
            gram = torch.bmm(support_x, support_x.transpose(1, 2))
            row = gram.mean(2, keepdim=True)                                              # [E, n, 1] = X mean(X)
            gram = gram.sub_(row).sub_(row.transpose(1, 2)).add_(row.mean(1, keepdim=True))
            gram.diagonal(dim1=1, dim2=2).add_(self.alpha)
            chol, info = torch.linalg.cholesky_ex(gram)
            if info.any():
                raise ValueError("RidgeHead: the support gram is not positive definite (non-finite or huge features?)")
            coef = torch.cholesky_solve(tc, chol).transpose(1, 2)                         # [E, W, n]
            # weight = coef^T Xc = coef^T X - (coef^T 1) mean(X)^T = (coef - 1 mean(coef))^T X: centring the n
            # coefficients replaces centring X. (Exactly, 1^T coef = 1^T tc / alpha = 0 as (Gc + alpha I) 1 = alpha 1,
            # but its rounding, times a large mean(X), matters.) bias = mean(T) - weight mean(X) = mean(T) - coef^T row.
            coef = coef - coef.mean(2, keepdim=True)
            weight = torch.bmm(coef, support_x)
            bias = t_mean[:, 0] - torch.bmm(coef, row)[:, :, 0]
            return weight, bias
        x_mean = support_x.mean(1, keepdim=True)                                          # [E, 1, m]
        xc = support_x - x_mean
        gram = xc.transpose(1, 2) @ xc
        gram.diagonal(dim1=1, dim2=2).add_(self.alpha)
        weight = torch.cholesky_solve(xc.transpose(1, 2) @ tc, torch.linalg.cholesky(gram)).transpose(1, 2)
        bias = t_mean[:, 0] - (weight @ x_mean.transpose(1, 2))[:, :, 0]
        return weight, bias

    def bytes_per_episode(self, n_support, n_query, dim, ways):
        k = min(n_support, dim)
        extra = (n_support * dim if n_support >= dim else 0) + 3 * k * k + dim * ways  # (centred x,) gram, weight
        return super().bytes_per_episode(n_support, n_query, dim, ways) + _F64 * extra


@register_head("ncc")
@register_head("ncc-cl2n", cl2n=True)  # SimpleShot CL2N: the old name, kept for tasks and rows
class NCCHead(Head):
    """Nearest class mean (Euclidean); ``cl2n=True``: SimpleShot CL2N, ``x -> (x - center) / |x - center|``.

    center: [m] float, the mean feature of the source-train set (required when ``cl2n=True``).
    """

    def __init__(self, cl2n: bool = False, center: Any = None):
        if not isinstance(cl2n, bool):
            raise ValueError(f"cl2n must be True or False, got {cl2n!r}")
        self.cl2n = cl2n
        self.center = None if center is None else _float_tensor(center, "center", "[m]", 1)

    @property
    def raw_features(self) -> bool:
        return not self.cl2n

    def transform(self, x):
        if not self.cl2n:
            return x
        if self.center is None:
            raise ValueError("center: NCCHead(cl2n=True) needs the source-train mean feature [m] as `center`")
        if self.center.shape[0] != x.shape[-1]:
            raise ValueError(f"center: expected {x.shape[-1]} features to match the data, got {self.center.shape[0]}")
        return torch.nn.functional.normalize(x - self.center, dim=-1)

    def bytes_per_episode(self, n_support, n_query, dim, ways):
        return super().bytes_per_episode(n_support, n_query, dim, ways) + _F64 * 2 * ways * dim   # sums, weight

    def solve(self, support_x, onehot):
        E, n, m = support_x.shape
        return self.solve_rows(support_x.reshape(E * n, m), torch.arange(E * n).view(E, n), onehot)

    def solve_rows(self, features, rows, onehot, out=None):
        # the class sums straight from the feature table (one bag of rows per episode and class): no gathered
        # copy of the support set and no [W, n] x [n, m] product per episode
        k, n = rows.shape
        ways = onehot.shape[2]
        counts = onehot.sum(1)                                                         # [k, W]
        by_class = rows.gather(1, onehot.argmax(2).argsort(dim=1, stable=True)).reshape(-1)
        sizes = counts.reshape(-1).to(torch.int64)
        sums = torch.nn.functional.embedding_bag(by_class, features, sizes.cumsum(0) - sizes, mode="sum")
        means = sums.view(k, ways, -1) / counts[..., None]                           # [k, W, m]
        return 2 * means, -(means * means).sum(-1)


@register_head("logistic")
class LogisticHead(Head):
    """RFS logistic regression: L2-normalised features, sklearn ``LogisticRegression(C)`` objective.

    Solved by batched Newton's method with backtracking. With n support samples and m features the
    weight lies in the row space of the support features (representer theorem), so when n < m the
    problem is solved in an orthonormal basis of that space (QR of ``X^T``): n * W + W unknowns per
    episode instead of m * W + W. The intercept is invariant to adding a constant to every class; the
    Newton system adds the projector onto that direction, which gives the minimum-norm exact Newton step.
    Stops after the full Newton step taken once every episode's Newton decrement (about twice the gap to
    the optimum) is below ``tol``. Once a full step with decrement below 1e-4 was taken, the next step is first
    tried with that step's Hessian (a chord step: two triangular solves), and taken as the last one if its
    decrement is below ``tol``; this saves the last Hessian, whose step is ~sqrt(tol) long anyway.
    """

    def __init__(self, C: float = 1.0, tol: float = 1e-12, max_iter: int = 50):
        self.C = _positive(C, "C")
        self.tol = _positive(tol, "tol")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        self.max_iter = max_iter

    def transform(self, x):
        return torch.nn.functional.normalize(x, dim=-1)

    def _basis(self, support_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """support_x: [E, n, m] -> (z [E, n, r], map back, is_cholesky). When n < m: ``z = L``, the Cholesky factor
        of the gram ``X X^T = L L^T``, so the orthonormal basis ``Q = X^T L^-T`` ([E, m, n]) of the row space is
        never formed: a weight ``v^T Q^T = (L^-T v)^T X``. A chunk where some gram is nearly singular (a pivot
        ``L_ii^2 < 1e-6 max_i G_ii``, e.g. repeated features: ``L^-1`` would amplify rounding) uses the QR of
        ``X^T`` instead. When n >= m: z = X."""
        E, n, m = support_x.shape
        if n >= m:
            return support_x, None, False
        gram = torch.bmm(support_x, support_x.transpose(1, 2))
        chol, info = torch.linalg.cholesky_ex(gram)
        pivots = chol.diagonal(dim1=1, dim2=2)
        if not info.any() and bool((pivots.amin(1) ** 2 > 1e-6 * gram.diagonal(dim1=1, dim2=2).amax(1)).all()):
            return chol, chol, True
        basis = torch.linalg.qr(support_x.transpose(1, 2))[0]                                # [E, m, n]
        return support_x @ basis, basis, False

    def solve(self, support_x, onehot):
        E, n, m = support_x.shape
        ways = onehot.shape[2]
        z, back, is_chol = self._basis(support_x)
        z = torch.cat([z, z.new_ones(E, n, 1)], dim=2)                               # [E, n, r1], bias last
        r1 = z.shape[2]
        c = self.C / 2 if ways == 2 else self.C                                     # sklearn's binary model
        pen = torch.ones(r1, dtype=z.dtype)
        pen[-1] = 0                                                                  # intercept unpenalised
        pen_col = pen[:, None]
        # U = [Q, u]: Q's column i is p_i (x) z_i (the Hessian's data part is M - c Q Q^T with M block-diagonal
        # over classes), u the unit direction that shifts every class intercept equally (the null direction)
        null = torch.zeros(E, ways, r1, 1, dtype=z.dtype)
        null[:, :, -1] = ways ** -0.5
        inner_diag = torch.full((n + 1,), -1 / c, dtype=z.dtype)
        inner_diag[-1] = 1.0

        def objective(v):
            logits = z @ v
            loss = (torch.logsumexp(logits, -1) - (logits * onehot).sum(-1)).sum(-1)
            return c * loss + 0.5 * (pen_col * v * v).sum((1, 2))

        def newton_step(grad, chol, xu, lu):
            """-H^-1 grad from the factors of H: chol [E, W, r1, r1] of M's blocks, xu = L^-1 [Q u] [E, W r1, n+1]
            and the LU of the inner (n+1) x (n+1) matrix. Woodbury: H^-1 g = M^-1 (g - [Q u] y) with y the inner
            solve of [Q u]^T M^-1 g."""
            lg = torch.linalg.solve_triangular(chol, grad.transpose(1, 2)[..., None], upper=False)
            lg = lg.reshape(E, ways * r1, 1)
            y = torch.linalg.lu_solve(*lu, xu.transpose(1, 2) @ lg)                     # [E, n+1, 1]
            lg = torch.baddbmm(lg, xu, y, alpha=-1)
            step = -torch.linalg.solve_triangular(chol.transpose(2, 3), lg.view(E, ways, r1, 1), upper=True)
            return step[..., 0].transpose(1, 2)                                          # [E, r1, W]

        v = z.new_zeros(E, r1, ways)
        f = objective(v)
        factors = None   # the last Hessian's factors, kept once the iterates are close (quadratic regime)
        first = True
        for _ in range(self.max_iter):
            p = torch.softmax(z @ v, dim=-1)                                         # [E, n, W]
            grad = c * z.transpose(1, 2) @ (p - onehot) + pen_col * v                # [E, r1, W]
            if factors is not None:
                # the previous Hessian's step: if its decrement is already below tol, the exact Newton step
                # (~sqrt(tol) long) would differ from it by ~|H_k - H_k-1| / |H| ~ sqrt(previous decrement) relative
                step = newton_step(grad, *factors)
                decrement = -(grad * step).sum((1, 2))
                if float(decrement.max()) <= self.tol:
                    v = v + step
                    break
            # Hessian (class-major) = M - c Q Q^T + u u^T, M = blockdiag_k(c Z^T diag(p_k) Z + diag(pen)):
            # Woodbury with the Cholesky factors L_k of the W blocks r1 x r1 and an (n + 1) x (n + 1) system;
            # X = L_k^-1 [p_k z, u_k] [E, W, r1, n + 1], and one product over the stacked blocks gives
            # [Q u]^T M^-1 [Q u]
            # at v = 0 (the first step) p = 1/W for every class: the W blocks and their X are equal, one is formed
            k = 1 if first else ways
            pk = p.transpose(1, 2)[:, :k, None, :]                                       # [E, k, 1, n]
            zp = z.transpose(1, 2)[:, None] * pk                                         # [E, k, r1, n]: p_ik z_i
            blocks = torch.bmm(zp.reshape(E, k * r1, n), z).view(E, k, r1, r1).mul_(c)  # [E, k, r1, r1]
            blocks.diagonal(dim1=2, dim2=3).add_(pen)
            chol = torch.linalg.cholesky(blocks)
            xu = torch.linalg.solve_triangular(chol, torch.cat([zp, null[:, :k]], 3), upper=False)
            xu = xu.reshape(E, k * r1, n + 1)
            inner = torch.bmm(xu.transpose(1, 2), xu)                                    # [E, n+1, n+1]
            if first:
                inner *= ways
                chol = chol.expand(E, ways, r1, r1)
                xu = xu[:, None].expand(E, ways, r1, n + 1).reshape(E, ways * r1, n + 1)
                first = False
            inner.diagonal(dim1=1, dim2=2).add_(inner_diag)
            factors = chol, xu, torch.linalg.lu_factor(inner)
            step = newton_step(grad, *factors)
            decrement = -(grad * step).sum((1, 2))                                   # [E] >= 0
            if float(decrement.max()) <= self.tol:  # quadratic regime: a last full step, then stop
                v = v + step
                break
            t = torch.ones(E, dtype=z.dtype)
            for _ in range(40):                                                      # Armijo backtracking
                f_new = objective(v + t[:, None, None] * step)
                ok = f_new <= f - 1e-4 * t * decrement
                if bool(ok.all()):
                    break
                t = torch.where(ok, t, t / 2)
            v = v + t[:, None, None] * step
            f = f_new
            if not (float(decrement.max()) <= 1e-4 and bool((t == 1).all())):
                factors = None
        else:
            log.warning("LogisticHead: Newton stopped after max_iter=%d iterations, largest Newton decrement "
                        "%.3g > tol=%.3g", self.max_iter, float(decrement.max()), self.tol)
        weight = v[:, :-1].transpose(1, 2)                                             # [E, W, r]
        if is_chol:      # weight rows v_k^T L^-1 X
            weight = torch.linalg.solve_triangular(back.transpose(1, 2), v[:, :-1], upper=True).transpose(1, 2)
            weight = weight @ support_x
        elif back is not None:
            weight = weight @ back.transpose(1, 2)
        return weight, v[:, -1]

    def bytes_per_episode(self, n_support, n_query, dim, ways):
        r1 = min(n_support, dim) + 1
        # gram and z; p_i z_i, the W blocks and their factors; the Woodbury columns (twice) and (n+1)^2 system
        extra = n_support * (n_support + r1) + ways * n_support * r1 + 2 * ways * r1 * r1 \
            + 2 * ways * r1 * (n_support + 1) + 2 * (n_support + 1) ** 2 + dim * ways
        return super().bytes_per_episode(n_support, n_query, dim, ways) + _F64 * extra


# ---------------------------------------------------------------------------------------------- registry
def head_options(name: str) -> dict[str, Any]:
    """Option -> default (``inspect.Parameter.empty`` when required) of the head registered as ``name``."""
    return {k: p.default for k, p in inspect.signature(HEADS.get(name)).parameters.items()}


def build_head(spec: dict[str, Any], **context: Any) -> Head:
    """A head from a task's spec ``{"name": ..., **options}``. ``context`` values (e.g. ``center``, the
    source-train mean feature) are given to the heads that accept that option, unless the spec sets it.
    An unknown option raises ValueError naming it and the known ones."""
    allowed = head_options(spec["name"])
    options = {k: v for k, v in spec.items() if k != "name"}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"head {spec['name']!r}: unknown option(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(allowed) or 'none'}")
    for key, value in context.items():
        if key in allowed:
            options.setdefault(key, value)
    return HEADS.get(spec["name"])(**options)


def head_label(spec: dict[str, Any]) -> str:
    """Leaderboard name of a head spec: the most specific registered name of its class whose fixed options
    the spec has (``{"name": "ncc", "cl2n": True}`` -> ``ncc-cl2n``), plus the options that differ from
    that name's defaults (``ridge`` / ``ridge-alpha10``)."""
    cls, fixed = _parts(HEADS.get(spec["name"]))
    options = {**fixed, **{k: v for k, v in spec.items() if k != "name"}}
    candidates = [(len(f), n) for n in HEADS.names() for c, f in [_parts(HEADS.get(n))]
                  if c is cls and all(k in options and options[k] == v for k, v in f.items())]
    name = max(candidates, key=lambda c: (c[0], c[1] == spec["name"]))[1]
    defaults, fixed = head_options(name), _parts(HEADS.get(name))[1]
    return name + "".join(f"-{k}{v}" for k, v in sorted(spec.items())
                          if k != "name" and k not in fixed and not (k in defaults and v == defaults[k]))


# ------------------------------------------------------------------------------------------- evaluation
def episode_accuracy(head: Head, features: Any, support: Any, support_labels: Any, query: Any, query_labels: Any,
                     *, chunk_size: int | None = None, return_predictions: bool = False):
    """Per-episode query accuracy of ``head`` fitted on each episode's support set.

    features: [N, m] float (any float dtype; converted to float64 once);
    support: [E, n_s] int indices into features, support_labels: [E, n_s] int in 0..W-1;
    query: [E, n_q] int indices into features, query_labels: [E, n_q] int in 0..W-1.
    chunk_size: episodes per batched solve; default: as many as fit in :data:`CHUNK_BUDGET_BYTES`
    (small chunks stay in cache; the gathered features of a chunk reuse the same buffers).
    Returns acc: [E] float64, and with ``return_predictions=True`` also predictions [E, n_q] int64.
    """
    feats = torch.as_tensor(features)
    if feats.ndim != 2 or not feats.is_floating_point():
        raise ValueError(f"features: expected a [N, m] float array, got {feats.dtype} with shape {tuple(feats.shape)}")
    if not torch.isfinite(feats).all():
        raise ValueError("features: contains NaN or infinite values")
    n_total, dim = feats.shape
    sup = _int_tensor(support, "support", None, "[E, n_s]")
    E, n_s = sup.shape
    qry = _int_tensor(query, "query", None, "[E, n_q]")
    if qry.shape[0] != E:
        raise ValueError(f"query: expected [E={E}, n_q] indices like support, got shape {tuple(qry.shape)}")
    n_q = qry.shape[1]
    sup_y = _int_tensor(support_labels, "support_labels", (E, n_s), "[E, n_s] like support")
    onehot = _one_hot(sup_y, "support_labels")
    qry_y = _int_tensor(query_labels, "query_labels", (E, n_q), "[E, n_q] like query").numpy()
    for name, idx in (("support", sup), ("query", qry)):
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_total):
            raise ValueError(f"{name}: indices must lie in 0..{n_total - 1} (rows of features), "
                             f"got {int(idx.min())}..{int(idx.max())}")
    if chunk_size is None:
        chunk_size = max(1, CHUNK_BUDGET_BYTES // head.bytes_per_episode(n_s, n_q, dim, onehot.shape[2]))
    elif not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    chunk_size = min(chunk_size, E)

    # The head's transform maps each feature row on its own, so it is applied once to the N rows rather than to
    # every episode's copies. Supports are solved in float64 from the float64 table; queries are scored in float32
    # by _certified_argmax, which returns the argmax of the float64 scores. Float32 features on a raw-feature head
    # are scored as they are (the queries are then exact); otherwise the float64 (transformed) rows are rounded to
    # float32 once, and the rounding enters the bound.
    feats64 = head.transform(feats.to(torch.float64)).contiguous()                        # [N, m]
    exact32 = head.raw_features and feats.dtype == torch.float32
    feats32 = feats.contiguous() if exact32 else feats64.to(torch.float32)
    norms32 = torch.linalg.vector_norm(feats32, dim=1).to(torch.float64)                 # [N], of the float32 rows
    sup_buf = feats64.new_empty(chunk_size * n_s, dim)   # reused: no page faults per chunk
    qry_buf = feats32.new_empty(chunk_size * n_q, dim)
    preds = np.empty((E, n_q), dtype=np.int64)
    correct = 0
    with tqdm(total=E, desc=f"{type(head).__name__} episodes", unit="ep", disable=None, leave=False) as bar:
        for lo in range(0, E, chunk_size):
            hi = min(lo + chunk_size, E)
            k = hi - lo
            q_rows = qry[lo:hi]
            weight, bias = head.solve_rows(feats64, sup[lo:hi], onehot[lo:hi], out=sup_buf)
            qx = torch.index_select(feats32, 0, q_rows.reshape(-1), out=qry_buf[: k * n_q]).view(k, n_q, dim)
            exact_query = None if exact32 else (lambda e, j, q_rows=q_rows: feats64[q_rows[e, j]])
            pred = _certified_argmax(weight, bias, qx, q_norm=norms32[q_rows], exact_query=exact_query).numpy()
            preds[lo:hi] = pred
            correct += int((pred == qry_y[lo:hi]).sum())
            bar.update(k)
            bar.set_postfix(acc=f"{correct / (hi * n_q):.4f}", refresh=False)
    acc = (preds == qry_y).mean(axis=1, dtype=np.float64)
    return (acc, preds) if return_predictions else acc
