"""Functional collapse metrics (DESIGN.md §1–§2): arrays in, Python floats out.

Inputs are torch tensors (any device, any float dtype) or numpy arrays; ``features: [N, m]``,
``labels: [N]`` any integer values; classes are taken in sorted label order and classifier rows
(``weight: [K, m]``, ``bias: [K]``) follow that order. Work is float64, in row chunks.

Each function runs the same two passes as the streaming accumulators of
:mod:`ncbench.metrics.streaming` over the whole input: pass 1 (:class:`ClassStatistics`) gives the
class means and per-class variances, pass 2 (:class:`ReferencedStatistics`) measures samples against
the final means (NC1 / test-collapse projections, nearest-mean decisions, NC4).

Each metric is registered where it is defined (:func:`ncbench.metrics.info.metric`) with the columns it
produces in the pipeline; a column's ``compute`` reads the shared passes of its scope's evidence
(:mod:`ncbench.metrics.evidence`), so a unit's metrics cost one pass 1 and one pass 2 however many are listed.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import numpy as np
import torch

from ncbench.metrics.info import Column, metric
from ncbench.metrics.kernels import (
    as_features,
    between_eigen,
    deviations,
    nc1_value,
    as_labels,
    check_weight,
    codes_in,
    compute_device,
    encode_labels,
    classifier_argmax,
    mean_over_pairs,
    nc2_values,
    nc3_value,
    rank_limited,
    row_chunks,
)
from ncbench.metrics.streaming import ClassStatistics, ReferencedStatistics


def _class_statistics(features, labels, names: tuple[str, str] = ("features", "labels")) -> ClassStatistics:
    """Pass 1 over ``features: [N, m]`` with ``labels: [N]`` (validated under the caller's argument names)."""
    f = as_features(features, names[0], check_finite=False)  # the pass itself finds NaN / inf
    y = as_labels(labels, f.shape[0], compute_device(f), names[1])
    classes, codes = encode_labels(y, names[1])
    stats = ClassStatistics(classes, within_scatter=False)
    stats._check_width(f, compute_device(f))
    stats._update_codes(f, codes, names[0])
    return stats


def _referenced(stats: ClassStatistics, features, labels=None, names=("features", "labels"),
                **options) -> ReferencedStatistics:
    """Pass 2 of ``features: [N, m]`` (optional ``labels: [N]``) against ``stats``' means, updated."""
    f = as_features(features, names[0])
    if f.shape[1] != stats.means.shape[1]:
        raise ValueError(f"{names[0]} have {f.shape[1]} columns, expected {stats.means.shape[1]} "
                         "like the train features")
    y = None if labels is None else as_labels(labels, f.shape[0], stats.classes.device, names[1])
    if y is not None:
        codes_in(stats.classes, y, names[1])  # unknown labels: an error that names the argument
    passed = stats.referenced(**options)
    passed.update(f, y)
    return passed


@metric("classifier_accuracy", higher_is_better=True, columns=[
    # the same decisions as classifier_accuracy(), counted in the pass that NC4 makes anyway
    Column("source_train_acc", "source", lambda e: e.train_pass["classifier_accuracy"],
           needs=("classifier", "features"), curve="train_acc", plot=True),
    Column("source_test_acc", "source", lambda e: e.test_pass["classifier_accuracy"],
           needs=("classifier", "features", "test"), curve="test_acc", headline=True, plot=True),
])
def classifier_accuracy(features, labels, weight, bias=None) -> float:
    """Accuracy of a linear classifier: fraction of samples with argmax_c (⟨a_c, f⟩ + b_c) = their label.

    features: [N, m] float; labels: [N] int in 0..K−1, the classifier row of each sample's class;
    weight: [K, m]; bias: [K] or None. Scores in float64.
    """
    f = as_features(features)
    device = compute_device(f)
    y = as_labels(labels, f.shape[0], device)
    k = as_features(weight, "weight").shape[0]
    a, b = check_weight(weight, bias, k, f.shape[1], device)
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise ValueError(f"labels must be classifier rows in 0..{k - 1}, got values in {int(y.min())}..{int(y.max())}")
    hits = sum(int((classifier_argmax(chunk, a, b) == y[rows]).sum()) for rows, chunk in row_chunks(f, k, device))
    return hits / f.shape[0]


@metric("cdnv", higher_is_better=False, columns=[
    Column("cdnv_train", "source", lambda e: mean_over_pairs(e.train_stats.cdnv_matrix()), curve="cdnv_train",
           headline=True, plot=True),
    Column("cdnv_test", "source", lambda e: mean_over_pairs(e.test_stats.cdnv_matrix()), needs=("test",),
           curve="cdnv_test", plot=True),
    Column("target_cdnv", "target", lambda e: cdnv(e.features, e.labels), key="cdnv", headline=True),
])
def cdnv(features, labels) -> float:
    """Class-distance normalised variance: mean over unordered class pairs of (Var_i + Var_j) / (2‖μ_i − μ_j‖²).

    features: [N, m] float; labels: [N] int. Var_k is biased (divides by N_k).
    """
    return mean_over_pairs(cdnv_matrix(features, labels))


def cdnv_matrix(features, labels) -> torch.Tensor:
    """All-pairs CDNV: features [N, m], labels [N] -> float64 tensor [K, K] (zero diagonal, sorted classes)."""
    return _class_statistics(features, labels).cdnv_matrix()


@metric("nc1", higher_is_better=False, columns=[
    Column("nc1", "source", lambda e: e.train_pass["strong_test_collapse"], curve="nc1", headline=True, plot=True),
])
def nc1(features, labels) -> float:
    """NC1 within-class variability collapse: (1/K) tr(Σ_W Σ_B^†), Σ_B inverted on its top min(K−1, m) eigenpairs.

    features: [N, m] float; labels: [N] int.
    """
    stats = _class_statistics(features, labels)
    return _referenced(stats, features, labels, collapse=True, nearest=False).compute()["strong_test_collapse"]


@metric("nc1_quotient", higher_is_better=False, columns=[
    Column("nc1_quotient", "source", lambda e: e.train_stats.nc1_quotient(), curve="nc1_quotient"),
])
def nc1_quotient(features, labels) -> float:
    """NC1 quotient tr(Σ_W) / tr(Σ_B) (Tirer et al. 2023): within- over between-class variation, no inverse.

    features: [N, m] float; labels: [N] int. Unlike ``nc1`` it does not grow with K at fixed m when the
    class geometry is unchanged, so it is comparable across numbers of classes.
    """
    return _class_statistics(features, labels).nc1_quotient()


SUBSET_SIZE, SUBSET_COUNT = 5, 50  # the leaderboard's ``nc1_subset5``: NC1 of 5 classes, averaged over 50 draws


def class_subsets(classes, size: int = SUBSET_SIZE, count: int = SUBSET_COUNT, seed: int = 0) -> list[np.ndarray]:
    """``count`` seeded random subsets of ``size`` of the given ``classes: [K]`` (sorted label values),
    each drawn uniformly without replacement, independently of the others (NumPy ``default_rng([seed, K,
    size])``). With K ≤ size every subset is all K classes."""
    classes = np.unique(np.asarray(classes))
    if not (isinstance(size, int) and size >= 2 and isinstance(count, int) and count >= 1):
        raise ValueError(f"subsets need size >= 2 and count >= 1 (integers), got size={size!r}, count={count!r}")
    if len(classes) <= size:
        return [classes] * count
    rng = np.random.default_rng([seed, len(classes), size])
    return [np.sort(rng.choice(classes, size, replace=False)) for _ in range(count)]


@metric("nc1_subsets", higher_is_better=False, columns=[
    Column("nc1_subset5", "source", lambda e: _nc1_subsets(e.train_features, e.train_labels, e.train_stats),
           needs=("features",), curve="nc1_subset5"),
])
def nc1_subsets(features, labels, size: int = SUBSET_SIZE, count: int = SUBSET_COUNT, seed: int = 0) -> float:
    """NC1 averaged over seeded random subsets of ``size`` classes (default 5 classes, 50 subsets).

    features: [N, m] float; labels: [N] int. Each subset's NC1 (eq. 4) uses only that subset's samples,
    so the number of classes behind every term is ``size`` whatever K is: comparable across K. The
    subsets are :func:`class_subsets` of the sorted labels.
    """
    return _nc1_subsets(features, labels, None, size, count, seed)


def _nc1_subsets(features, labels, stats: ClassStatistics | None, size: int = SUBSET_SIZE,
                 count: int = SUBSET_COUNT, seed: int = 0) -> float:
    """:func:`nc1_subsets`, reusing ``stats`` (pass 1 over the same ``features: [N, m]``, ``labels: [N]``)
    when given. A subset's class means are the full pass's means of its classes (every sample of a class
    is in the subset), so each subset costs an eigendecomposition of its ``[s, s]`` Gram matrix and the
    projection of its own samples' deviations on its r ≤ s − 1 between-class directions."""
    f = as_features(features, check_finite=stats is None)
    y = as_labels(labels, f.shape[0], compute_device(f))
    if stats is None:
        stats = _class_statistics(f, y)
    classes, means = stats.classes, stats.means
    codes = codes_in(classes, y.to(classes.device), "labels")
    order = torch.argsort(codes, stable=True)
    ends = torch.cumsum(stats.counts.to(torch.int64), 0).tolist()
    values = []
    for subset in class_subsets(classes.cpu().numpy(), size, count, seed):
        ks = torch.searchsorted(classes, torch.as_tensor(subset, device=classes.device))
        rows = torch.cat([order[(ends[k] - int(stats.counts[k])):ends[k]] for k in ks.tolist()])
        local = torch.searchsorted(ks, codes[rows])
        sub_means = means[ks]
        vals, vecs = between_eigen(sub_means)
        along = torch.zeros(vecs.shape[1], dtype=vecs.dtype, device=vecs.device)
        for part, chunk in row_chunks(f[rows.to(f.device)], f.shape[1], vecs.device):
            along += (deviations(chunk, local[part], sub_means) @ vecs).square_().sum(0)
        values.append(nc1_value(along / rows.numel(), vals, len(subset)))
    return float(np.mean(values))


@metric("nc_rank_limited", higher_is_better=None, columns=[
    Column("nc_rank_limited", "source", lambda e: rank_limited(*e.train_stats.means.shape), kind=bool,
           curve="nc_rank_limited"),
])
def nc_rank_limited(features, labels) -> bool:
    """Whether K − 1 > m: the K centred class means cannot form a simplex ETF, so NC2 / NC3 cannot reach 0.

    features: [N, m] float; labels: [N] int.
    """
    return rank_limited(*_class_statistics(features, labels).means.shape)


@metric("nc2", higher_is_better=False, columns=[
    Column("nc2", "source", lambda e: e.nc2["nc2"], curve="nc2", plot=True),
])
def nc2(features, labels) -> float:
    """NC2 convergence of centred class means to a simplex ETF: ‖MMᵀ/‖MMᵀ‖_F − (I − 11ᵀ/K)/√(K−1)‖_F.

    features: [N, m] float; labels: [N] int; M rows are the unit-normalised centred class means.
    """
    return nc2_values(_class_statistics(features, labels).means)["nc2"]


@metric("nc2_equinorm", higher_is_better=False, columns=[
    Column("nc2_equinorm", "source", lambda e: e.nc2["nc2_equinorm"], curve="nc2_equinorm"),
])
def nc2_equinorm(features, labels) -> float:
    """NC2 equinorm: std / mean over classes of ‖μ_k − μ_G‖ (std with K − 1 as in Papyan et al.'s code).

    features: [N, m] float; labels: [N] int.
    """
    return nc2_values(_class_statistics(features, labels).means)["nc2_equinorm"]


@metric("nc2_equiangularity", higher_is_better=False, columns=[
    Column("nc2_equiangularity", "source", lambda e: e.nc2["nc2_equiangularity"], curve="nc2_equiangularity"),
])
def nc2_equiangularity(features, labels) -> float:
    """NC2 equiangularity: mean over class pairs of |cos(μ_i − μ_G, μ_j − μ_G) + 1/(K − 1)|.

    features: [N, m] float; labels: [N] int.
    """
    return nc2_values(_class_statistics(features, labels).means)["nc2_equiangularity"]


@metric("nc3", higher_is_better=False, columns=[
    Column("nc3", "source", lambda e: nc3_value(e.train_ref.weight, e.train_stats.means), needs=("classifier",),
           curve="nc3", plot=True),
])
def nc3(features, labels, weight) -> float:
    """NC3 self-duality of classifier and class means: ‖AMᵀ/‖AMᵀ‖_F − (I − 11ᵀ/K)/√(K−1)‖_F.

    features: [N, m] float; labels: [N] int; weight: [K, m] float, rows in sorted class order.
    """
    return _class_statistics(features, labels).compute(weight)["nc3"]


@metric("nc4", higher_is_better=False, columns=[
    Column("nc4", "source", lambda e: e.train_pass["nc4"], needs=("classifier",), curve="nc4", plot=True),
])
def nc4(features, labels, weight, bias=None) -> float:
    """NC4 disagreement of the classifier with the nearest-class-mean rule: fraction of samples where they differ.

    features: [N, m] float; labels: [N] int (for the means); weight: [K, m]; bias: [K] or None.
    """
    stats = _class_statistics(features, labels)
    return _referenced(stats, features, weight=weight, bias=bias, collapse=False, nearest=True).compute()["nc4"]


@metric("ncc_accuracy", higher_is_better=True, columns=[
    Column("ncc_train_acc", "source", lambda e: e.train_pass["ncc_accuracy"], curve="ncc_train_acc"),
    Column("ncc_test_acc", "source", lambda e: e.test_pass["ncc_accuracy"], needs=("test",), curve="ncc_test_acc"),
    Column("target_ncc_acc", "target", lambda e: ncc_accuracy(e.features[e.train], e.labels[e.train],
                                                              e.features[~e.train], e.labels[~e.train]),
           key="ncc_acc", headline=True),
])
def ncc_accuracy(train_features, train_labels, test_features, test_labels) -> float:
    """Nearest-class-mean accuracy of test samples, with class means from the train (support) samples.

    train_features: [N, m]; train_labels: [N]; test_features: [T, m]; test_labels: [T] among train_labels.
    """
    stats = _class_statistics(train_features, train_labels, ("train_features", "train_labels"))
    return _referenced(stats, test_features, test_labels, ("test_features", "test_labels"),
                       collapse=False, nearest=True).compute()["ncc_accuracy"]


@metric("strong_test_collapse", higher_is_better=False, columns=[
    Column("strong_test_collapse", "source", lambda e: e.test_pass["strong_test_collapse"], needs=("test",),
           curve="strong_test_collapse"),
])
def strong_test_collapse(train_features, train_labels, test_features, test_labels) -> float:
    """Strong test collapse: NC1 of test samples grouped by their true labels around the train class means.

    train_features: [N, m]; train_labels: [N]; test_features: [T, m]; test_labels: [T] among train_labels.
    Σ_B comes from the train means.
    """
    stats = _class_statistics(train_features, train_labels, ("train_features", "train_labels"))
    return _referenced(stats, test_features, test_labels, ("test_features", "test_labels"),
                       collapse=True, nearest=False).compute()["strong_test_collapse"]


@metric("weak_test_collapse", higher_is_better=False, columns=[
    Column("weak_test_collapse", "source", lambda e: e.test_pass["weak_test_collapse"], needs=("test",),
           curve="weak_test_collapse"),
])
def weak_test_collapse(train_features, train_labels, test_features) -> float:
    """Weak test collapse: NC1 of test samples grouped by their nearest train class mean, around those means.

    train_features: [N, m]; train_labels: [N]; test_features: [T, m]. Σ_B comes from the train means.
    """
    stats = _class_statistics(train_features, train_labels, ("train_features", "train_labels"))
    return _referenced(stats, test_features, names=("test_features", "test_labels"),
                       collapse=True, nearest=True).compute()["weak_test_collapse"]


def _layer_passes(layer_features: Sequence, labels) -> list[tuple[ClassStatistics, dict[str, float]]]:
    """Pass 1 and the NCC pass of each layer's own train means."""
    if isinstance(layer_features, (torch.Tensor, np.ndarray)) or len(layer_features) == 0:
        raise ValueError("layer_features must be a non-empty list of [N, m_l] arrays, one per layer")
    out = []
    for i, feats in enumerate(layer_features):
        names = (f"layer_features[{i}]", "labels")
        stats = _class_statistics(feats, labels, names)
        out.append((stats, _referenced(stats, feats, labels, names, collapse=False, nearest=True).compute()))
    return out


def check_eps(eps: float) -> Fraction:
    """``eps`` as the exact fraction it is written as (0.01 -> 1/100, not the binary float just above it)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be an error rate in [0, 1], got {eps!r}")
    return Fraction(repr(float(eps)))


def reaches_eps(errors: int, n: int, eps: float) -> bool:
    """Whether ``errors`` of ``n`` is an error rate ≤ ``eps``, decided on exact integers: errors ≤ ⌊ε·n⌋
    with ε read as the decimal it is written as (2 errors of 200 reach ε = 0.01; 3 do not)."""
    e = check_eps(eps)
    return errors * e.denominator <= e.numerator * n


def depth_of(errors: Sequence[int], n: int, eps: float) -> int:
    """1-based index of the first layer whose ``errors`` (NCC train errors of ``n`` samples) reach ``eps``
    (:func:`reaches_eps`), else the number of layers L."""
    return next((i + 1 for i, k in enumerate(errors) if reaches_eps(int(k), n, eps)), len(errors))


@metric("effective_depth", higher_is_better=None, columns=[
    Column("effective_depth", "layer", lambda c: c.depths["flat"], kind=int, curve="effective_depth"),
    Column("effective_depth_reached", "layer", lambda c: c.reached["flat"], kind=bool),
    Column(None, "layer", lambda c: c.depths.get("pooled"), kind=int, curve="effective_depth_pooled"),
])
def effective_depth(layer_features: Sequence, labels, eps: float = 0.01) -> int:
    """ε-effective depth: the first layer (1-based) whose NCC train error, with its own class means, is ≤ eps.

    layer_features: list of L arrays [N, m_l] (layer 1 first); labels: [N] int. Returns L if none is.
    "error ≤ eps" is decided on exact counts (:func:`reaches_eps`).
    """
    return layer_curves(layer_features, labels, eps)["effective_depth"]


def layer_curves(layer_features: Sequence, labels, eps: float = 0.01) -> dict:
    """Per-layer collapse curves: ``ncc_error`` (list[float], NCC train error with the layer's own means),
    ``ncc_errors`` (list[int], the same as counts of ``n`` samples), ``cdnv`` (list[float]) and
    ``effective_depth`` (int, 1-based, as :func:`effective_depth`).

    layer_features: list of L arrays [N, m_l] (layer 1 first); labels: [N] int.
    """
    check_eps(eps)
    passes = _layer_passes(layer_features, labels)
    counts = [int(passed["ncc_errors"]) for _, passed in passes]
    n = int(passes[0][1]["n"])
    return {
        "ncc_error": [k / n for k in counts],
        "ncc_errors": counts,
        "n": n,
        "cdnv": [mean_over_pairs(stats.cdnv_matrix()) for stats, _ in passes],
        "effective_depth": depth_of(counts, n, eps),
    }
