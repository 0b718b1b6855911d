"""Speed and memory of ncbench's collapse metrics against a straightforward per-pair loop.

Default size: K = 1,000 classes, N = 100,000 samples, m = 512 (float32 features, Gaussian classes).
Prints, from one run:
  * the streamed path (ClassStatistics + ReferencedStatistics over batches generated on the fly, so
    the full feature matrix never exists): time and peak resident memory above the RSS before it;
  * ncbench's functional CDNV alone and collapse_report (CDNV + NC1–NC4 + NCC accuracy) on the full matrix;
  * a straightforward per-pair CDNV loop (each pair's two class means and variances from their
    samples), and a kinder loop (per-class statistics once, then the K(K−1)/2 pairs), in numpy float64;
  * the ratios (target ≥ 50×) and the agreement of the numbers.

    python benchmarks/metrics.py                       # full size (minutes on 2 CPU cores)
    python benchmarks/metrics.py --loop-pairs 20000    # extrapolate the per-pair loop from 20,000 pairs
    python benchmarks/metrics.py --device cuda         # ncbench on a GPU (loops stay on the CPU)
    python benchmarks/metrics.py --small               # K=100, N=10,000, m=64: seconds
"""

from __future__ import annotations

import argparse
import resource
import time

from ncbench.runtime import prepare_process_env

prepare_process_env()  # before torch (or numpy, sklearn) loads its OpenMP, which reads OMP_WAIT_POLICY once

import numpy as np
import torch

import ncbench.metrics as M


def rss_mib() -> float:
    """Current resident set size in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_batch(index: int, rows: slice, means: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic batch: labels i mod K for rows i, features N(μ_y, I) in float32."""
    gen = torch.Generator().manual_seed(seed * 100_003 + index)
    labels = torch.arange(rows.start, rows.stop) % means.shape[0]
    return means[labels] + torch.randn(len(labels), means.shape[1], generator=gen), labels


def per_pair_cdnv(features: np.ndarray, labels: np.ndarray, max_pairs: int = 0) -> tuple[float, int]:
    """The straightforward per-pair loop, the formula read literally: for each class pair, the two
    classes' means and variances from their samples, then the pair's term. Returns (mean over the pairs
    done, number of pairs done); ``max_pairs`` > 0 stops early (the caller extrapolates the time)."""
    order = np.argsort(labels, kind="stable")
    per_class = np.split(features[order], np.cumsum(np.bincount(labels))[:-1])
    total, pairs = 0.0, 0
    for i in range(len(per_class)):
        for j in range(i + 1, len(per_class)):
            fi, fj = per_class[i].astype(np.float64), per_class[j].astype(np.float64)
            mi, mj = fi.mean(0), fj.mean(0)
            var_i, var_j = np.mean(np.sum((fi - mi) ** 2, axis=1)), np.mean(np.sum((fj - mj) ** 2, axis=1))
            total += (var_i + var_j) / (2 * np.sum((mi - mj) ** 2))
            pairs += 1
            if pairs == max_pairs:
                return total / pairs, pairs
    return total / pairs, pairs


def per_class_then_pair_cdnv(features: np.ndarray, labels: np.ndarray) -> float:
    """A kinder loop: per-class statistics once (boolean masks), then a Python loop over the pairs."""
    classes = np.unique(labels)
    means, variances = [], []
    for c in classes:
        fc = features[labels == c].astype(np.float64)
        mu = fc.mean(0)
        means.append(mu)
        variances.append(np.mean(np.sum((fc - mu) ** 2, axis=1)))
    total, pairs = 0.0, 0
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            total += (variances[i] + variances[j]) / (2 * np.sum((means[i] - means[j]) ** 2))
            pairs += 1
    return total / pairs


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where ncbench runs (the loops always run in numpy)")
    parser.add_argument("--loop-pairs", type=int, default=0,
                        help="time the per-pair loop on its first P pairs only and extrapolate (0: all pairs)")
    parser.add_argument("--small", action="store_true", help="K=100, N=10,000, m=64")
    args = parser.parse_args()
    if args.small:
        args.classes, args.samples, args.dim, args.batch_size = 100, 10_000, 64, 2_000
    K, N, m = args.classes, args.samples, args.dim
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    means = 4.0 * torch.randn(K, m, generator=gen) / m**0.25
    weight, bias = torch.randn(K, m, generator=gen).to(device), torch.randn(K, generator=gen).to(device)
    batches = [slice(s, min(N, s + args.batch_size)) for s in range(0, N, args.batch_size)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"K={K} N={N} m={m} float32 features, {len(batches)} batches of {args.batch_size}; ncbench on {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    generating = [0.0]  # seconds spent making batches inside the streamed timing

    def batch(i: int, rows: slice):
        start = time.perf_counter()
        f, y = make_batch(i, rows, means, args.seed)
        f, y = f.to(device), y.to(device)
        generating[0] += time.perf_counter() - start
        return f, y

    # warm-up on 2K rows (library and kernel initialisation are not charged to the first timing)
    warm_f, warm_y = make_batch(0, slice(0, 2 * K), means, args.seed)
    M.collapse_report(warm_f.to(device), warm_y.to(device), weight=weight, bias=bias)

    # 1. streamed path first, while the full matrix does not exist yet
    rss_before = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    train = M.ClassStatistics(within_scatter=False)
    for i, rows in enumerate(batches):
        train.update(*batch(i, rows))
    train_pass = train.referenced(weight, bias)
    for i, rows in enumerate(batches):
        train_pass.update(*batch(i, rows))
    streamed = M.report(train, train_pass)
    sync()
    t_stream = time.perf_counter() - start
    peak = (f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB" if device.type == "cuda"
            else f"peak RSS +{peak_rss_mib() - rss_before:.0f} MiB above the RSS before it")
    print(f"streamed CDNV+NC1-4 (2 passes over {len(batches)} batches): {t_stream - generating[0]:8.2f} s "
          f"(+{generating[0]:.2f} s making the batches)   {peak}")
    print(f"    (one float32 batch {args.batch_size * m * 4 / 2**20:.0f} MiB, float64 state "
          f"{(K * m + 2 * K + m * min(K - 1, m)) * 8 / 2**20:.0f} MiB; the full matrix is {N * m * 4 / 2**20:.0f} MiB)")

    # 2. functional forms on the full matrix
    parts = [make_batch(i, rows, means, args.seed) for i, rows in enumerate(batches)]
    features, labels = torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts])
    del parts
    on_device = features.to(device), labels.to(device)
    sync()
    value, t_cdnv = timed(lambda: (M.cdnv(*on_device), sync())[0])
    full, t_report = timed(lambda: (M.collapse_report(*on_device, weight=weight, bias=bias), sync())[0])
    print(f"ncbench cdnv:                               {t_cdnv:8.2f} s")
    print(f"ncbench collapse_report (CDNV+NC1-4+NCC):   {t_report:8.2f} s")

    # 3. the loops, in numpy float64 on the CPU
    x, y = features.numpy(), labels.numpy()
    (loop_value, done), t_loop = timed(per_pair_cdnv, x, y, args.loop_pairs)
    n_pairs = K * (K - 1) // 2
    t_loop_all = t_loop * n_pairs / done
    note = "" if done == n_pairs else f"  (extrapolated from {done} pairs timed: {t_loop:.2f} s)"
    print(f"per-pair loop cdnv:                         {t_loop_all:8.2f} s{note}")
    kinder, t_kinder = timed(per_class_then_pair_cdnv, x, y)
    print(f"per-class stats + pair loop cdnv:           {t_kinder:8.2f} s")
    print(f"ratio per-pair loop / ncbench CDNV+NC1-4:   {t_loop_all / t_report:8.1f}x   (target >= 50x)")
    print(f"ratio per-pair loop / ncbench cdnv:         {t_loop_all / t_cdnv:8.1f}x")
    print(f"ratio per-class+pair loop / ncbench cdnv:   {t_kinder / t_cdnv:8.1f}x")
    print(f"cdnv: ncbench {value:.12g}  per-class loop {kinder:.12g}  rel diff {abs(value - kinder) / kinder:.1e}")
    if done == n_pairs:
        print(f"cdnv: per-pair loop {loop_value:.12g}  rel diff {abs(value - loop_value) / loop_value:.1e}")
    worst = max(abs(streamed[k] - full[k]) / max(abs(full[k]), 1e-300) for k in streamed)
    print(f"streamed vs functional: max rel diff over {len(streamed)} metrics {worst:.1e}")
    print("metrics:", {k: round(v, 6) for k, v in full.items()})


if __name__ == "__main__":
    main()
