"""Speed and memory of ncbench's collapse metrics: against the memory floor, torch.matmul, a per-pair loop,
and rhubarbwu/neural-collapse when it is installed.

Default size: K = 1,000 classes, N = 100,000 samples, m = 512 (float32 features, Gaussian classes);
T = N/4 test samples. Prints, from one run:
  * the streamed path (ClassStatistics + ReferencedStatistics over batches generated on the fly, so
    the full feature matrix never exists): time and peak resident memory above the RSS before it;
  * the floor of one streaming pass over the same float32 [N, m] features, measured in the same run:
    ``features.sum()`` (a bare read) and ``index_add_`` of the rows into K class sums (a float32
    segment sum: the one pass any CDNV needs), and ncbench's ``cdnv`` as a multiple of it (target ≤ 2×);
    beside them the same class sums accumulated in float64 (cache-sized chunks converted, then
    ``index_add_``), the cheapest pass that meets DESIGN.md's float64 rule;
  * ``collapse_report`` (CDNV, NC1–NC4, NCC accuracy, classifier accuracies, strong / weak test collapse,
    NC1 of class subsets) as achieved GFLOP/s against torch.matmul's GFLOP/s on the [N, m] × [m, K] shape
    (float64, the arithmetic the metrics use, and float32), target ≥ 50 %. FLOPs counted: the products
    every implementation needs, 2·m·(2K + r)·(N + T) (nearest-mean scores and classifier logits, 2·m·K
    each per sample; NC1 / strong-collapse projection on the r = min(K − 1, m) between-class directions,
    2·m·r per sample), plus 2·m·(s − 1)·N_S per class subset of s classes (N_S its samples); element-wise
    work, class sums and eigendecompositions are not counted (they are O(N·m) or independent of N);
  * rhubarbwu/neural-collapse (float64 accumulators: means, variance norms, CDNV) when installed
    (``pip install git+https://github.com/rhubarbwu/neural-collapse``; it is not on PyPI), else one line
    saying the row is skipped and why;
  * a straightforward per-pair CDNV loop (each pair's two class means and variances from their
    samples), and a kinder loop (per-class statistics once, then the K(K−1)/2 pairs), in numpy float64;
  * the ratios and the agreement of the numbers.

``--extrapolate`` instead times the streamed path (train and test passes, ``report``) at a few N for one
(K, m), each size in a fresh process, fits t(N) = a + b·N by least squares and extrapolates to ImageNet
scale (N = 1,281,167), with the peak RSS measured beside the memory the accumulators hold (from shapes).

    python benchmarks/metrics.py                       # full size (minutes on 2 CPU cores)
    python benchmarks/metrics.py --loop-pairs 20000    # extrapolate the per-pair loop from 20,000 pairs
    python benchmarks/metrics.py --device cuda         # ncbench on a GPU (loops stay on the CPU)
    python benchmarks/metrics.py --small               # K=100, N=10,000, m=64: seconds
    python benchmarks/metrics.py --extrapolate         # K=1,000, m=2,048, N = 8k, 16k, 33k -> 1.28M
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from ncbench.runtime import prepare_process_env

prepare_process_env()  # before torch (or numpy, sklearn) loads its OpenMP, which reads OMP_WAIT_POLICY once

import numpy as np
import torch

import ncbench.metrics as M
from ncbench.metrics import kernels

IMAGENET_N = 1_281_167


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


def best_of(repeat: int, fn, sync=lambda: None) -> tuple[object, float]:
    """(result, fastest wall time of ``repeat`` calls): the least disturbed run on a shared machine."""
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return out, best


def report_flops(K: int, m: int, n_train: int, n_test: int, subset_rows: list[int], subset_size: int) -> float:
    """FLOPs the collapse report must spend in products (see the module docstring for the formula)."""
    r = min(K - 1, m)
    return 2.0 * m * (2 * K + r) * (n_train + n_test) + sum(2.0 * m * (subset_size - 1) * n for n in subset_rows)


def accumulator_bytes(K: int, m: int, batch_size: int, within_scatter: bool = False) -> dict[str, int]:
    """Bytes the streamed path holds, from the shapes (float64 = 8 bytes), besides the caller's batch:
    pass 1 state (counts, sq [K], means [K, m]) and its per-update temporaries (reference, sums, shift
    [K, m] and the SHIFT_CHUNK_ELEMENTS-value chunk buffer); pass 2 state (means, classifier [K, m], Σ_B eigenvectors
    [m, r]) and its row-chunk intermediates (about 6 of [rows, max(m, K)], rows ≤ batch_size and
    rows·max(m, K) ≤ CHUNK_ELEMENTS), and the test pass's means and eigenvectors;
    ``within_scatter`` adds the [m, m] Σ_W scatter and its per-batch copy."""
    r = min(K - 1, m)
    pass1 = 8 * (2 * K + K * m) + 8 * (3 * K * m + kernels.SHIFT_CHUNK_ELEMENTS)
    if within_scatter:
        pass1 += 8 * 2 * m * m
    width = max(m, K)
    rows = min(batch_size, max(1, kernels.CHUNK_ELEMENTS // width))
    pass2 = 8 * (2 * K * m + m * r) + 8 * 6 * rows * width
    test_pass2 = 8 * (K * m + m * r)  # train.referenced() for the test batches: means and eigenvectors
    return {"pass1": pass1, "pass2": pass2 + test_pass2, "total": pass1 + pass2 + test_pass2}


def rhubarbwu_row(features: torch.Tensor, labels: torch.Tensor, K: int, repeat: int, ours: float) -> None:
    """Time rhubarbwu/neural-collapse's float64 accumulators (means, variance norms, CDNV) if installed."""
    try:
        from neural_collapse.accumulate import MeanAccumulator, VarNormAccumulator
        from neural_collapse.measure import variability_cdnv
    except ImportError as err:
        print(f"rhubarbwu/neural-collapse: row skipped ({err.name or err} not installed; not on PyPI: "
              "pip install git+https://github.com/rhubarbwu/neural-collapse)")
        return
    device, m = str(features.device), features.shape[1]

    def run():
        mean_accum = MeanAccumulator(K, m, device)
        mean_accum.accumulate(features, labels)
        means, _ = mean_accum.compute()
        var_accum = VarNormAccumulator(K, m, device, M=means)
        var_accum.accumulate(features, labels, means)
        var_norms, _ = var_accum.compute()
        return float(variability_cdnv(means, var_norms, tile_size=64))

    try:
        value, seconds = best_of(repeat, run)
    except Exception as err:  # an API that changed since this was written
        print(f"rhubarbwu/neural-collapse: row skipped ({type(err).__name__}: {err})")
        return
    print(f"rhubarbwu/neural-collapse cdnv:             {seconds:8.3f} s   ncbench is {seconds / ours:.1f}x faster "
          f"(target >= 5x at K=1000, N=100k, m=512); its value {value:.6g} (its own CDNV normalisation)")


def make_data(K: int, N: int, m: int, seed: int, batch_size: int):
    gen = torch.Generator().manual_seed(seed)
    means = 4.0 * torch.randn(K, m, generator=gen) / m**0.25
    weight, bias = torch.randn(K, m, generator=gen), torch.randn(K, generator=gen)
    batches = [slice(s, min(N, s + batch_size)) for s in range(0, N, batch_size)]
    return means, weight, bias, batches


def streamed(means, weight, bias, batches, test_batches, seed: int, device, sync) -> tuple[dict, float, float]:
    """Both passes over train batches (and test batches) made on the fly; (report, seconds, generating)."""
    generating = [0.0]

    def batch(i: int, rows: slice, offset: int):
        start = time.perf_counter()
        f, y = make_batch(offset + i, rows, means, seed)
        f, y = f.to(device), y.to(device)
        generating[0] += time.perf_counter() - start
        return f, y

    start = time.perf_counter()
    train = M.ClassStatistics(within_scatter=False)
    for i, rows in enumerate(batches):
        train.update(*batch(i, rows, 0))
    train_pass = train.referenced(weight, bias)
    for i, rows in enumerate(batches):
        train_pass.update(*batch(i, rows, 0))
    test = test_pass = None
    if test_batches:
        test, test_pass = M.ClassStatistics(within_scatter=False), train.referenced()
        for i, rows in enumerate(test_batches):
            f, y = batch(i, rows, 10**6)
            test.update(f, y)
            test_pass.update(f, y)
    out = M.report(train, train_pass, test, test_pass)
    sync()
    return out, time.perf_counter() - start - generating[0], generating[0]


def extrapolate_child(args) -> None:
    """One size of ``--extrapolate``, in its own process: prints a JSON line."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    K, N, m = args.classes, args.samples, args.dim
    means, weight, bias, batches = make_data(K, N, m, args.seed, args.batch_size)
    tiny, tw, tb, tbatches = make_data(10, 200, 16, 0, 100)
    streamed(tiny, tw, tb, tbatches, tbatches[:1], 0, device, sync)  # library initialisation
    rss_before = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    test_batches = [slice(s, min(N // 4, s + args.batch_size)) for s in range(0, N // 4, args.batch_size)]
    _, seconds, generating = streamed(means, weight.to(device), bias.to(device), batches, test_batches, args.seed,
                                      device, sync)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else peak_rss_mib() - rss_before)
    print(json.dumps({"N": N, "seconds": seconds, "generating": generating, "peak_mib": peak}))


def extrapolate(args) -> None:
    """Time the streamed path at a few N (fresh process each), fit t = a + b·N, extrapolate to ImageNet."""
    K, m = args.classes, args.dim
    sizes = args.extrapolate_sizes
    print(f"streamed path (train pass 1 + pass 2, test N/4 passes, report), K={K} m={m}, batches of "
          f"{args.batch_size}, each size in a fresh process on {args.device}, {torch.get_num_threads()} threads")
    rows = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--child", "--classes", str(K), "--samples", str(n), "--dim", str(m),
               "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(f"  N={n:>9,}: {rows[-1]['seconds']:8.2f} s (+{rows[-1]['generating']:.2f} s making batches)   "
              f"peak {'GPU memory' if args.device.startswith('cuda') else 'RSS above start'} "
              f"{rows[-1]['peak_mib']:7.0f} MiB")
    n = np.array([r["N"] for r in rows], dtype=float)
    t = np.array([r["seconds"] for r in rows])
    b, a = np.polyfit(n, t, 1) if len(n) > 1 else (t[0] / n[0], 0.0)
    held = accumulator_bytes(K, m, args.batch_size)
    batch = 3 * args.batch_size * m * 4  # making a batch: μ_y, the noise and their sum (float32)
    print(f"model t(N) = a + b·N fitted on those sizes: a = {a:.3f} s, b = {b * 1e6:.3f} µs per sample "
          f"(train + a quarter as many test samples)")
    print(f"extrapolated to ImageNet scale K={K} N={IMAGENET_N:,} m={m}: {a + b * IMAGENET_N:8.1f} s "
          f"({(a + b * IMAGENET_N) / 60:.1f} min) on this machine")
    print(f"memory held (from the shapes, constant in N): pass 1 {held['pass1'] / 2**20:.0f} MiB, pass 2 "
          f"{held['pass2'] / 2**20:.0f} MiB, + making one float32 batch {batch / 2**20:.0f} MiB = "
          f"{(held['total'] + batch) / 2**20:.0f} MiB; measured peak {max(r['peak_mib'] for r in rows):.0f} MiB "
          f"(no [m, m] Σ_W: NC1 comes from pass 2's projections; ClassStatistics(within_scatter=True) would "
          f"add {2 * 8 * m * m / 2**20:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="best of R runs for the in-memory timings")
    parser.add_argument("--device", default="cpu", help="where ncbench runs (the loops always run in numpy)")
    parser.add_argument("--loop-pairs", type=int, default=0,
                        help="time the per-pair loop on its first P pairs only and extrapolate (0: all pairs)")
    parser.add_argument("--small", action="store_true", help="K=100, N=10,000, m=64")
    parser.add_argument("--extrapolate", action="store_true",
                        help="only the ImageNet-scale extrapolation of the streamed path (defaults K=1000, m=2048)")
    parser.add_argument("--extrapolate-sizes", type=int, nargs="+", default=[8_192, 16_384, 32_768],
                        help="the N values timed for --extrapolate")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return extrapolate_child(args)
    if args.extrapolate:
        if "--dim" not in sys.argv:
            args.dim = 2048
        if "--batch-size" not in sys.argv:
            args.batch_size = 4096
        return extrapolate(args)
    if args.small:
        args.classes, args.samples, args.dim, args.batch_size = 100, 10_000, 64, 2_000
    K, N, m = args.classes, args.samples, args.dim
    device = torch.device(args.device)
    means, weight, bias, batches = make_data(K, N, m, args.seed, args.batch_size)
    weight, bias = weight.to(device), bias.to(device)
    test_batches = [slice(s, min(N // 4, s + args.batch_size)) for s in range(0, N // 4, args.batch_size)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"K={K} N={N} (+{N // 4} test) m={m} float32 features, {len(batches)} batches of {args.batch_size}; "
          f"ncbench on {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    # warm-up on 2K rows (library and kernel initialisation are not charged to the first timing)
    warm_f, warm_y = make_batch(0, slice(0, 2 * K), means, args.seed)
    M.collapse_report(warm_f.to(device), warm_y.to(device), weight=weight, bias=bias)

    # 1. streamed path first, while the full matrix does not exist yet
    rss_before = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    streamed_out, t_stream, generating = streamed(means, weight, bias, batches, test_batches, args.seed, device, sync)
    peak = (f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB" if device.type == "cuda"
            else f"peak RSS +{peak_rss_mib() - rss_before:.0f} MiB above the RSS before it")
    print(f"streamed report (train 2 passes, test 2 passes):{t_stream:8.2f} s (+{generating:.2f} s making the batches)"
          f"   {peak}")
    held = accumulator_bytes(K, m, args.batch_size)
    print(f"    (one float32 batch {args.batch_size * m * 4 / 2**20:.0f} MiB, float64 accumulators and temporaries "
          f"{held['total'] / 2**20:.0f} MiB from the shapes; the full matrix is {N * m * 4 / 2**20:.0f} MiB)")

    # 2. the in-memory data: train [N, m] and test [N/4, m]
    def assemble(parts_of):
        parts = [make_batch(i + parts_of[1], rows, means, args.seed) for i, rows in enumerate(parts_of[0])]
        return torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts])

    features, labels = assemble((batches, 0))
    test_f, test_y = assemble((test_batches, 10**6)) if test_batches else (None, None)
    on_device = features.to(device), labels.to(device)
    test_on = (test_f.to(device), test_y.to(device)) if test_f is not None else (None, None)
    sync()

    # 2a. the floor of one streaming pass over the same float32 features, and CDNV
    f_dev, y_dev = on_device
    _, t_read = best_of(args.repeat, lambda: f_dev.sum(), sync)
    _, t_segment = best_of(args.repeat, lambda: torch.zeros(K, m, device=device).index_add_(0, y_dev, f_dev), sync)
    codes = y_dev  # labels are 0..K-1 here

    def float64_segment_sum():  # the cheapest class sums accumulated in float64: convert a chunk, index_add_ it
        sums = torch.zeros(K, m, dtype=torch.float64, device=device)
        step = kernels.SHIFT_CHUNK_ELEMENTS // m or 1
        buffer = torch.empty(step, m, dtype=torch.float64, device=device)
        for s in range(0, N, step):
            chunk = buffer[: min(N, s + step) - s].copy_(f_dev[s:s + step])
            sums.index_add_(0, codes[s:s + step], chunk)
        return sums

    _, t_segment64 = best_of(args.repeat, float64_segment_sum, sync)
    value, t_cdnv = best_of(args.repeat, lambda: M.cdnv(*on_device), sync)
    print(f"floor: float32 features.sum()              {t_read:8.3f} s  (a bare read of the {N * m * 4 / 2**20:.0f} MiB)")
    print(f"floor: float32 index_add_ into K class sums {t_segment:8.3f} s  (one segment-sum pass)")
    print(f"       float64 class sums (chunk -> float64, index_add_) {t_segment64:8.3f} s  (the same pass accumulated in "
          f"float64)")
    print(f"ncbench cdnv:                               {t_cdnv:8.3f} s  = {t_cdnv / t_segment:.1f}x the index_add_ floor "
          f"(target <= 2x), {t_cdnv / t_read:.1f}x the bare read, {t_cdnv / t_segment64:.1f}x the float64 class sums")

    # 2b. the full report as GFLOP/s against torch.matmul on the same shape
    full, t_report = best_of(args.repeat, lambda: M.collapse_report(*on_device, *test_on, weight=weight, bias=bias),
                             sync)
    subset_rows = [int(np.isin(labels.numpy(), s).sum())
                   for s in M.class_subsets(np.unique(labels.numpy()))] if "nc1_subset5" in full else []
    flops = report_flops(K, m, N, 0 if test_f is None else test_f.shape[0], subset_rows, min(K, 5))
    w64 = weight.to(torch.float64)
    f64 = f_dev.to(torch.float64)
    _, t_mm64 = best_of(args.repeat, lambda: f64 @ w64.T, sync)
    del f64
    _, t_mm32 = best_of(args.repeat, lambda: f_dev @ weight.T, sync)
    mm64, mm32 = 2.0 * N * m * K / t_mm64 / 1e9, 2.0 * N * m * K / t_mm32 / 1e9
    achieved = flops / t_report / 1e9
    print(f"ncbench collapse_report (CDNV+NC1-4+NCC+test collapse): {t_report:8.2f} s   {flops / 1e9:.1f} GFLOP "
          f"= 2m(2K+r)(N+T) + subsets -> {achieved:.1f} GFLOP/s")
    print(f"torch.matmul [N,m]x[m,K]: float64 {mm64:.1f} GFLOP/s, float32 {mm32:.1f} GFLOP/s -> report at "
          f"{100 * achieved / mm64:.0f} % of float64 matmul (target >= 50 %), {100 * achieved / mm32:.0f} % of float32")

    # 3. rhubarbwu/neural-collapse, when installed
    rhubarbwu_row(f_dev.to(torch.float64), y_dev, K, args.repeat, t_cdnv)

    # 4. the loops, in numpy float64 on the CPU
    x, y = features.numpy(), labels.numpy()
    (loop_value, done), t_loop = timed(per_pair_cdnv, x, y, args.loop_pairs)
    n_pairs = K * (K - 1) // 2
    t_loop_all = t_loop * n_pairs / done
    note = "" if done == n_pairs else f"  (extrapolated from {done} pairs timed: {t_loop:.2f} s)"
    print(f"per-pair loop cdnv:                         {t_loop_all:8.2f} s{note}")
    kinder, t_kinder = timed(per_class_then_pair_cdnv, x, y)
    print(f"per-class stats + pair loop cdnv:           {t_kinder:8.2f} s")
    print(f"ratio per-pair loop / ncbench report:       {t_loop_all / t_report:8.1f}x   (target >= 50x)")
    print(f"ratio per-pair loop / ncbench cdnv:         {t_loop_all / t_cdnv:8.1f}x")
    print(f"ratio per-class+pair loop / ncbench cdnv:   {t_kinder / t_cdnv:8.1f}x")
    print(f"cdnv: ncbench {value:.12g}  per-class loop {kinder:.12g}  rel diff {abs(value - kinder) / kinder:.1e}")
    if done == n_pairs:
        print(f"cdnv: per-pair loop {loop_value:.12g}  rel diff {abs(value - loop_value) / loop_value:.1e}")
    worst = max(abs(streamed_out[k] - full[k]) / max(abs(full[k]), 1e-300) for k in streamed_out)
    print(f"streamed vs functional: max rel diff over {len(streamed_out)} metrics {worst:.1e}")
    print("metrics:", {k: round(v, 6) for k, v in full.items()})


if __name__ == "__main__":
    main()
