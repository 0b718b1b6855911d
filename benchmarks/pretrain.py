"""Pretraining and feature-extraction throughput against bare PyTorch loops, and collapse on glyphs.

    python benchmarks/pretrain.py                      # conv4, glyphs, 20 source classes
    python benchmarks/pretrain.py --skip-collapse --epochs 2

Prints images/s of ``ncbench.pretrain.pretrain`` (tracking off) next to a bare
forward/backward/step loop on the same model, data, batch size and number of steps (target ratio
>= 0.9), then ``ncbench.backbones.extract`` next to a bare ``model(x)`` loop, (best of --repeats runs each), then the tracked
source-train collapse curve of a conv4 run (accuracy, CDNV, NC1-NC4, effective depth).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from ncbench.runtime import prepare_process_env

prepare_process_env()  # before torch (or numpy, sklearn) loads its OpenMP, which reads OMP_WAIT_POLICY once

import numpy as np
import torch

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
    print(f"threads: {torch.get_num_threads()}")
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
