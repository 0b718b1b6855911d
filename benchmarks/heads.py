"""Batched few-shot heads vs per-episode loops (scikit-learn, easyfsl), on cached random class-structured features.

    python benchmarks/heads.py                       # 10,000 5-way 5-shot 15-query episodes, 640-d features,
                                                     # then 1-shot, 20-way and 2,048-d rows on fewer episodes
    python benchmarks/heads.py --episodes 1000 --subset 100 --dim 64 --grid-episodes 0   # a quick run

Features: ``classes`` class means drawn N(0, I_m), samples = ReLU(mean + N(0, noise^2 I_m)), float32, as a
post-ReLU penultimate layer would give. The per-episode loops run on the first ``--subset`` episodes and
their time is scaled to all episodes; predictions on that subset are compared with the batched ones.
scikit-learn gets float64 features, as the heads compute in float64 (its ridge would otherwise solve in float32);
easyfsl (``pip install easyfsl``, or the ``bench`` extra) gets the float32 features as torch tensors, one episode
per ``process_support_set`` / ``forward``. The logistic head is checked by its objective: per episode,
``C * sum_i CE_i + |w|^2 / 2`` at our solution must not exceed sklearn's by more than 1e-6 relative.
The arithmetic floor: FLOPs per episode of the float64 (gram, weight) and float32 (query scores) matrix products,
at the float32 / float64 matmul rates measured here (one large ``torch.matmul``) -> the most episodes/s those
products allow. The measured kernel floor: the same products as ``bmm`` at the episode shapes, plus gathering each
episode's rows from the feature tables (:func:`kernel_floor`), with nothing else -> the most episodes/s that
torch's unfused kernels allow here. Everything is limited to ``--threads`` threads (torch and the BLAS behind numpy).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

from ncbench.runtime import prepare_process_env

prepare_process_env()  # before torch (or numpy, sklearn) loads its OpenMP, which reads OMP_WAIT_POLICY once

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.neighbors import NearestCentroid
from threadpoolctl import threadpool_limits

from ncbench.episodes import sample_episodes
from ncbench.heads import LogisticHead, NCCHead, RidgeHead, _one_hot, episode_accuracy
from ncbench.stats import mean_ci95

OBJECTIVE_RTOL = 1e-6


def features(classes: int, per_class: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    feats = np.maximum(rng.normal(size=(classes, dim))[labels] + noise * rng.normal(size=(len(labels), dim)), 0)
    return feats.astype(np.float32), labels


def timed(fn, repeat: int = 1):
    """(result, seconds): the fastest of ``repeat`` runs, as timeit does, to damp noise from other processes."""
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def sklearn_loop(make, feats, ep, n, normalise=False, keep=None):
    """Per-episode fit/predict of ``make()`` on the first ``n`` episodes -> predictions [n, n_q]; ``keep``, a list,
    receives the fitted models."""
    prep = unit_rows if normalise else (lambda x: x)
    out = []
    for e in range(n):
        model = make().fit(prep(feats[ep.support[e]]), ep.support_labels[e])
        out.append(model.predict(prep(feats[ep.query[e]])))
        if keep is not None:
            keep.append(model)
    return np.stack(out)


def easyfsl_loop(make, feats, ep, n):
    """Per-episode ``process_support_set`` + ``forward`` of an easyfsl classifier -> predictions [n, n_q]."""
    x = torch.as_tensor(feats)
    model = make()
    out = []
    with torch.no_grad():
        for e in range(n):
            model.process_support_set(x[ep.support[e]], torch.as_tensor(ep.support_labels[e]))
            out.append(model(x[ep.query[e]]).argmax(-1).numpy())
    return np.stack(out)


def easyfsl_finetune_loop(make, feats, ep, n):
    """As :func:`easyfsl_loop` for easyfsl's Finetune, whose forward runs an optimiser (needs autograd)."""
    x = torch.as_tensor(feats)
    out = []
    for e in range(n):
        model = make()
        model.process_support_set(x[ep.support[e]], torch.as_tensor(ep.support_labels[e]))
        out.append(model(x[ep.query[e]]).detach().argmax(-1).numpy())
    return np.stack(out)


def logistic_objective(weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray, C: float) -> float:
    """sklearn's LogisticRegression(C) objective at a softmax head: weight [W, m], bias [W], x [n, m] (normalised),
    y [n] in 0..W-1. Multinomial: ``C sum_i CE_i + |weight|^2 / 2``; two classes: sklearn's binary model in
    ``v = w_1 - w_0, c = b_1 - b_0``: ``C sum_i log(1 + exp(-s_i (v.x_i + c))) + |v|^2 / 2`` (s_i = +-1)."""
    if len(weight) == 2:
        v, c = weight[1] - weight[0], bias[1] - bias[0]
        margin = np.where(y == 1, 1.0, -1.0) * (x @ v + c)
        return float(C * np.logaddexp(0, -margin).sum() + 0.5 * v @ v)
    logits = x @ weight.T + bias
    top = logits.max(1, keepdims=True)
    lse = (top[:, 0] + np.log(np.exp(logits - top).sum(1)))
    return float(C * (lse - logits[np.arange(len(y)), y]).sum() + 0.5 * (weight * weight).sum())


def sklearn_weights(model) -> tuple[np.ndarray, np.ndarray]:
    """A fitted LogisticRegression as a softmax head (weight [W, m], bias [W]); binary: (0, v), (0, c)."""
    coef, icpt = model.coef_, model.intercept_
    if coef.shape[0] == 1:
        return np.vstack([np.zeros_like(coef[0]), coef[0]]), np.array([0.0, icpt[0]])
    return coef, icpt


def matmul_gflops(dtype: torch.dtype, repeat: int) -> float:
    """Measured single-process GFLOP/s of one large ``torch.matmul`` in ``dtype`` (fastest of ``repeat``)."""
    a, b = torch.randn(512, 640, dtype=dtype), torch.randn(640, 1024, dtype=dtype)
    torch.matmul(a, b)
    _, sec = timed(lambda: [torch.matmul(a, b) for _ in range(4)], max(repeat, 3))
    return 4 * 2 * 512 * 640 * 1024 / sec / 1e9


def floor_line(name: str, flop64: float, flop32: float, gf64: float, gf32: float, rate: float) -> str:
    limit = 1 / (flop64 / (gf64 * 1e9) + flop32 / (gf32 * 1e9))
    return (f"  {name} floor: {(flop64 + flop32) / 1e6:.2f} MFLOP/episode ({flop64 / 1e6:.2f} float64 + "
            f"{flop32 / 1e6:.2f} float32) -> at most {limit:,.0f} episodes/s; batched reaches {rate / limit:.0%} of it")


def kernel_floor(feats: np.ndarray, ep, ways: int, repeat: int, chunk: int = 64) -> tuple[float, float, float]:
    """Measured episodes/s of the bare work every batched head must do, with torch's kernels at these shapes and
    nothing else (no validation, solve or certificate): (gather, ridge products, ncc products).
    gather: ``index_select`` of each episode's support rows from the float64 table and query rows from the float32
    one, chunk by chunk into reused buffers; products: on one gathered chunk, the float64 support gram
    ``[n, m] x [m, n]`` and weight ``[W, n] x [n, m]`` (ridge only: ncc's class sums add the rows as they are read)
    and the float32 query scores ``[n_q, m] x [m, W]``, as ``bmm`` over the chunk."""
    f32 = torch.as_tensor(feats)
    f64 = f32.to(torch.float64)
    sup, qry = torch.as_tensor(ep.support), torch.as_tensor(ep.query)
    count, (n, n_q), m = len(sup), (sup.shape[1], qry.shape[1]), f32.shape[1]
    chunk = min(chunk, count)
    s_buf, q_buf = f64.new_empty(chunk * n, m), f32.new_empty(chunk * n_q, m)

    def gather(lo):
        s_rows, q_rows = sup[lo:lo + chunk].reshape(-1), qry[lo:lo + chunk].reshape(-1)
        return (torch.index_select(f64, 0, s_rows, out=s_buf[: len(s_rows)]),
                torch.index_select(f32, 0, q_rows, out=q_buf[: len(q_rows)]))

    _, sec = timed(lambda: [gather(lo) for lo in range(0, count, chunk)], repeat)
    gather_rate = count / sec
    s, q = gather(0)
    s, q = s.view(chunk, n, m), q.view(chunk, n_q, m)
    coef = torch.randn(chunk, ways, n, dtype=torch.float64)
    w32 = torch.randn(chunk, ways, m).transpose(1, 2)     # [chunk, m, W], the layout the heads score with

    def products(ridge):
        if ridge:
            torch.bmm(s, s.transpose(1, 2))
            torch.bmm(coef, s)
        torch.bmm(q, w32)

    reps = max(1, count // chunk)
    rates = [chunk * reps / timed(lambda: [products(g) for _ in range(reps)], repeat)[1] for g in (True, False)]
    return gather_rate, rates[0], rates[1]


def kernel_floor_line(name: str, gather: float, products: float, rate: float) -> str:
    limit = 1 / (1 / gather + 1 / products)
    return (f"  {name} measured kernel floor: gathering the rows {gather:,.0f} episodes/s, the bare batched products "
            f"{products:,.0f} episodes/s -> both: {limit:,.0f} episodes/s; batched reaches {rate / limit:.0%} of it")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=10_000)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--dim", type=int, default=640)
    p.add_argument("--noise", type=float, default=3.0, help="within-class std relative to unit-variance means")
    p.add_argument("--subset", type=int, default=500, help="episodes timed in the per-episode loops")
    p.add_argument("--finetune-subset", type=int, default=20, help="episodes timed in easyfsl's Finetune loop")
    p.add_argument("--grid-episodes", type=int, default=2000,
                   help="episodes of each extra row (1-shot, 20-way, 2,048-d); 0: no extra rows")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--C", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="every timing is the fastest of this many runs")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    try:
        import easyfsl.methods as fsl  # lazy: optional, the bench extra
    except ImportError:
        fsl = None

    with threadpool_limits(a.threads):
        gf32, gf64 = matmul_gflops(torch.float32, a.repeat), matmul_gflops(torch.float64, a.repeat)
        print(f"torch.matmul on {a.threads} thread(s): {gf32:.1f} GFLOP/s float32, {gf64:.1f} GFLOP/s float64")
        main_row(a, a.episodes, a.ways, a.shots, a.dim, a.subset, fsl, gf32, gf64, full=True)
        if a.grid_episodes > 0:
            episodes, subset = min(a.grid_episodes, a.episodes), min(max(a.subset // 5, 1), a.grid_episodes)
            for ways, shots, dim in ((a.ways, 1, a.dim), (20, a.shots, a.dim), (a.ways, a.shots, 2048)):
                if ways > a.classes:
                    print(f"\n{ways}-way row skipped: needs --classes >= {ways}")
                    continue
                main_row(a, episodes, ways, shots, dim, subset, fsl, gf32, gf64, full=False)


def main_row(a, episodes, ways, shots, dim, subset, fsl, gf32, gf64, full):
    """Time the batched heads at one episode shape against the per-episode loops; ``full``: every baseline and
    the logistic objective check, else ridge and NCC against scikit-learn only."""
    subset = min(subset, episodes)
    feats, labels = features(a.classes, a.per_class, dim, a.noise, a.seed)
    feats64 = feats.astype(np.float64)
    center = feats64.mean(0)  # stands in for the source-train mean feature of CL2N
    ep = sample_episodes(labels, np.arange(a.classes), ways, shots, a.queries, episodes, a.seed)
    n, n_q = ways * shots, ways * a.queries
    print(f"\n{episodes} episodes, {ways}-way {shots}-shot {a.queries}-query, features {feats.shape} float32; "
          f"per-episode loops timed on {subset} episodes and scaled; times are the fastest of {a.repeat} runs")

    def run(label, head, count=episodes):
        (acc, pred), sec = timed(lambda: episode_accuracy(head, feats, ep.support[:count], ep.support_labels[:count],
                                                          ep.query[:count], ep.query_labels[:count],
                                                          return_predictions=True), a.repeat)
        mean, ci, _ = mean_ci95(acc)
        print(f"  {label:9s} batched: {count / sec:10,.0f} episodes/s ({sec:.2f} s), acc {mean:.4f} ± {ci:.4f}")
        return pred, count / sec

    def loop(label, fn, ours, ours_rate, n_eps=subset, what="predictions identical"):
        pred, sec = timed(fn, a.repeat if n_eps == subset else 1)
        rate = n_eps / sec
        same = (pred == ours[:n_eps])
        flag = bool(same.all()) if what == "predictions identical" else f"{same.mean():.2%}"
        print(f"    vs {label}: {rate:8,.0f} episodes/s -> speed-up {ours_rate / rate:6.1f}x; {what} on {n_eps} "
              f"episodes: {flag}")
        return ours_rate / rate

    ridge_pred, ridge_rate = run("ridge", RidgeHead(a.alpha))
    sk = loop("sklearn RidgeClassifier loop", lambda: sklearn_loop(lambda: RidgeClassifier(alpha=a.alpha), feats64, ep,
                                                                     subset), ridge_pred, ridge_rate)
    print(f"  ridge speed-up: {sk:.1f}x vs scikit-learn (target >= 20x)")
    ncc_pred, ncc_rate = run("ncc", NCCHead())
    with warnings.catch_warnings():  # NearestCentroid's shrinkage statistics divide by n - W, 0 at one shot
        warnings.simplefilter("ignore", RuntimeWarning)
        loop("sklearn NearestCentroid loop", lambda: sklearn_loop(NearestCentroid, feats64, ep, subset), ncc_pred,
             ncc_rate)
    cl2n_pred, cl2n_rate = run("ncc-cl2n", NCCHead(cl2n=True, center=center))
    dual = n < dim
    flop_gram = 2 * n * n * dim if dual else 2 * n * dim * dim  # (primal: the m x m gram of centred features)
    print(floor_line("ridge", flop_gram + 2 * ways * n * dim, 2 * n_q * ways * dim, gf64, gf32, ridge_rate))
    print(floor_line("ncc", 2 * ways * n * dim, 2 * n_q * ways * dim, gf64, gf32, ncc_rate))
    gather, ridge_products, ncc_products = kernel_floor(feats, ep, ways, a.repeat)
    print(kernel_floor_line("ridge", gather, ridge_products, ridge_rate))
    print(kernel_floor_line("ncc", gather, ncc_products, ncc_rate))
    if not full:
        return

    if fsl is None:
        print("  easyfsl rows skipped: easyfsl is not installed (pip install easyfsl, or pip install -e '.[bench]')")
    else:
        proto = loop("easyfsl PrototypicalNetworks loop", lambda: easyfsl_loop(fsl.PrototypicalNetworks, feats, ep,
                                                                             subset), ncc_pred, ncc_rate)
        centre = torch.as_tensor(center, dtype=torch.float32)
        loop("easyfsl SimpleShot (CL2N, cosine) loop",
             lambda: easyfsl_loop(lambda: fsl.SimpleShot(feature_centering=centre, feature_normalization=2), feats, ep,
                                  subset), cl2n_pred, cl2n_rate, what="same predictions as ncc-cl2n")
        ft = min(a.finetune_subset, subset)
        fine = loop("easyfsl Finetune loop (200 Adam steps)",
                    lambda: easyfsl_finetune_loop(fsl.Finetune, feats, ep, ft), ridge_pred, ridge_rate, n_eps=ft,
                    what="same predictions as ridge")
        print(f"  easyfsl speed-ups: ncc {proto:.1f}x vs PrototypicalNetworks, ridge {fine:.0f}x vs Finetune "
              f"(target >= 20x)")

    head = LogisticHead(a.C)
    log_pred, log_rate = run("logistic", head)
    models: list = []
    lr = loop("sklearn LogisticRegression loop (RFS, max_iter=1000)",
              lambda: (models.clear(), sklearn_loop(lambda: LogisticRegression(C=a.C, max_iter=1000), feats64, ep,
                                                    subset, normalise=True, keep=models))[1],
              log_pred, log_rate, what="query predictions agreeing")
    sx = torch.as_tensor(unit_rows(feats64[ep.support[:subset]]))
    weight, bias = head.solve(sx, _one_hot(torch.as_tensor(ep.support_labels[:subset]), "support_labels"))
    excess = []
    for e, model in enumerate(models):
        x, y = sx[e].numpy(), ep.support_labels[e]
        ours = logistic_objective(weight[e].numpy(), bias[e].numpy(), x, y, a.C)
        theirs = logistic_objective(*sklearn_weights(model), x, y, a.C)
        excess.append((ours - theirs) / abs(theirs))
    excess = np.array(excess)
    print(f"  logistic speed-up: {lr:.1f}x vs scikit-learn (target >= 10x); objective (ours - sklearn) / sklearn: "
          f"max {excess.max():.2e}, median {np.median(excess):.2e}; ours <= sklearn + {OBJECTIVE_RTOL:g} relative on "
          f"{int((excess <= OBJECTIVE_RTOL).sum())}/{len(excess)} episodes")


if __name__ == "__main__":
    main()
