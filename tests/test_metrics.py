"""ncbench.metrics against brute-force numpy float64 references (loops over samples and pairs,
written here independently of the library) and against closed forms."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import ncbench.metrics as M
from ncbench.metrics import kernels, streaming
from ncbench.registry import METRICS

RTOL = 1e-9


# ------------------------------------------------------------------------ brute-force references
def bf_means(F, y):
    classes = sorted(set(y.tolist()))
    index = {c: k for k, c in enumerate(classes)}
    sums = np.zeros((len(classes), F.shape[1]))
    counts = np.zeros(len(classes))
    for f, label in zip(F, y):
        sums[index[label]] += f
        counts[index[label]] += 1
    return classes, index, sums / counts[:, None], counts


def bf_cdnv_matrix(F, y):
    classes, index, mu, counts = bf_means(F, y)
    var = np.zeros(len(classes))
    for f, label in zip(F, y):
        var[index[label]] += np.sum((f - mu[index[label]]) ** 2)
    var /= counts
    K = len(classes)
    V = np.zeros((K, K))
    for i, j in itertools.combinations(range(K), 2):
        V[i, j] = V[j, i] = (var[i] + var[j]) / (2 * np.sum((mu[i] - mu[j]) ** 2))
    return V


def bf_cdnv(F, y):
    V = bf_cdnv_matrix(F, y)
    pairs = list(itertools.combinations(range(len(V)), 2))
    return sum(V[i, j] for i, j in pairs) / len(pairs)


def bf_sigma_b_pinv(mu):
    K, m = mu.shape
    g = mu.mean(0)
    Sb = sum(np.outer(u - g, u - g) for u in mu) / K
    vals, vecs = np.linalg.eigh(Sb)
    r = min(K - 1, m)
    vals, vecs = vals[::-1][:r], vecs[:, ::-1][:, :r]
    return (vecs / vals) @ vecs.T


def bf_within(F, assigned_means):
    return sum(np.outer(f - u, f - u) for f, u in zip(F, assigned_means)) / len(F)


def bf_nc1(F, y):
    _, index, mu, _ = bf_means(F, y)
    Sw = bf_within(F, [mu[index[label]] for label in y])
    return np.trace(Sw @ bf_sigma_b_pinv(mu)) / len(mu)


def bf_nc1_quotient(F, y):
    _, index, mu, _ = bf_means(F, y)
    within = sum(float(np.sum((f - mu[index[label]]) ** 2)) for f, label in zip(F, y)) / len(F)
    between = sum(float(np.sum((u - mu.mean(0)) ** 2)) for u in mu) / len(mu)
    return within / between


def bf_nc1_subsets(F, y, subsets):
    return np.mean([bf_nc1(F[np.isin(y, s)], y[np.isin(y, s)]) for s in subsets])


def bf_unit_centred(mu):
    c = mu - mu.mean(0)
    return np.array([row / np.linalg.norm(row) for row in c])


def bf_etf_distance(G):
    K = len(G)
    target = (np.eye(K) - np.ones((K, K)) / K) / np.sqrt(K - 1)
    return np.linalg.norm(G / np.linalg.norm(G) - target)


def bf_nc2(F, y):
    Mn = bf_unit_centred(bf_means(F, y)[2])
    return bf_etf_distance(Mn @ Mn.T)


def bf_equinorm(F, y):
    mu = bf_means(F, y)[2]
    norms = [np.linalg.norm(u - mu.mean(0)) for u in mu]
    return np.std(norms, ddof=1) / np.mean(norms)


def bf_equiangularity(F, y):
    Mn = bf_unit_centred(bf_means(F, y)[2])
    K = len(Mn)
    terms = [abs(Mn[i] @ Mn[j] + 1 / (K - 1)) for i, j in itertools.combinations(range(K), 2)]
    return np.mean(terms)


def bf_nc3(F, y, W):
    Mn = bf_unit_centred(bf_means(F, y)[2])
    return bf_etf_distance(W @ Mn.T)


def bf_nearest(f, mu):
    return min(range(len(mu)), key=lambda k: np.linalg.norm(f - mu[k]))


def bf_nc4(F, y, W, b=None):
    mu = bf_means(F, y)[2]
    b = np.zeros(len(W)) if b is None else b
    return np.mean([int(np.argmax(W @ f + b)) != bf_nearest(f, mu) for f in F])


def bf_classifier_accuracy(F, y, W, b=None):
    """Rows of W are the classes of y in sorted order."""
    classes = np.sort(np.unique(y))
    b = np.zeros(len(W)) if b is None else b
    return np.mean([classes[int(np.argmax(W @ f + b))] == label for f, label in zip(F, y)])


def bf_ncc_accuracy(F, y, T, t):
    classes, _, mu, _ = bf_means(F, y)
    return np.mean([classes[bf_nearest(f, mu)] == label for f, label in zip(T, t)])


def bf_strong(F, y, T, t):
    _, index, mu, _ = bf_means(F, y)
    Sw = bf_within(T, [mu[index[label]] for label in t])
    return np.trace(Sw @ bf_sigma_b_pinv(mu)) / len(mu)


def bf_weak(F, y, T):
    mu = bf_means(F, y)[2]
    Sw = bf_within(T, [mu[bf_nearest(f, mu)] for f in T])
    return np.trace(Sw @ bf_sigma_b_pinv(mu)) / len(mu)


# ---------------------------------------------------------------------------------------- data
def make_data(K, m, counts, seed, spread=2.0, label_values=None):
    """Gaussian classes with random means; labels are arbitrary integers (not 0..K-1), shuffled."""
    rng = np.random.default_rng(seed)
    values = np.array(label_values if label_values is not None else rng.choice(1000, K, replace=False) - 500)
    mu = spread * rng.standard_normal((K, m))
    y = np.repeat(values, counts)
    F = mu[np.repeat(np.arange(K), counts)] + rng.standard_normal((len(y), m))
    order = rng.permutation(len(y))
    return F[order], y[order]


CASES = {
    "K2": (2, 3, [7, 9]),
    "m<K": (6, 3, [5, 8, 6, 9, 7, 5]),
    "m>>K": (3, 80, [10, 12, 9]),
    "unbalanced": (5, 6, [3, 40, 8, 2, 17]),
    "square": (4, 4, [12, 12, 12, 12]),
}


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request):
    K, m, counts = CASES[request.param]
    seed = list(CASES).index(request.param)
    F, y = make_data(K, m, counts, seed)
    T, t = make_data(K, m, [4] * K, seed + 100)
    t = np.sort(np.unique(y))[np.searchsorted(np.sort(np.unique(t)), t)]  # test labels use the train label values
    W = np.random.default_rng(seed + 7).standard_normal((K, m))
    b = np.random.default_rng(seed + 8).standard_normal(K)
    return F, y, T, t, W, b


def close(a, b, rtol=RTOL):
    return a == pytest.approx(b, rel=rtol, abs=1e-12)


# ------------------------------------------------------------------------------ brute-force tests
def test_functional_matches_brute_force(case):
    F, y, T, t, W, b = case
    assert close(M.cdnv(F, y), bf_cdnv(F, y))
    np.testing.assert_allclose(M.cdnv_matrix(F, y).numpy(), bf_cdnv_matrix(F, y), rtol=RTOL)
    assert close(M.nc1(F, y), bf_nc1(F, y))
    assert close(M.nc1_quotient(F, y), bf_nc1_quotient(F, y))
    assert close(M.nc1_subsets(F, y), bf_nc1_subsets(F, y, M.class_subsets(np.unique(y))))
    assert close(M.nc1_subsets(F, y, size=2, count=7, seed=3), bf_nc1_subsets(F, y, M.class_subsets(np.unique(y), 2, 7, 3)))
    assert close(M.nc2(F, y), bf_nc2(F, y))
    assert close(M.nc2_equinorm(F, y), bf_equinorm(F, y))
    assert close(M.nc2_equiangularity(F, y), bf_equiangularity(F, y))
    assert close(M.nc3(F, y, W), bf_nc3(F, y, W))
    assert M.nc4(F, y, W, b) == bf_nc4(F, y, W, b)
    assert M.nc4(F, y, W) == bf_nc4(F, y, W)
    assert M.ncc_accuracy(F, y, T, t) == bf_ncc_accuracy(F, y, T, t)
    assert close(M.strong_test_collapse(F, y, T, t), bf_strong(F, y, T, t))
    assert close(M.weak_test_collapse(F, y, T), bf_weak(F, y, T))


def test_collapse_report_matches_brute_force(case):
    F, y, T, t, W, b = case
    got = M.collapse_report(torch.from_numpy(F), torch.from_numpy(y), T, t, weight=W, bias=b)
    want = {
        "cdnv_train": bf_cdnv(F, y), "nc1": bf_nc1(F, y), "nc2": bf_nc2(F, y),
        "nc1_quotient": bf_nc1_quotient(F, y), "nc1_subset5": bf_nc1_subsets(F, y, M.class_subsets(np.unique(y))),
        "nc2_equinorm": bf_equinorm(F, y), "nc2_equiangularity": bf_equiangularity(F, y),
        "ncc_train_acc": bf_ncc_accuracy(F, y, F, y), "nc3": bf_nc3(F, y, W), "nc4": bf_nc4(F, y, W, b),
        "cdnv_test": bf_cdnv(T, t), "ncc_test_acc": bf_ncc_accuracy(F, y, T, t),
        "strong_test_collapse": bf_strong(F, y, T, t), "weak_test_collapse": bf_weak(F, y, T),
        "source_train_acc": bf_classifier_accuracy(F, y, W, b), "source_test_acc": bf_classifier_accuracy(T, t, W, b),
    }
    assert got.pop("nc_rank_limited") is (len(W) - 1 > W.shape[1])  # K − 1 > m: NC2 / NC3 cannot reach 0
    assert set(got) == set(want)
    assert all(type(v) is float for v in got.values())
    for key in want:
        assert close(got[key], want[key]), key
    assert set(M.collapse_report(F, y)) == {"cdnv_train", "nc1", "nc1_quotient", "nc1_subset5", "nc_rank_limited",
                                            "nc2", "nc2_equinorm", "nc2_equiangularity", "ncc_train_acc"}


def test_row_chunks_give_the_same_numbers(monkeypatch):
    F, y = make_data(4, 6, [30, 25, 20, 40], seed=3)
    W = np.random.default_rng(0).standard_normal((4, 6))
    whole = M.collapse_report(F, y, F[:50], y[:50], weight=W)
    monkeypatch.setattr(kernels, "CHUNK_ELEMENTS", 40)  # chunks of a handful of rows
    monkeypatch.setattr(kernels, "SHIFT_CHUNK_ELEMENTS", 40)  # and in pass 1
    chunked = M.collapse_report(F, y, F[:50], y[:50], weight=W)
    for key in whole:
        assert close(chunked[key], whole[key]), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_torch_input(dtype):
    F, y = make_data(3, 5, [10, 11, 12], seed=4)
    low = torch.from_numpy(F).to(dtype)
    exact = low.double().numpy()  # the values the library sees, in float64
    assert close(M.cdnv(low, torch.from_numpy(y)), bf_cdnv(exact, y))
    assert close(M.nc1(low, y), bf_nc1(exact, y))


def test_numpy_float32_input():
    F, y = make_data(3, 5, [10, 11, 12], seed=5)
    f32 = F.astype(np.float32)
    assert close(M.nc2(f32, y.astype(np.int32)), bf_nc2(f32.astype(np.float64), y))


# --------------------------------------------------------------------------------- closed forms
def test_isotropic_gaussians_variance_is_m_sigma2():
    rng = np.random.default_rng(0)
    m, sigma, n = 50, 0.5, 2000
    mu = np.zeros((2, m))
    mu[1, 0] = 10.0  # ‖μ_0 − μ_1‖² = 100
    y = np.repeat([0, 1], n)
    F = mu[y] + sigma * rng.standard_normal((2 * n, m))
    stats = M.ClassStatistics()
    stats.update(F, y)
    np.testing.assert_allclose(stats.variances().numpy(), m * sigma**2, rtol=0.03)
    assert M.cdnv(F, y) == pytest.approx(2 * m * sigma**2 / (2 * 100.0), rel=0.03)


def simplex_etf(K, m, seed):
    """K unit vectors in R^m (m ≥ K) with pairwise cosine −1/(K−1), randomly rotated, scaled by 3."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((m, K)))
    return 3.0 * np.sqrt(K / (K - 1)) * (np.eye(K) - 1.0 / K) @ q.T


def test_simplex_etf_means_give_nc2_zero_and_self_dual_classifier_nc3_zero():
    K, m = 5, 8
    etf = simplex_etf(K, m, seed=1) + 7.0  # shifted: NC2 uses means centred on μ_G
    noise = np.random.default_rng(2).standard_normal((K, m))
    F = np.concatenate([etf + noise, etf - noise])  # symmetric noise keeps the class means exact
    y = np.tile(np.arange(K), 2)
    assert M.nc2(F, y) < 1e-12
    assert M.nc2_equinorm(F, y) < 1e-12
    assert M.nc2_equiangularity(F, y) < 1e-12
    assert M.nc3(F, y, 0.4 * (etf - etf.mean(0))) < 1e-12
    assert M.nc2(F + noise[:1], y) < 1e-12  # a common shift changes nothing


def test_collapsed_features_give_nc1_and_cdnv_zero():
    F, y = make_data(4, 6, [5, 6, 7, 8], seed=6)
    _, index, mu, _ = bf_means(F, y)
    collapsed = np.array([mu[index[label]] for label in y])
    assert M.nc1(collapsed, y) < 1e-20
    assert M.cdnv(collapsed, y) < 1e-20
    assert M.weak_test_collapse(collapsed, y, collapsed) < 1e-20


def test_nearest_mean_classifier_has_nc4_zero():
    F, y = make_data(6, 4, [9, 8, 7, 6, 5, 4], seed=7, spread=0.7)  # overlapping classes
    mu = bf_means(F, y)[2]
    assert M.nc4(F, y, 2.0 * mu, -np.sum(mu**2, axis=1)) == 0.0
    assert M.nc4(F, y, 2.0 * mu) > 0.0  # without the bias it is not the NCC rule


def test_float32_tight_classes_keep_their_variance():
    rng = np.random.default_rng(8)
    K, m, n = 3, 4, 50
    y = np.repeat(np.arange(K), n)
    F = (1e4 + 0.05 * np.arange(K)[y, None] + 1e-3 * rng.standard_normal((K * n, m))).astype(np.float32)
    exact = F.astype(np.float64)
    true_var = np.mean(np.sum((exact[y == 0] - exact[y == 0].mean(0)) ** 2, axis=1))
    one_pass = np.mean(np.sum(F[y == 0] ** 2, axis=1)) - np.sum(np.mean(F[y == 0], axis=0) ** 2)  # float32
    assert abs(one_pass - true_var) > true_var  # the one-pass float32 formula is useless here (0 or garbage)
    want = bf_cdnv(exact, y)
    assert want > 0
    assert close(M.cdnv(F, y), want)
    assert close(M.nc1(torch.from_numpy(F), y), bf_nc1(exact, y))
    stats = M.ClassStatistics()
    for part in np.array_split(np.random.default_rng(0).permutation(len(y)), 4):
        stats.update(F[part], y[part])
    assert close(stats.compute()["cdnv"], want)
    assert close(stats.compute()["nc1"], bf_nc1(exact, y))  # Σ_W from the merged scatter


@pytest.mark.parametrize("cancellation", [streaming.CANCELLATION, 2.0], ids=["default", "always-recompute"])
def test_a_class_far_from_its_reference_keeps_the_variance_exact(monkeypatch, cancellation):
    """A batch is shifted per class by the running class mean (or, for a new class, its first sample);
    a class that drifts by 1e6 standard deviations between batches, or whose first sample is an outlier,
    keeps its exact variance. With ``CANCELLATION`` = 2 every class takes the two-pass recomputation."""
    monkeypatch.setattr(streaming, "CANCELLATION", cancellation)
    rng = np.random.default_rng(12)
    K, m, n = 3, 5, 40
    y = np.tile(np.arange(K), n)
    F = 100.0 * y[:, None] + 1e-3 * rng.standard_normal((K * n, m))
    F[len(y) // 2:][y[len(y) // 2:] == 0] += 1e3  # class 0 jumps half-way
    F[1] -= 50.0  # class 1's first sample, its reference, is an outlier
    for data in (F, F.astype(np.float32)):
        exact = data.astype(np.float64)
        want = [np.mean(np.sum((exact[y == k] - exact[y == k].mean(0)) ** 2, axis=1)) for k in range(K)]
        stats = M.ClassStatistics(within_scatter=False)
        for part in np.array_split(np.arange(len(y)), 2):
            stats.update(data[part], y[part])
        np.testing.assert_allclose(stats.variances().numpy(), want, rtol=RTOL)
        assert close(stats.compute()["cdnv"], bf_cdnv(exact, y))
        assert close(M.cdnv(data, y), bf_cdnv(exact, y))


def test_nan_features_are_named():
    F, y = make_data(3, 4, [5, 5, 5], seed=13)
    F[4, 2] = np.nan
    with pytest.raises(ValueError, match="train_features contains NaN or inf"):
        M.ncc_accuracy(F, y, F, y)
    with pytest.raises(ValueError, match="features contains NaN or inf"):
        M.ClassStatistics(within_scatter=False).update(F, y)


# ------------------------------------------------------------------------------------ streaming
def batches(n, seed, sizes=(1, 7, 3, 20)):
    """Split 0..n-1 (shuffled) into batches of cycling sizes."""
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum(list(itertools.islice(itertools.cycle(sizes), n)))
    return [part for part in np.split(order, cuts[cuts < n]) if len(part)]


def test_streaming_matches_functional(case):
    F, y, T, t, W, b = case
    stats = M.ClassStatistics()
    for part in batches(len(y), seed=0):
        stats.update(torch.from_numpy(F[part]), y[part])  # classes appear in later batches
    got = stats.compute(W)
    for key, fn in [("cdnv", M.cdnv), ("nc1", M.nc1), ("nc2", M.nc2), ("nc2_equinorm", M.nc2_equinorm),
                    ("nc2_equiangularity", M.nc2_equiangularity)]:
        assert close(got[key], fn(F, y)), key
    assert close(got["nc3"], M.nc3(F, y, W))
    np.testing.assert_array_equal(stats.classes.numpy(), np.unique(y))

    train_pass, test_pass = stats.referenced(W, b), stats.referenced()
    for part in batches(len(y), seed=1):
        train_pass.update(F[part], y[part])
    for part in batches(len(t), seed=2):
        test_pass.update(T[part], t[part])
    assert train_pass.compute()["nc4"] == M.nc4(F, y, W, b)
    assert close(train_pass.compute()["strong_test_collapse"], M.nc1(F, y))
    assert close(test_pass.compute()["strong_test_collapse"], M.strong_test_collapse(F, y, T, t))
    assert close(test_pass.compute()["weak_test_collapse"], M.weak_test_collapse(F, y, T))
    assert test_pass.compute()["ncc_accuracy"] == M.ncc_accuracy(F, y, T, t)

    test_stats = M.ClassStatistics(within_scatter=False)
    test_stats.update(T, t)
    streamed = M.report(stats, train_pass, test_stats, test_pass)
    functional = M.collapse_report(F, y, T, t, W, b)
    # subsets and classifier accuracies need the features themselves
    assert set(streamed) == set(functional) - {"nc1_subset5", "source_train_acc", "source_test_acc"}
    for key in streamed:
        assert close(streamed[key], functional[key]), key


def test_unlabelled_pass_gives_weak_collapse_only():
    F, y = make_data(3, 4, [10, 10, 10], seed=9)
    stats = M.ClassStatistics()
    stats.update(F, y)
    unlabelled = stats.referenced()
    unlabelled.update(F)
    assert set(unlabelled.compute()) == {"weak_test_collapse"}
    with pytest.raises(ValueError, match="every batch or for none"):
        unlabelled.update(F, y)


def test_streaming_reset_and_fixed_classes():
    F, y = make_data(3, 4, [10, 10, 10], seed=10, label_values=[2, 5, 9])
    stats = M.ClassStatistics(classes=[2, 5, 9, 11])
    stats.update(F, y)
    with pytest.raises(ValueError, match=r"no samples: \[11\]"):
        stats.compute()
    with pytest.raises(ValueError, match="absent from the reference classes"):
        stats.update(F[:2], np.array([2, 3]))
    stats.reset()
    extra = F[:4] + 3.0
    stats.update(extra, np.full(4, 11))
    stats.update(F, y)
    both, labels = np.concatenate([extra, F]), np.concatenate([np.full(4, 11), y])
    assert close(stats.compute()["cdnv"], bf_cdnv(both, labels))


# -------------------------------------------------------------------------------- layers, depth
def bf_ncc_errors(F, y):
    classes, _, mu, _ = bf_means(F, y)
    return sum(classes[bf_nearest(f, mu)] != label for f, label in zip(F, y))


def test_layer_curves_and_effective_depth():
    rng = np.random.default_rng(11)
    y = np.repeat([0, 1, 2], 20)
    layers = [rng.standard_normal((60, 30)) + s * np.eye(3)[y].repeat(10, axis=1) for s in (0.0, 1.0, 50.0)]
    curves = M.layer_curves(layers, y, eps=0.01)
    want = [bf_ncc_errors(L, y) for L in layers]
    assert curves["ncc_errors"] == want and curves["n"] == 60
    assert curves["ncc_error"] == [k / 60 for k in want]
    assert curves["cdnv"] == pytest.approx([bf_cdnv(L, y) for L in layers], rel=RTOL)
    assert want[2] == 0 and want[0] > 0.01 * 60
    first = next(i + 1 for i, k in enumerate(want) if k <= 0.01 * 60)
    assert curves["effective_depth"] == M.effective_depth(layers, y) == first
    assert M.effective_depth(layers[:1], y) == 1  # no layer reaches ε: L
    assert M.effective_depth(layers, y, eps=1.0) == 1


def layer_with_errors(errors, n):
    """1-D features of n images whose nearest-class-mean rule makes exactly ``errors`` errors: class 1 is one
    image at +10 (its mean); class 0 has n − 1 images, ``errors`` of them at +10 (nearest class 1's mean) and
    the rest at −10, which stay nearer class 0's mean while errors < (n − 1) / 2."""
    assert errors < (n - 1) / 2
    f = np.r_[np.full(n - 1 - errors, -10.0), np.full(errors + 1, 10.0)]
    return f[:, None], np.r_[np.zeros(n - 1, int), 1]


@pytest.mark.parametrize("errors, n, eps", [(2, 200, 0.01), (3, 10, 0.3), (7, 100, 0.07), (1, 20, 0.05),
                                            (0, 50, 0.0), (6, 200, 0.03)])
def test_effective_depth_exact_boundary(errors, n, eps):
    """k errors of n reach ε = k/n (floating point says 1 − (n − k)/n > ε for several of these), k + 1 do not."""
    F_at, y = layer_with_errors(errors, n)
    F_over, _ = layer_with_errors(errors + 1, n)
    assert bf_ncc_errors(F_at, y) == errors and bf_ncc_errors(F_over, y) == errors + 1
    perfect = np.where(y == 0, -10.0, 10.0)[:, None] + np.arange(n)[:, None] * 1e-3
    assert M.effective_depth([F_at, perfect], y, eps=eps) == 1
    assert M.effective_depth([F_over, perfect], y, eps=eps) == 2
    assert M.effective_depth([F_over, F_over], y, eps=eps) == 2  # never reached: L
    assert M.reaches_eps(errors, n, eps) and not M.reaches_eps(errors + 1, n, eps)
    assert M.layer_curves([F_at], y, eps)["ncc_errors"] == [errors]


def test_reaches_eps_reads_eps_as_written():
    assert 1.0 - 198 / 200 > 0.01  # the float comparison this replaces gets the boundary wrong
    assert M.reaches_eps(2, 200, 0.01) and not M.reaches_eps(3, 200, 0.01)
    assert M.reaches_eps(0, 1, 0.0) and not M.reaches_eps(1, 10**6, 0.0)
    assert M.reaches_eps(10, 10, 1.0) and M.reaches_eps(10, 10, 1)
    for bad in (-0.1, 1.5, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match=r"eps must be an error rate in \[0, 1\]"):
            M.reaches_eps(0, 10, bad)


# ------------------------------------------------------------------------------------------ NC1 variants
def test_class_subsets_are_seeded_distinct_and_complete_for_small_k():
    classes = np.arange(100, 120)
    subsets = M.class_subsets(classes, 5, 50, seed=0)
    assert len(subsets) == 50 and all(len(set(s)) == 5 and set(s) <= set(classes) for s in subsets)
    assert all((np.diff(s) > 0).all() for s in subsets)
    again = M.class_subsets(classes[::-1], 5, 50, seed=0)  # order of the given classes does not matter
    assert all(np.array_equal(a, b) for a, b in zip(subsets, again))
    assert not all(np.array_equal(a, b) for a, b in zip(subsets, M.class_subsets(classes, 5, 50, seed=1)))
    assert len({tuple(s) for s in subsets}) > 40  # C(20, 5) = 15504: the draws differ
    assert all(np.array_equal(s, [3, 4, 7]) for s in M.class_subsets([7, 3, 4], 5, 4))
    with pytest.raises(ValueError, match="size >= 2"):
        M.class_subsets(classes, 1, 5)


def test_nc1_subsets_with_k_equal_size_is_nc1():
    F, y = make_data(5, 8, [12] * 5, seed=21)
    assert close(M.nc1_subsets(F, y), M.nc1(F, y))


def test_nc1_variants_are_comparable_across_k_where_nc1_is_not():
    """Random class means in R^m with one spread and isotropic noise: the geometry per class is the same
    for every K, CDNV stays flat, yet eq. 4 NC1 grows steeply as K − 1 approaches m; the quotient and the
    5-class subset average stay flat (DESIGN.md §1, NC1 across class counts)."""
    m, n = 24, 30
    got = {}
    for K in (5, 12, 24):
        rng = np.random.default_rng(K)
        mu = 3.0 * rng.standard_normal((K, m))
        y = np.repeat(np.arange(K), n)
        F = mu[y] + rng.standard_normal((K * n, m))
        got[K] = (M.cdnv(F, y), M.nc1(F, y), M.nc1_quotient(F, y), M.nc1_subsets(F, y))
    cdnv, nc1, quotient, subsets = (np.array([got[K][i] for K in got]) for i in range(4))
    assert cdnv.max() / cdnv.min() < 1.3
    assert nc1[-1] / nc1[0] > 100  # K − 1 = 23 ≈ m: Σ_B's smallest kept eigenvalue is tiny
    assert quotient.max() / quotient.min() < 1.6  # tr Σ_B of random means carries a factor (K − 1)/K
    assert subsets.max() / subsets.min() < 1.3


# ------------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", METRICS.names())
def test_registry_entry(name):
    """Every registered metric: a typed record with its function, a direction, a description and columns
    whose scopes, kinds and names the pipeline can use; on random data every column it declares computes."""
    info = METRICS.get(name)
    assert isinstance(info, M.MetricInfo) and info.name == name and info.description
    assert info.higher_is_better in (True, False, None) and callable(info.function) and info.columns
    F, y = make_data(4, 6, [20, 15, 25, 30], seed=1)
    T, t = F[::3], y[::3]  # every class appears among the test samples
    W = np.random.default_rng(0).standard_normal((4, 6))
    evidence = {"source": M.SourceEvidence(F, y, T, t, W), "target": M.TargetEvidence(F, y, np.arange(len(y)) % 2 == 0)}
    for column in info.columns:
        assert column.name is None or column.name == column.name.lower().replace("-", "_")
        if column.scope in evidence:
            value = column.compute(evidence[column.scope])
            assert type(value) is column.kind or (column.kind is float and isinstance(value, float)), column


def test_registry_directions():
    """The directions compare and report show (↑ / ↓): accuracies up, collapse measures down, diagnostics none."""
    for name in METRICS.names():
        info = METRICS.get(name)
        if name.endswith("accuracy"):
            assert info.higher_is_better is True, name
        elif name in ("effective_depth", "nc_rank_limited"):
            assert info.higher_is_better is None, name
        else:
            assert info.higher_is_better is False, name


# ---------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda F, y, W: M.cdnv(F, np.zeros(len(y), int)), "at least 2 classes"),
        (lambda F, y, W: M.nc1(F, y[:-1]), "labels has 29 entries but the features have 30 rows"),
        (lambda F, y, W: M.nc2(np.where(np.arange(F.size).reshape(F.shape) == 5, np.nan, F), y), "NaN or inf"),
        (lambda F, y, W: M.cdnv(np.where(np.arange(F.size).reshape(F.shape) == 5, np.inf, F), y), "NaN or inf"),
        (lambda F, y, W: M.nc3(F, y, W[:, :-1]), r"weight must have shape \[K, m\] = \[3, 4\]"),
        (lambda F, y, W: M.nc4(F, y, W.T), r"weight must have shape"),
        (lambda F, y, W: M.nc4(F, y, W, np.zeros(2)), "bias must be a real"),
        (lambda F, y, W: M.cdnv(F[:, 0], y), r"features must be a 2-D \[N, m\]"),
        (lambda F, y, W: M.cdnv(F, y.astype(float)), "labels must be integers"),
        (lambda F, y, W: M.ncc_accuracy(F, y, F, y + 1000), "test_labels contains classes absent"),
        (lambda F, y, W: M.strong_test_collapse(F, y, F[:, :2], y), "test_features have 2 columns, expected 4"),
        (lambda F, y, W: M.effective_depth([], y), "non-empty list"),
        (lambda F, y, W: M.layer_curves([F], y, eps=2.0), r"eps must be an error rate in \[0, 1\]"),
        (lambda F, y, W: M.collapse_report(F, y, test_features=F), "given together"),
    ],
)
def test_bad_input_raises_clear_error(call, message):
    F, y = make_data(3, 4, [10, 10, 10], seed=12)
    W = np.ones((3, 4))
    with pytest.raises(ValueError, match=message):
        call(F, y, W)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_input_matches_cpu():
    F, y = make_data(4, 6, [10, 12, 9, 11], seed=13)
    W = np.random.default_rng(1).standard_normal((4, 6))
    gpu = M.collapse_report(torch.from_numpy(F).float().cuda(), torch.from_numpy(y).cuda(), torch.from_numpy(F).cuda(),
                            torch.from_numpy(y).cuda(), torch.from_numpy(W).cuda())
    exact = M.collapse_report(torch.from_numpy(F).float().double(), y, F, y, W)
    assert set(gpu) == set(exact)
    for key in exact:
        assert gpu[key] == pytest.approx(exact[key], rel=1e-9, abs=1e-12), key


def test_finite_check_survives_an_overflowing_sum():
    big = torch.full((100, 4), 6e4, dtype=torch.float16)  # finite values whose float16 sum is inf
    assert bool(torch.isinf(big.sum()))
    assert torch.equal(kernels.as_features(big), big)
    big[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        kernels.as_features(big)


def test_coinciding_class_means_give_infinite_cdnv():
    rng = np.random.default_rng(14)
    F = rng.standard_normal((30, 3))
    F[20:] += 5.0
    y = np.repeat([0, 1, 2], 10)
    F[10:20] = F[:10]  # class 1 = class 0's samples: same mean, same variance
    V = M.cdnv_matrix(F, y).numpy()
    assert np.isinf(V[0, 1]) and np.isinf(V[1, 0]) and np.isfinite(V[0, 2]) and V[0, 0] == 0.0
    assert M.cdnv(F, y) == float("inf")


def test_dead_units_do_not_make_nc1_infinite():
    """m < K − 1 with dead (always-zero) feature units, as ReLU nets give: Σ_B^† skips the exact zero
    eigenvalues, so NC1 equals NC1 computed on the live units alone."""
    F, y = make_data(K=12, m=6, counts=[8] * 12, seed=3)
    dead = np.concatenate([F, np.zeros((len(F), 3))], axis=1)  # 9 units, 3 of them dead; K − 1 = 11
    assert close(M.nc1(dead, y), bf_nc1(F, y))
    assert np.isfinite(M.nc1(dead, y))
    report = M.collapse_report(dead, y, dead, y)
    assert close(report["nc1"], bf_nc1(F, y)) and close(report["strong_test_collapse"], bf_nc1(F, y))


def test_float32_screened_decisions_are_the_float64_ones():
    """NCC and classifier decisions come from a float32 product except near-ties, recomputed in float64:
    on random rows, rows with exact ties (duplicate classifier rows) and rows halfway between two means,
    they equal the float64 argmax everywhere."""
    rng = np.random.default_rng(14)
    K, m, n = 30, 40, 3000
    w = torch.from_numpy(rng.standard_normal((K, m)))
    w[7] = w[3]  # exact ties: the lower index must win, as with torch.argmax in float64
    b = torch.from_numpy(rng.standard_normal(K))
    b[7] = b[3]
    x = torch.from_numpy(rng.standard_normal((n, m)) * 5)
    decision = kernels.LinearDecision(w, b)
    assert decision.screen
    np.testing.assert_array_equal(decision.argmax(x).numpy(), decision.exact(x).numpy())
    means = torch.from_numpy(rng.standard_normal((K, m)) + 100.0)
    halfway = (means[rng.integers(0, K, n)] + means[rng.integers(0, K, n)]) / 2
    rows = torch.cat([halfway, halfway + 1e-9 * x, means[rng.integers(0, K, n)] + 0.3 * x])
    np.testing.assert_array_equal(kernels.NearestMeanDecision(means).argmax(rows).numpy(),
                                  kernels.nearest_mean(rows, means).numpy())
