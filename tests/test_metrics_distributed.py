"""Collapse metrics over shards: each process streams its own share of the samples and the accumulators
merge their sufficient statistics with ``torch.distributed`` all-reduces (gloo, 2 processes spawned here),
never gathering features. Every column must equal the one-process result to 1e-12."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ncbench.metrics as M

K, M_DIM, N, T = 7, 6, 300, 120
MISSING = 3  # class index absent from rank 0's shard


def data():
    """Train features [N, m] float32 (a large common offset), labels [N], test [T, m], [T], classifier."""
    rng = np.random.default_rng(5)
    values = np.array([-4, 0, 2, 9, 10, 31, 100])  # arbitrary sorted label values
    mu = 3.0 * rng.standard_normal((K, M_DIM)) + 50.0
    y = values[rng.integers(0, K, N)]
    t = values[rng.integers(0, K, T)]
    index = {v: i for i, v in enumerate(values)}
    f = (mu[[index[v] for v in y]] + rng.standard_normal((N, M_DIM))).astype(np.float32)
    g = (mu[[index[v] for v in t]] + rng.standard_normal((T, M_DIM))).astype(np.float32)
    w, b = rng.standard_normal((K, M_DIM)), rng.standard_normal(K)
    return f, y, g, t, w, b, values


def shard(n: int, labels: np.ndarray, rank: int, missing_value) -> np.ndarray:
    """Rows of one process: an uneven 2:1 split, and every row of ``missing_value`` on rank 1."""
    rows = np.arange(n)
    mine = (rows % 3 != 2) if rank == 0 else (rows % 3 == 2)
    mine &= (labels != missing_value) if rank == 0 else np.ones(n, bool)
    if rank == 1:
        mine |= labels == missing_value
    return rows[mine]


def stream(f, y, g, t, w, b, train_rows, test_rows, group_reduce: bool) -> dict:
    """Both passes over the given rows in batches of 17 (all-reducing between them when distributed)."""
    train, scatter = M.ClassStatistics(within_scatter=False), M.ClassStatistics()
    test = M.ClassStatistics(within_scatter=False)
    for part in np.array_split(train_rows, max(1, len(train_rows) // 17)):
        train.update(f[part], y[part])
        scatter.update(f[part], y[part])
    for part in np.array_split(test_rows, max(1, len(test_rows) // 17)):
        test.update(g[part], t[part])
    if group_reduce:
        for stats in (train, scatter, test):
            stats.all_reduce()
    train_pass, test_pass = train.referenced(w, b), train.referenced()
    for part in np.array_split(train_rows, max(1, len(train_rows) // 13)):
        train_pass.update(f[part], y[part])
    for part in np.array_split(test_rows, max(1, len(test_rows) // 13)):
        test_pass.update(g[part], t[part])
    if group_reduce:
        train_pass.all_reduce()
        test_pass.all_reduce()
    out = {key: float(v) for key, v in M.report(train, train_pass, test, test_pass).items()}
    out.update({f"scatter_{key}": v for key, v in scatter.compute(w).items()})
    out["means"] = train.means.tolist()
    out["variances"] = train.variances().tolist()
    out["classes"] = train.classes.tolist()
    return out


def worker(rank: int, init: str, folder: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        f, y, g, t, w, b, values = data()
        got = stream(f, y, g, t, w, b, shard(N, y, rank, values[MISSING]), shard(T, t, rank, None), True)
        with open(f"{folder}/rank{rank}.json", "w") as out:
            json.dump(got, out)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flat(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float64).ravel()


def test_sharded_statistics_all_reduce_to_the_one_process_result(tmp_path):
    f, y, g, t, w, b, values = data()
    assert values[MISSING] not in y[shard(N, y, 0, values[MISSING])]  # rank 0 never sees that class
    want = stream(f, y, g, t, w, b, np.arange(N), np.arange(T), False)
    mp.spawn(worker, args=(f"tcp://127.0.0.1:{free_port()}", str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert set(got) == set(want)
        assert got["classes"] == values.tolist()
        for key in want:
            np.testing.assert_allclose(flat(got[key]), flat(want[key]), rtol=1e-12, atol=0, err_msg=key)


def test_all_reduce_without_a_process_group_is_a_no_op():
    f, y, *_ = data()
    stats = M.ClassStatistics()
    stats.update(f, y)
    before = stats.compute()
    assert stats.all_reduce() is stats and stats.compute() == before
    passed = stats.referenced()
    passed.update(f, y)
    assert passed.all_reduce().compute() == passed.compute()


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
