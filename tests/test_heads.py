import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, RidgeClassifier

from ncbench.heads import LogisticHead, NCCHead, RidgeHead, build_head, episode_accuracy, head_label
from ncbench.stats import mean_ci95
from ncbench.registry import HEADS


def make_episodes(E, ways, shots, queries, dim, seed=0, spread=1.0):
    """Random class-structured episodes: support [E, W*S, m], labels [E, W*S] (shuffled), query [E, W*Q, m]."""
    rng = np.random.default_rng(seed)
    means = spread * rng.normal(size=(E, ways, dim))
    sy = np.stack([rng.permutation(np.repeat(np.arange(ways), shots)) for _ in range(E)])
    qy = np.tile(np.repeat(np.arange(ways), queries), (E, 1))
    sx = np.take_along_axis(means, sy[..., None], 1) + rng.normal(size=(E, ways * shots, dim))
    qx = np.take_along_axis(means, qy[..., None], 1) + rng.normal(size=(E, ways * queries, dim))
    return sx, sy, qx, qy


def unit_rows(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


SHAPES = [  # (ways, shots, dim, alpha): dual form (n < m) and primal (n >= m), 2-way and 5-way
    (5, 1, 40, 1.0), (5, 5, 64, 0.1), (5, 20, 8, 1.0), (2, 3, 30, 10.0), (2, 10, 5, 1.0), (3, 4, 12, 0.01),
]


@pytest.mark.parametrize("ways,shots,dim,alpha", SHAPES)
def test_ridge_equals_sklearn_ridge_classifier(ways, shots, dim, alpha):
    sx, sy, qx, _ = make_episodes(10, ways, shots, 10, dim, seed=ways * shots + dim)
    batched = RidgeHead(alpha).predict_episodes(sx, sy, qx)
    for e in range(len(sx)):
        ref = RidgeClassifier(alpha=alpha).fit(sx[e], sy[e])
        head = RidgeHead(alpha).fit(sx[e], sy[e])
        scores = qx[e] @ head.weight_.numpy().T + head.bias_.numpy()
        # sklearn regresses onto 2T - 1 (K > 2), or onto T1 - T0 (K = 2): an affine image of our scores
        expected = scores[:, 1] - scores[:, 0] if ways == 2 else 2 * scores - 1
        np.testing.assert_allclose(ref.decision_function(qx[e]), expected, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(batched[e], ref.predict(qx[e]))


def test_ridge_dual_form_stays_accurate_with_a_large_common_offset():
    # the dual form centres the n x n gram instead of X: rounding grows like |mean|^2 / spread^2
    sx, sy, qx, _ = make_episodes(10, 5, 5, 15, 64, seed=8)
    sx, qx = sx + 100.0, qx + 100.0
    batched = RidgeHead().predict_episodes(sx, sy, qx)
    for e in range(len(sx)):
        ref = RidgeClassifier(alpha=1.0).fit(sx[e], sy[e])
        head = RidgeHead().fit(sx[e], sy[e])
        np.testing.assert_allclose(ref.decision_function(qx[e]),
                                   2 * (qx[e] @ head.weight_.numpy().T + head.bias_.numpy()) - 1, atol=1e-8)
        np.testing.assert_array_equal(batched[e], ref.predict(qx[e]))


def test_ridge_two_way_tie_goes_to_first_class_like_sklearn():
    x = np.array([[-1.0], [1.0]])
    y = np.array([0, 1])
    q = np.array([[0.0]])  # exactly between the two classes: sklearn's decision is 0 -> class 0
    assert RidgeClassifier(alpha=1.0).fit(x, y).predict(q)[0] == 0
    assert RidgeHead(1.0).fit(x, y).predict(q)[0] == 0


def test_ncc_matches_brute_force():
    sx, sy, qx, _ = make_episodes(15, 5, 3, 8, 20, seed=1, spread=0.5)
    pred = NCCHead().predict_episodes(sx, sy, qx)
    for e in range(len(sx)):
        means = [sx[e][sy[e] == k].mean(0) for k in range(5)]
        brute = [int(np.argmin([np.linalg.norm(q - mu) for mu in means])) for q in qx[e]]
        np.testing.assert_array_equal(pred[e], brute)


def test_cl2n_matches_brute_force_and_differs_from_plain_ncc():
    rng = np.random.default_rng(2)
    sx, sy, qx, _ = make_episodes(15, 5, 3, 8, 20, seed=2, spread=0.5)
    center = rng.normal(size=20) * 3.0
    pred = NCCHead(cl2n=True, center=center).predict_episodes(sx, sy, qx)
    for e in range(len(sx)):
        s, q = unit_rows(sx[e] - center), unit_rows(qx[e] - center)
        means = [s[sy[e] == k].mean(0) for k in range(5)]
        brute = [int(np.argmin([np.linalg.norm(v - mu) for mu in means])) for v in q]
        np.testing.assert_array_equal(pred[e], brute)
    assert (pred != NCCHead().predict_episodes(sx, sy, qx)).any()


@pytest.mark.parametrize("ways,shots,dim", [(5, 5, 32), (5, 20, 8), (2, 3, 30), (2, 10, 5)])
def test_logistic_solves_the_sklearn_objective(ways, shots, dim):
    sx, sy, qx, _ = make_episodes(4, ways, shots, 10, dim, seed=3 + dim, spread=0.3)
    batched = LogisticHead(C=1.0).predict_episodes(sx, sy, qx)
    for e in range(len(sx)):
        s, q, y = unit_rows(sx[e]), unit_rows(qx[e]), sy[e]
        head = LogisticHead(C=1.0).fit(sx[e], y)
        w, b = head.weight_.numpy().T, head.bias_.numpy()
        # gradient of sklearn's objective C * sum_i loss_i + |w|^2 / 2 at our solution is zero
        if ways == 2:  # binary model on v = w_1 - w_0, c = b_1 - b_0
            v, c = w[:, 1] - w[:, 0], b[1] - b[0]
            resid = 1 / (1 + np.exp(-(s @ v + c))) - y
            grad_w, grad_b = s.T @ resid + v, resid.sum()
        else:
            logits = s @ w + b
            resid = np.exp(logits - logits.max(1, keepdims=True))
            resid = resid / resid.sum(1, keepdims=True) - np.eye(ways)[y]
            grad_w, grad_b = s.T @ resid + w, resid.sum(0)
        assert np.abs(grad_w).max() < 1e-8 and np.abs(grad_b).max() < 1e-8
        ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(s, y)
        scores = q @ w + b
        if ways == 2:  # sklearn's binary decision = score_1 - score_0
            np.testing.assert_allclose(ref.decision_function(q), scores[:, 1] - scores[:, 0], atol=1e-5)
        else:  # softmax scores are defined up to a per-query constant
            ref_scores = ref.decision_function(q)
            np.testing.assert_allclose(ref_scores - ref_scores.mean(1, keepdims=True),
                                       scores - scores.mean(1, keepdims=True), atol=1e-5)
        np.testing.assert_array_equal(batched[e], ref.predict(q))


def test_logistic_agrees_with_rfs_sklearn_settings():
    sx, sy, qx, _ = make_episodes(60, 5, 1, 15, 64, seed=4, spread=0.3)
    batched = LogisticHead().predict_episodes(sx, sy, qx)
    rfs = np.stack([LogisticRegression(C=1.0, max_iter=1000).fit(unit_rows(sx[e]), sy[e]).predict(unit_rows(qx[e]))
                    for e in range(len(sx))])
    assert (rfs == batched).mean() >= 0.99


def heads_for(dim):
    center = np.linspace(-1.0, 1.0, dim)
    return {name: build_head({"name": name}, center=center) for name in HEADS}


@pytest.mark.parametrize("name", HEADS.names())
def test_batched_equals_per_episode_fit_predict_with_arbitrary_label_set(name):
    label_set = np.array([3, 7, 11, 20, 42])
    sx, sy, qx, _ = make_episodes(10, 5, 2, 6, 16, seed=5, spread=0.4)
    head = heads_for(16)[name]
    batched = head.predict_episodes(torch.as_tensor(sx, dtype=torch.float32), torch.as_tensor(sy), qx)
    assert batched.dtype == np.int64 and batched.shape == (10, 30)
    for e in range(len(sx)):
        pred = head.fit(sx[e].astype(np.float32), label_set[sy[e]]).predict(torch.as_tensor(qx[e]))
        assert pred.dtype == np.int64
        assert set(pred) <= set(label_set)
        np.testing.assert_array_equal(pred, label_set[batched[e]])


def test_registry_lists_heads_and_rejects_unknown_options():
    assert {"ridge", "ncc", "ncc-cl2n", "logistic"} <= set(HEADS.names())
    assert HEADS.get("ridge") is RidgeHead and HEADS.get("ncc") is NCCHead  # classes register themselves
    assert build_head({"name": "ridge", "alpha": 0.5}).alpha == 0.5
    assert build_head({"name": "logistic", "C": 2.0}).C == 2.0
    assert build_head({"name": "ncc-cl2n"}, center=[0.0, 1.0]).cl2n  # the old name: ncc with cl2n=True
    assert build_head({"name": "ncc", "cl2n": True}, center=[0.0, 1.0]).cl2n
    with pytest.raises(ValueError, match="'lambda'"):
        build_head({"name": "ridge", "lambda": 1.0})
    with pytest.raises(ValueError, match="alpha"):
        build_head({"name": "ridge", "alpha": 0})
    with pytest.raises(ValueError, match="C must"):
        build_head({"name": "logistic", "C": -1})


def test_head_label_names_only_non_default_options_and_keeps_the_cl2n_name():
    assert head_label({"name": "ridge", "alpha": 1.0}) == "ridge"
    assert head_label({"name": "ridge", "alpha": 10}) == "ridge-alpha10"
    assert head_label({"name": "logistic", "C": 1.0}) == "logistic"
    assert head_label({"name": "logistic", "C": 0.5}) == "logistic-C0.5"
    # CL2N is an option of ncc; rows keep the label of the old head name whichever way a task writes it
    assert head_label({"name": "ncc-cl2n"}) == head_label({"name": "ncc", "cl2n": True}) == "ncc-cl2n"
    assert head_label({"name": "ncc", "cl2n": False}) == head_label({"name": "ncc-cl2n", "cl2n": False}) == "ncc"


def test_episode_accuracy_values_chunking_and_predictions():
    rng = np.random.default_rng(6)
    labels = np.repeat(np.arange(8), 12)
    feats = (rng.normal(size=(8, 10))[labels] * 0.7 + rng.normal(size=(96, 10))).astype(np.float32)
    from ncbench.episodes import sample_episodes

    ep = sample_episodes(labels, np.arange(8), ways=4, shots=3, queries=5, count=23, seed=0)
    head = RidgeHead(1.0)
    acc, preds = episode_accuracy(head, feats, ep.support, ep.support_labels, ep.query, ep.query_labels,
                                  return_predictions=True)
    assert acc.dtype == np.float64 and acc.shape == (23,)
    expected = head.predict_episodes(feats[ep.support], ep.support_labels, feats[ep.query])
    np.testing.assert_array_equal(preds, expected)
    np.testing.assert_array_equal(acc, (expected == ep.query_labels).mean(1))
    for chunk in (1, 7, 100):
        np.testing.assert_array_equal(
            episode_accuracy(head, torch.as_tensor(feats), ep.support, ep.support_labels, ep.query, ep.query_labels,
                             chunk_size=chunk), acc)
    assert 0.3 < acc.mean() <= 1.0  # well above the 4-way chance level


def test_ncc_class_sums_from_the_feature_table_match_brute_force_means():
    # NCCHead.solve_rows sums each class's rows straight from the table (embedding_bag): shuffled labels, unequal
    # class counts, chunks; the same weights as float64 loops and the same predictions as the gathered path
    rng = np.random.default_rng(21)
    feats = rng.normal(size=(40, 9)).astype(np.float32)
    sup = np.stack([rng.choice(40, 7, replace=False) for _ in range(6)])
    sy = np.stack([rng.permutation([0, 1, 1, 2, 2, 2, 0]) for _ in range(6)])
    head = NCCHead()
    onehot = torch.nn.functional.one_hot(torch.as_tensor(sy), 3).to(torch.float64)
    weight, bias = head.solve_rows(torch.as_tensor(feats, dtype=torch.float64), torch.as_tensor(sup), onehot)
    for e in range(6):
        for k in range(3):
            rows = [feats[i].astype(np.float64) for i, y in zip(sup[e], sy[e]) if y == k]
            mean = [sum(r[d] for r in rows) / len(rows) for d in range(9)]
            np.testing.assert_allclose(weight[e, k].numpy(), 2 * np.array(mean), rtol=1e-14, atol=1e-14)
            assert bias[e, k].item() == pytest.approx(-sum(v * v for v in mean), rel=1e-13)
    qry = np.stack([rng.choice(40, 5, replace=False) for _ in range(6)])
    qy = rng.integers(0, 3, size=(6, 5))
    _, pred = episode_accuracy(head, feats, sup, sy, qry, qy, return_predictions=True, chunk_size=4)
    np.testing.assert_array_equal(pred, head.predict_episodes(feats[sup], sy, feats[qry]))


def test_mean_ci95():
    mean, ci, n = mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert (mean, n) == (2.5, 4)
    assert ci == pytest.approx(1.96 * math.sqrt(5 / 3) / 2)  # sample std (ddof=1) = sqrt(5/3)
    assert isinstance(mean, float) and isinstance(ci, float)
    assert mean_ci95(np.full(10, 0.6))[:2] == (pytest.approx(0.6), pytest.approx(0.0, abs=1e-12))
    assert math.isnan(mean_ci95([0.5])[1])
    with pytest.raises(ValueError, match="values"):
        mean_ci95([])
    with pytest.raises(ValueError, match="NaN"):
        mean_ci95([0.1, float("nan")])


def test_bad_input_names_the_argument():
    sx, sy, qx, qy = make_episodes(3, 3, 2, 4, 5, seed=7)
    head = RidgeHead()
    with pytest.raises(ValueError, match="query_x"):
        head.predict_episodes(sx, sy, qx[:, :, :4])
    with pytest.raises(ValueError, match="query_x"):
        head.predict_episodes(sx, sy, qx[:2])
    with pytest.raises(ValueError, match="support_y"):
        head.predict_episodes(sx, sy[:, :5], qx)
    with pytest.raises(ValueError, match="support_y"):
        head.predict_episodes(sx, sy.astype(float), qx)
    missing = sy.copy()
    missing[1][missing[1] == 2] = 0
    with pytest.raises(ValueError, match="support_y: episode 1 has no support example of label"):
        head.predict_episodes(sx, missing, qx)
    bad = sx.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="support_x: contains NaN"):
        head.predict_episodes(bad, sy, qx)
    with pytest.raises(ValueError, match="support_x"):
        head.predict_episodes(sx[0], sy, qx)
    with pytest.raises(ValueError, match="y: expected shape"):
        head.fit(sx[0], sy[0][:-1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        head.fit(sx[0], np.zeros(6, dtype=int))
    with pytest.raises(ValueError, match="Xq"):
        head.fit(sx[0], sy[0]).predict(qx[0][:, :3])
    with pytest.raises(ValueError, match="Xq: contains NaN"):
        head.predict(np.full((2, 5), np.inf))
    with pytest.raises(ValueError, match="center"):
        NCCHead(cl2n=True).fit(sx[0], sy[0])
    with pytest.raises(ValueError, match="center"):
        NCCHead(cl2n=True, center=np.zeros(4)).fit(sx[0], sy[0])
    feats = sx.reshape(-1, 5)
    sup, qry = np.arange(18).reshape(3, 6), np.arange(36).reshape(3, 12) % 18
    with pytest.raises(ValueError, match="query: indices must lie in 0..17"):
        episode_accuracy(head, feats, sup, sy, qry + 1, qy)
    with pytest.raises(ValueError, match="query_labels"):
        episode_accuracy(head, feats, sup, sy, qry, qy[:, :3])
    with pytest.raises(ValueError, match="features"):
        episode_accuracy(head, feats[:, None], sup, sy, qry, qy)
    with pytest.raises(ValueError, match="chunk_size"):
        episode_accuracy(head, feats, sup, sy, qry, qy, chunk_size=0)


def _relu_episodes(seed):
    """float32 post-ReLU features [200, 48] of 10 classes and 40 5-way 2-shot 10-query episodes over them."""
    from ncbench.episodes import sample_episodes

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), 20)
    feats = np.maximum(rng.normal(size=(10, 48))[labels] + 2.0 * rng.normal(size=(200, 48)), 0).astype(np.float32)
    return feats, sample_episodes(labels, np.arange(10), ways=5, shots=2, queries=10, count=40, seed=1)


@pytest.mark.parametrize("name", ["ridge", "ncc"])
def test_float32_features_give_the_float64_predictions(name):
    # heads on raw features score float32 queries in float32 with a certified margin, else rescore in float64
    feats, ep = _relu_episodes(9)
    head = HEADS.get(name)()
    args = (ep.support, ep.support_labels, ep.query, ep.query_labels)
    acc32, pred32 = episode_accuracy(head, feats, *args, return_predictions=True)
    acc64, pred64 = episode_accuracy(head, feats.astype(np.float64), *args, return_predictions=True)
    np.testing.assert_array_equal(pred32, pred64)
    np.testing.assert_array_equal(acc32, acc64)


def test_certified_argmax_rescores_near_ties_in_float64():
    from ncbench.heads import _certified_argmax

    rng = np.random.default_rng(10)
    q = torch.as_tensor(rng.normal(size=(3, 200, 64)).astype(np.float32))
    w = torch.as_tensor(rng.normal(size=(3, 2, 64)))
    w[:, 1] = w[:, 0] + 1e-9 * torch.as_tensor(rng.normal(size=(3, 64)))  # classes differ far below float32 precision
    b = torch.zeros(3, 2, dtype=torch.float64)
    exact = torch.baddbmm(b[:, :, None], w, q.double().transpose(1, 2)).argmax(1)
    got = _certified_argmax(w, b, q)
    torch.testing.assert_close(got, exact)
    float32_only = torch.baddbmm(b.float()[:, :, None], w.float(), q.transpose(1, 2)).argmax(1)
    assert (float32_only != exact).any()  # float32 alone would have been wrong here


def test_certified_argmax_never_trusts_float32_overflow_or_underflow():
    from ncbench.heads import _certified_argmax

    rng = np.random.default_rng(11)
    q = torch.as_tensor(rng.normal(size=(2, 50, 8)).astype(np.float32))
    for scale in (1e40, 1e-50):  # beyond float32's range: scores overflow / weights flush to zero
        w = torch.as_tensor(rng.normal(size=(2, 3, 8))) * scale
        b = torch.zeros(2, 3, dtype=torch.float64)
        exact = torch.baddbmm(b[:, :, None], w, q.double().transpose(1, 2)).argmax(1)
        torch.testing.assert_close(_certified_argmax(w, b, q), exact)


def test_build_head_passes_context_only_to_heads_that_take_it():
    center = torch.zeros(4, dtype=torch.float64)
    cl2n = build_head({"name": "ncc-cl2n"}, center=center)
    assert cl2n.cl2n and torch.equal(torch.as_tensor(cl2n.center), center)
    assert build_head({"name": "ridge", "alpha": 3.0}, center=center).alpha == 3.0
    with pytest.raises(ValueError, match="unknown option"):
        build_head({"name": "ridge", "beta": 1.0})


@pytest.mark.parametrize("offset", [0.0, 5.0])
def test_ridge_dual_form_equals_the_primal_solution(offset):
    # the dual form (n x n gram, centred coefficients, bias from the gram's row means) against the float64
    # primal normal equations in numpy: (Xc^T Xc + alpha I) w = Xc^T Tc, b = mean(T) - mean(X) w
    sx, sy, _, _ = make_episodes(6, 5, 3, 4, 40, seed=12)
    sx = sx + offset
    weight, bias = RidgeHead(0.5).solve(torch.as_tensor(sx), torch.nn.functional.one_hot(torch.as_tensor(sy)).double())
    for e in range(len(sx)):
        t = np.eye(5)[sy[e]]
        xc, tc = sx[e] - sx[e].mean(0), t - t.mean(0)
        w = np.linalg.solve(xc.T @ xc + 0.5 * np.eye(40), xc.T @ tc).T
        b = t.mean(0) - w @ sx[e].mean(0)
        np.testing.assert_allclose(weight[e].numpy(), w, rtol=0, atol=1e-10 * np.abs(w).max())
        np.testing.assert_allclose(bias[e].numpy(), b, rtol=0, atol=1e-10 * max(1.0, np.abs(b).max()))


def logistic_objective(w, b, x, y, C):
    """sklearn's objective at a softmax head w [W, m], b [W] (two classes: its binary model in w_1 - w_0)."""
    if len(w) == 2:
        v, c = w[1] - w[0], b[1] - b[0]
        return C * np.logaddexp(0, -np.where(y == 1, 1.0, -1.0) * (x @ v + c)).sum() + 0.5 * v @ v
    logits = x @ w.T + b
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    return C * (lse - logits[np.arange(len(y)), y]).sum() + 0.5 * (w * w).sum()


@pytest.mark.parametrize("ways,shots,dim,C", [(5, 5, 64, 1.0), (5, 1, 32, 10.0), (2, 4, 20, 1.0), (3, 10, 8, 0.5)])
def test_logistic_objective_is_at_most_sklearns(ways, shots, dim, C):
    sx, sy, _, _ = make_episodes(8, ways, shots, 5, dim, seed=13 + dim, spread=0.3)
    for e in range(len(sx)):
        s = unit_rows(sx[e])
        head = LogisticHead(C=C).fit(sx[e], sy[e])
        ours = logistic_objective(head.weight_.numpy(), head.bias_.numpy(), s, sy[e], C)
        ref = LogisticRegression(C=C, max_iter=1000).fit(s, sy[e])
        coef, icpt = ref.coef_, ref.intercept_
        if ways == 2:
            coef, icpt = np.vstack([0 * coef[0], coef[0]]), np.array([0.0, icpt[0]])
        assert ours <= logistic_objective(coef, icpt, s, sy[e], C) * (1 + 1e-6)


def test_logistic_with_a_repeated_support_feature_uses_the_qr_basis():
    # a repeated support row makes the gram singular: the Cholesky basis is refused, the QR basis used
    sx, sy, qx, _ = make_episodes(3, 5, 3, 10, 32, seed=14, spread=0.3)
    sx[:, 1] = sx[:, 0]  # (the labels may differ: still a well-posed regularised problem)
    head = LogisticHead()
    for e in range(len(sx)):
        z, back, is_chol = head._basis(torch.as_tensor(unit_rows(sx[e]))[None])
        assert not is_chol
        head.fit(sx[e], sy[e])
        s = unit_rows(sx[e])
        logits = s @ head.weight_.numpy().T + head.bias_.numpy()
        resid = np.exp(logits - logits.max(1, keepdims=True))
        resid = resid / resid.sum(1, keepdims=True) - np.eye(5)[sy[e]]
        assert np.abs(s.T @ resid + head.weight_.numpy().T).max() < 1e-8 and np.abs(resid.sum(0)).max() < 1e-8


@pytest.mark.parametrize("name", ["ncc-cl2n", "logistic"])
def test_transformed_features_give_the_per_episode_predictions(name):
    # episode_accuracy transforms the N feature rows once and scores float32 roundings of the transformed queries
    # (rescoring near-ties in float64): the predictions of the per-episode float64 path
    feats, ep = _relu_episodes(15)
    head = build_head({"name": name}, center=feats.mean(0))
    acc, pred = episode_accuracy(head, feats, ep.support, ep.support_labels, ep.query, ep.query_labels,
                                 return_predictions=True, chunk_size=7)
    expected = head.predict_episodes(feats[ep.support].astype(np.float64), ep.support_labels,
                                     feats[ep.query].astype(np.float64))
    np.testing.assert_array_equal(pred, expected)
    np.testing.assert_array_equal(acc, (expected == ep.query_labels).mean(1))


def test_certified_argmax_with_rounded_queries_returns_the_float64_argmax():
    from ncbench.heads import _certified_argmax

    rng = np.random.default_rng(16)
    w = torch.as_tensor(rng.normal(size=(3, 2, 64)))
    d = (w[:, 1] - w[:, 0])[:, None, :]                                  # [3, 1, 64]
    r = torch.as_tensor(rng.normal(size=(3, 300, 64)))
    # queries almost orthogonal to w_1 - w_0: the score gap (~1e-9) is below what rounding q to float32 moves
    q64 = r - (r * d).sum(2, keepdim=True) / (d * d).sum(2, keepdim=True) * d
    q64 = q64 + 1e-9 * torch.as_tensor(rng.normal(size=(3, 300, 1))) * d
    b = torch.zeros(3, 2, dtype=torch.float64)
    exact = torch.baddbmm(b[:, :, None], w, q64.transpose(1, 2)).argmax(1)
    q32 = q64.to(torch.float32)
    got = _certified_argmax(w, b, q32, exact_query=lambda e, j: q64[e, j])
    torch.testing.assert_close(got, exact)
    assert (_certified_argmax(w, b, q32) != exact).any()  # the float32 queries alone give other answers
