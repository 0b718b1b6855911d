"""Pretraining and feature-extraction throughput against bare PyTorch loops, and collapse on glyphs.

    python benchmarks/pretrain.py                      # conv4, glyphs, 20 source classes
    python benchmarks/pretrain.py --skip-collapse --epochs 2

    python benchmarks/pretrain.py --skip-collapse --efficiency-models conv4 resnet12-w16 resnet12

Prints images/s of ``ncbench.pretrain.pretrain`` (tracking off) next to a bare
forward/backward/step loop on the same model, data, batch size and number of steps (target ratio
>= 0.9), then ``ncbench.backbones.extract`` next to a bare ``model(x)`` loop, (best of --repeats runs each), then the tracked
source-train collapse curve of a conv4 run (accuracy, CDNV, NC1-NC4, effective depth).

Then, for each of ``--efficiency-models``, how well a training step uses the CPU: images/s and achieved
FLOP/s of one SGD step (forward + backward FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``)
against the *conv peak*, the FLOP/s of the same convolutions (every conv layer's shape) run forward +
backward at ``--peak-batch`` images, timed in the same run. Then the options tried to go faster, each as a
ratio of step (or extraction) time to the plain one, with whether its results are bit-identical:
channels-last memory format, ``torch.compile``, bf16 autocast (only timed where the CPU has native bf16,
or with ``--try-bf16``), and larger feature-extraction batches.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path
from typing import Callable

from ncbench.runtime import prepare_process_env

prepare_process_env()  # before torch (or numpy, sklearn) loads its OpenMP, which reads OMP_WAIT_POLICY once

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ncbench.backbones import build_backbone
from ncbench.checkpoint import load_checkpoint
from ncbench.data import TRAIN, load_dataset
from ncbench.backbones import extract
from ncbench.data.preprocessing import preprocessing_of, to_input
from ncbench.pretrain import PretrainConfig, pretrain
from ncbench.tracking import CollapseTracker


def bare_training(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, config: PretrainConfig, k: int) -> float:
    """Seconds for the same number of SGD steps as pretrain, on pre-normalised x: [N, C, H, W]."""
    head = torch.nn.Linear(model.feature_dim, k)
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(0)
    bs = min(config.batch_size, len(y))
    model.train()
    start = time.perf_counter()
    for _ in range(config.epochs):
        order = torch.randperm(len(y), generator=generator)
        for b in range(len(y) // bs):
            idx = order[b * bs : (b + 1) * bs]
            loss = torch.nn.functional.cross_entropy(head(model(x[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def bare_inference(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> float:
    model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in x.split(batch_size):
            model(batch)
    return time.perf_counter() - start


# --efficiency-models: name -> (registered backbone, options), as the task files' zoo names them
MODELS = {"conv4": ("conv4", {}), "resnet12": ("resnet12", {}),
          "resnet12-w16": ("resnet12", {"widths": [16, 32, 64, 128]}), "tiny-conv": ("tiny-conv", {})}


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Fastest wall-clock time of ``repeats`` calls of ``fn`` (after one untimed warm-up call)."""
    return best_times(fn, repeats)[0]


def best_times(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(fastest wall-clock seconds, fewest CPU seconds of this process, all threads) of ``repeats`` calls of
    ``fn`` after one untimed warm-up call. On a busy machine the CPU time is the steadier figure."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def flops_of(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call of ``fn``, counted by torch's FlopCounterMode (matmuls and
    convolutions, forward and backward; 2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class Step:
    """One SGD step of ``model`` + a linear head on x: [B, C, H, W], y: [B] (cross-entropy)."""

    def __init__(self, model: torch.nn.Module, k: int, x: torch.Tensor, y: torch.Tensor):
        self.model, self.x, self.y = model, x, y
        torch.manual_seed(0)  # the same head in every Step of a model: their gradients are comparable
        self.head = torch.nn.Linear(model.feature_dim, k)
        self.opt = torch.optim.SGD([*model.parameters(), *self.head.parameters()], lr=0.01, momentum=0.9)
        model.train()

    def loss(self) -> torch.Tensor:
        return F.cross_entropy(self.head(self.model(self.x)), self.y)

    def __call__(self) -> None:
        loss = self.loss()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def forward_backward(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.loss().backward()


Layer = tuple[torch.nn.Conv2d, torch.Size, bool]


def conv_layers(model: torch.nn.Module, x: torch.Tensor) -> list[Layer]:
    """(conv layer, its input shape [B, C, H, W], whether training computes its input's gradient) for every
    Conv2d call of one forward pass of x (the first layer's input, the images, needs none)."""
    seen: list[Layer] = []
    hooks = [m.register_forward_pre_hook(lambda m, inp: seen.append((m, inp[0].shape, inp[0].requires_grad)))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    model(x)
    for h in hooks:
        h.remove()
    return seen


def conv_peak(layers: list[Layer], batch: int, repeats: int) -> tuple[float, float, float]:
    """(FLOP/s over all layers, FLOP per CPU-second over all layers, best layer's FLOP/s) of each conv
    layer's forward + backward (the gradients training computes) on a batch of ``batch`` images of its input
    shape [batch, C, H, W]: what this CPU achieves on these convolutions with nothing else in the way."""
    total_flops, total_s, total_cpu, best = 0, 0.0, 0.0, 0.0
    for m, shape, input_grad in layers:
        xi = torch.randn(batch, *shape[1:], requires_grad=input_grad)
        w = m.weight.detach().clone().requires_grad_(True)
        grad_out = torch.ones_like(F.conv2d(xi.detach(), w.detach(), None, m.stride, m.padding, m.dilation, m.groups))

        def fwd_bwd() -> None:
            F.conv2d(xi, w, None, m.stride, m.padding, m.dilation, m.groups).backward(grad_out)

        flops = flops_of(fwd_bwd)
        seconds, cpu = best_times(fwd_bwd, repeats)
        total_flops, total_s, total_cpu = total_flops + flops, total_s + seconds, total_cpu + cpu
        best = max(best, flops / seconds)
    return total_flops / total_s, total_flops / total_cpu, best


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), per /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> str:
    """'bit-identical' or the largest absolute difference between two lists of tensors."""
    if all(torch.equal(u, v) for u, v in zip(a, b)):
        return "bit-identical"
    return f"max |diff| {max(float((u - v).abs().max()) for u, v in zip(a, b)):.2e}"


def _grads(step: Step) -> list[torch.Tensor]:
    """Loss and parameter gradients of one forward + backward pass (no optimizer step), contiguous copies."""
    step.forward_backward()
    return [step.loss().detach()] + [p.grad.detach().contiguous().clone()
                                     for p in [*step.model.parameters(), *step.head.parameters()]]


class _Skipped(Exception):
    """An option the command line said not to try."""


def efficiency(name: str, ds, images: np.ndarray, pp: dict, k: int, batch_size: int, steps: int, peak_batch: int,
               try_bf16: bool, try_compile: bool) -> None:
    """Print images/s and FLOP/s of a training step of zoo model ``name`` against the conv peak, then the
    options tried (each a time ratio against the plain step; > 1 is faster). ``images``: uint8 [N, H, W, C]."""
    backbone, options = MODELS[name]
    build = lambda: build_backbone(backbone, in_channels=ds.channels, image_size=ds.image_size, **options)
    torch.manual_seed(0)
    x = to_input(torch.from_numpy(images[:batch_size]), pp)
    y = torch.arange(len(x)) % k
    model = build()
    step = Step(model, k, x, y)
    flops = flops_of(step.forward_backward)
    seconds, cpu = best_times(step, steps)
    peak, peak_cpu, best_layer = conv_peak(conv_layers(model, x), peak_batch, steps)
    print(f"\n{name}: batch {len(x)} of {ds.image_size[0]}x{ds.image_size[1]}x{ds.channels}, "
          f"{flops / 1e9:.2f} GFLOP per step (forward + backward)")
    print(f"  step        {len(x) / seconds:9.1f} img/s   {flops / seconds / 1e9:7.1f} GFLOP/s   "
          f"= {flops / seconds / peak:.2f} of the conv peak ({peak / 1e9:.1f} GFLOP/s over its conv layers at "
          f"batch {peak_batch}; best layer {best_layer / 1e9:.1f})")
    print(f"  per CPU-second: step {flops / cpu / 1e9:.1f} GFLOP, conv peak {peak_cpu / 1e9:.1f}: "
          f"{flops / cpu / peak_cpu:.2f} of the peak (steadier than wall time on a busy machine)")

    # channels-last: same weights, same batch; numerics compared on one forward + backward
    reference = _grads(Step(_copy(model, build), k, x, y))
    cl_model = _copy(model, build).to(memory_format=torch.channels_last)
    cl_step = Step(cl_model, k, x.contiguous(memory_format=torch.channels_last), y)
    same = _same(reference, _grads(cl_step))
    print(f"  channels-last        {seconds / best_seconds(cl_step, steps):5.2f}x   ({same} loss and gradients)")

    try:  # torch.compile of the backbone (inductor: C++ code built with the system compiler)
        if not try_compile:
            raise _Skipped
        c_step = Step(_copy(model, build), k, x, y)
        c_step.model = torch.compile(c_step.model)
        start = time.perf_counter()
        same = _same(reference, _grads(c_step))  # the first call compiles forward and backward
        first = time.perf_counter() - start
        print(f"  torch.compile        {seconds / best_seconds(c_step, steps):5.2f}x   ({same} loss and gradients; "
              f"first step {first:.0f} s, compiling)")
    except _Skipped:
        print("  torch.compile        skipped (--skip-compile)")
    except Exception as e:  # a missing or broken compiler toolchain, an unsupported op
        print(f"  torch.compile        failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")

    if cpu_has_native_bf16() or try_bf16:
        bf_step = Step(_copy(model, build), k, x, y)
        def bf16() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf_step()
        native = "native" if cpu_has_native_bf16() else "emulated: no avx512_bf16 / amx_bf16 on this CPU"
        print(f"  bf16 autocast        {seconds / best_seconds(bf16, steps):5.2f}x   (changes the numerics; {native})")
    else:
        print("  bf16 autocast        skipped: this CPU has no native bf16 (no avx512_bf16 / amx_bf16 in "
              "/proc/cpuinfo); --try-bf16 times it anyway")

    # feature extraction: larger batches than the pipeline's 256
    n = min(len(images), 2048)
    base_feats = extract(model, images[:n], pp, batch_size=256)
    base_s = best_seconds(lambda: extract(model, images[:n], pp, batch_size=256), max(1, steps // 2))
    for bs in sorted({min(1024, n), n} - {256}):
        feats = extract(model, images[:n], pp, batch_size=bs)
        ratio = base_s / best_seconds(lambda: extract(model, images[:n], pp, batch_size=bs), max(1, steps // 2))
        print(f"  extract batch {bs:<6} {ratio:5.2f}x   (against batch 256, {n} images; "
              f"{_same([base_feats], [feats])} features)")


def _copy(model: torch.nn.Module, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """A fresh model of the same architecture holding ``model``'s weights and buffers."""
    fresh = build()
    fresh.load_state_dict(model.state_dict())
    return fresh


def throughput(args: argparse.Namespace, ds, train_idx: np.ndarray, pp: dict, config: PretrainConfig,
               images_seen: int) -> None:
    """Print images/s of pretrain() against a bare training loop, and of extract() against a bare model(x)."""
    x = to_input(torch.from_numpy(ds.images[train_idx]), pp)
    y = torch.from_numpy(np.searchsorted(np.unique(ds.labels[train_idx]), ds.labels[train_idx]))
    ours, bare = [], []
    for r in range(args.repeats):  # alternate the two so both see the same machine load; keep the best
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            out = pretrain(args.backbone, ds, train_idx, None, config, Path(tmp) / "run", seed=r)
            ours.append(time.perf_counter() - start)
            model, _ = load_checkpoint(out)
        fresh = build_backbone(args.backbone, in_channels=ds.channels, image_size=ds.image_size)
        bare.append(bare_training(fresh, x, y, config, args.classes))
    print(f"pretrain   : {images_seen / min(ours):9.1f} img/s (whole call, incl. checkpoints)   "
          f"bare loop: {images_seen / min(bare):9.1f} img/s   ratio {min(bare) / min(ours):.3f}")

    n = len(train_idx)
    images = ds.images[train_idx]
    extract(model, images[:256], pp)  # warm-up
    ours, ours_layers, bare = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        extract(model, images, pp)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        extract(model, images, pp, layers=True)
        ours_layers.append(time.perf_counter() - start)
        bare.append(bare_inference(model, x, 256))
    print(f"extract    : {n / min(ours):9.1f} img/s (layers=True: {n / min(ours_layers):.1f})   "
          f"bare model(x): {n / min(bare):9.1f} img/s   ratio {min(bare) / min(ours):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="conv4")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each throughput run")
    parser.add_argument("--repeats", type=int, default=2, help="throughput runs of each kind (best is kept)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--collapse-epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs available)")
    parser.add_argument("--skip-collapse", action="store_true")
    parser.add_argument("--efficiency-models", nargs="*", choices=list(MODELS), default=["conv4", "resnet12-w16"],
                        help="models whose training step is measured against the conv peak (default: conv4 "
                             "resnet12-w16; none: skip)")
    parser.add_argument("--efficiency-steps", type=int, default=10, help="timed steps of each (fastest is kept)")
    parser.add_argument("--peak-batch", type=int, default=256, help="batch of the conv-peak measurement")
    parser.add_argument("--try-bf16", action="store_true", help="time bf16 autocast also without native bf16")
    parser.add_argument("--skip-compile", action="store_true", help="do not try torch.compile (it compiles for minutes)")
    parser.add_argument("--skip-throughput", action="store_true", help="skip the pretrain / extract throughput runs")
    args = parser.parse_args()

    ds = load_dataset("glyphs", classes=args.classes, per_class=args.per_class)
    train_idx = np.flatnonzero(ds.split == TRAIN)
    test_idx = np.flatnonzero(ds.split != TRAIN)
    pp = preprocessing_of(ds, train_idx, source="pretraining train images (train_idx)")  # as pretrain() computes it
    config = PretrainConfig(epochs=args.epochs, batch_size=args.batch_size, track_every=0, num_threads=args.threads)
    steps = config.epochs * (len(train_idx) // min(config.batch_size, len(train_idx)))
    images_seen = steps * min(config.batch_size, len(train_idx))
    print(f"{args.backbone} on glyphs: {args.classes} classes, {len(train_idx)} train images "
          f"{ds.image_size[0]}x{ds.image_size[1]}x{ds.channels}, {steps} steps per run")

    if not args.skip_throughput:
        throughput(args, ds, train_idx, pp, config, images_seen)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads: {torch.get_num_threads()}")
    for name in args.efficiency_models:
        efficiency(name, ds, ds.images[train_idx], pp, args.classes, args.batch_size, args.efficiency_steps,
                   args.peak_batch, args.try_bf16, not args.skip_compile)

    if args.skip_collapse:
        return
    collapse = PretrainConfig(epochs=args.collapse_epochs, batch_size=args.batch_size,
                              track_every=max(1, args.collapse_epochs // 4), num_threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = pretrain(args.backbone, ds, train_idx, test_idx, collapse, Path(tmp) / "run", seed=0,
                       tracker=CollapseTracker())
        wall = time.perf_counter() - start
        rows = [r for r in csv.DictReader((out / "curve.csv").open()) if r["nc1"]]
    keys = ["train_acc", "test_acc", "cdnv_train", "nc1", "nc2", "nc3", "nc4", "effective_depth"]
    print(f"\ncollapse of {args.backbone} over {collapse.epochs} epochs ({wall:.1f} s, tracked every {collapse.track_every}):")
    print(f"{'epoch':>5} " + " ".join(f"{k:>16}" for k in keys))
    for r in rows:
        print(f"{r['epoch']:>5} " + " ".join(f"{float(r[k]):16.4g}" for k in keys))


if __name__ == "__main__":
    main()
