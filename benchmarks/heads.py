"""Batched few-shot heads vs a scikit-learn per-episode loop, on cached random class-structured features.

    python benchmarks/heads.py                       # 10,000 5-way 5-shot 15-query episodes, 640-d features
    python benchmarks/heads.py --episodes 1000 --subset 100 --dim 64   # a quick run

Features: ``classes`` class means drawn N(0, I_m), samples = ReLU(mean + N(0, noise^2 I_m)), float32, as a
post-ReLU penultimate layer would give. The scikit-learn loops run on the first ``--subset`` episodes and
their time is scaled to all episodes; predictions on that subset are compared with the batched ones.
They get float64 features, as the heads compute in float64 (sklearn's ridge would otherwise solve in float32).
Both sides are limited to ``--threads`` threads (torch and the BLAS behind numpy).
"""

from __future__ import annotations

import argparse
import math
import time

from ncbench.runtime import prepare_process_env

prepare_process_env()  # before torch (or numpy, sklearn) loads its OpenMP, which reads OMP_WAIT_POLICY once

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from threadpoolctl import threadpool_limits

from ncbench.episodes import sample_episodes
from ncbench.heads import LogisticHead, NCCHead, RidgeHead, episode_accuracy
from ncbench.stats import mean_ci95


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


def sklearn_loop(make, feats, ep, n, normalise=False):
    """Per-episode fit/predict of ``make()`` on the first ``n`` episodes -> predictions [n, n_q]."""
    def prep(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True) if normalise else x

    return np.stack([make().fit(prep(feats[ep.support[e]]), ep.support_labels[e]).predict(prep(feats[ep.query[e]]))
                     for e in range(n)])


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
    p.add_argument("--subset", type=int, default=500, help="episodes timed in the scikit-learn loops")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="every timing is the fastest of this many runs")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    subset = min(a.subset, a.episodes)

    feats, labels = features(a.classes, a.per_class, a.dim, a.noise, a.seed)
    feats64 = feats.astype(np.float64)
    ep = sample_episodes(labels, np.arange(a.classes), a.ways, a.shots, a.queries, a.episodes, a.seed)
    print(f"{a.episodes} episodes, {a.ways}-way {a.shots}-shot {a.queries}-query, features {feats.shape} float32, "
          f"{a.threads} thread(s); scikit-learn loops timed on {subset} episodes and scaled to {a.episodes}; "
          f"times are the fastest of {a.repeat} runs")

    def run(head):
        (acc, pred), sec = timed(lambda: episode_accuracy(head, feats, ep.support, ep.support_labels, ep.query,
                                                          ep.query_labels, return_predictions=True), a.repeat)
        mean, ci, _ = mean_ci95(acc)
        print(f"  {type(head).__name__:13s} batched: {a.episodes / sec:10.0f} episodes/s ({sec:.2f} s), "
              f"acc {mean:.4f} ± {ci:.4f}")
        return pred, sec

    with threadpool_limits(a.threads):
        ridge_pred, ridge_s = run(RidgeHead(a.alpha))
        sk_pred, sk_s = timed(lambda: sklearn_loop(lambda: RidgeClassifier(alpha=a.alpha), feats64, ep, subset),
                              a.repeat)
        sk_rate = subset / sk_s
        same = bool((sk_pred == ridge_pred[:subset]).all())
        print(f"  RidgeClassifier loop:  {sk_rate:10.0f} episodes/s (estimated {a.episodes / sk_rate:.1f} s for all)")
        print(f"  ridge speed-up: {a.episodes / ridge_s / sk_rate:.1f}x (target >= 20x); "
              f"predictions identical on {subset} episodes: {same}")

        run(NCCHead())
        log_pred, log_s = run(LogisticHead())
        lr_pred, lr_s = timed(lambda: sklearn_loop(lambda: LogisticRegression(C=1.0, max_iter=1000), feats64, ep,
                                                   subset, normalise=True), a.repeat)
        lr_rate = subset / lr_s
        agree = float((lr_pred == log_pred[:subset]).mean())
        print(f"  LogisticRegression loop (RFS, max_iter=1000): {lr_rate:.0f} episodes/s; logistic speed-up "
              f"{a.episodes / log_s / lr_rate:.1f}x; query predictions agreeing: {agree:.4%}")


if __name__ == "__main__":
    main()
