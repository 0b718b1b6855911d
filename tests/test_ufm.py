"""The unconstrained features model converges to neural collapse; its end point checks the metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncbench.ufm import train_ufm


@pytest.fixture(scope="module", params=["ce", "mse"])
def trained(request):
    return train_ufm(K=4, n=10, m=16, loss=request.param, steps=400, seed=0, record_every=100)


def test_nc1_nc2_nc3_fall_by_orders_of_magnitude(trained):
    first, last = trained.history[0], trained.final()
    assert [r["step"] for r in trained.history] == [0, 100, 200, 300, 400]
    for key in ("nc1", "nc2", "nc3"):
        assert first[key] > 0.1, key  # a random start is far from collapse
        assert last[key] < 1e-3, key
        assert last[key] < 1e-3 * first[key], key
    assert last["nc4"] == 0.0 and last["ncc_train_acc"] == 1.0
    assert last["loss"] < first["loss"]


def test_end_point_is_a_simplex_etf(trained):
    """Checked without ncbench.metrics: equal-norm centred means at cosine −1/(K−1), classifier ∝ means."""
    H, y, A = trained.features.numpy(), trained.labels.numpy(), trained.weight.numpy()
    K = 4
    mu = np.stack([H[y == k].mean(0) for k in range(K)])
    assert np.max(np.abs(H - mu[y])) < 1e-6 * np.abs(mu).max()
    c = mu - mu.mean(0)
    norms = np.linalg.norm(c, axis=1)
    np.testing.assert_allclose(norms, norms.mean(), rtol=1e-4)
    cos = (c / norms[:, None]) @ (c / norms[:, None]).T
    np.testing.assert_allclose(cos[~np.eye(K, dtype=bool)], -1 / (K - 1), atol=1e-4)
    ratio = A / np.linalg.norm(A) - c / np.linalg.norm(c)
    assert np.abs(ratio).max() < 1e-3


def test_seeded_and_validated():
    a = train_ufm(K=3, n=4, m=5, steps=20, record_every=10, seed=3)
    b = train_ufm(K=3, n=4, m=5, steps=20, record_every=10, seed=3)
    assert a.history == b.history
    assert torch.equal(a.features, b.features)
    assert a.features.shape == (12, 5) and a.weight.shape == (3, 5) and a.bias.shape == (3,)
    with pytest.raises(ValueError, match="loss must be one of"):
        train_ufm(K=3, n=4, m=5, loss="hinge")
    with pytest.raises(ValueError, match="K must be an integer ≥ 2"):
        train_ufm(K=1, n=4, m=5)
    with pytest.raises(ValueError, match="weight_decay must be > 0"):
        train_ufm(K=3, n=4, m=5, weight_decay=0.0)
