"""Scale rehearsal: a GPU-sized task at full size, on synthetic data of exactly the real shapes and formats.

    python benchmarks/scale.py mini-imagenet                 # 100 classes x 600 JPEGs 84x84, ResNet-12
    python benchmarks/scale.py cifar-fs                      # cifar-100-python pickles: 60,000 32x32 images
    python benchmarks/scale.py cifar-fs --small              # 20 images a class: the test suite's smoke run
    python benchmarks/scale.py mini-imagenet --device cuda --json out.json

1. Writes a synthetic copy of the dataset in its real on-disk format (mini-ImageNet: an image folder of
   JPEGs named by the Ravi split's wnids; CIFAR-100: torchvision's ``cifar-100-python`` pickles, whose md5
   sums are registered on torchvision's ``CIFAR100`` class for this process, as the tests do).
2. Loads it through the registered loader named by the real task file (``tasks/<task>.yaml``) and runs the
   stages of one unit at the task's largest s, with the task's backbone, as ``ncbench.run`` does: pools and
   source draw, normalisation, pretraining steps, feature extraction (source TRAIN, source TEST, target
   pool), source / target collapse metrics, layer curves (every source TRAIN image), ``count`` episodes per
   head x shots, the result file and the leaderboard rebuild.
3. Prints one row per stage: wall time, images/s where images flow, peak RSS of the process so far (and
   peak CUDA memory with ``--device cuda``), and whether the figure was measured or extrapolated.

Pretraining runs ``--steps`` SGD steps of the real training step (``ncbench.pretrain._train_epoch`` on the
real model, classifier, loss and optimiser) and is extrapolated to the task's whole recipe (epochs x steps
per epoch), plus the collapse tracking it does every ``track_every`` epochs (extrapolated from the measured
extraction, metric and layer-curve stages). Every other stage runs at full size. The FLOPs of one training
step are counted with ``torch.utils.flop_counter`` and turned into achieved GFLOP/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import pickle
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ncbench.runtime import prepare_process_env

prepare_process_env()  # before torch (or numpy, sklearn) loads its OpenMP, which reads OMP_WAIT_POLICY once

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SUPPORTED = ("mini-imagenet", "cifar-fs", "fc100")


# ------------------------------------------------------------------------------------- synthetic data
def synthetic_images(n: int, size: int, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [n, size, size, 3]: a per-class colour pattern plus noise, so classes are separable."""
    base = rng.integers(0, 256, (int(classes.max()) + 1, 4, 4, 3)).astype(np.float32)
    pattern = np.kron(base, np.ones((1, math.ceil(size / 4), math.ceil(size / 4), 1), np.float32))[:, :size, :size]
    noise = rng.normal(0, 40, (n, size, size, 3)).astype(np.float32)
    return np.clip(pattern[classes] + noise, 0, 255).astype(np.uint8)


def write_mini_imagenet(root: Path, per_class: int, size: int = 84) -> Path:
    """``root/<wnid>/<wnid>_<i>.jpg``: the 100 wnids of the shipped Ravi split lists, ``per_class`` JPEGs each."""
    from ncbench.data.common import split_list

    wnids = sorted(w for s in ("train", "val", "test") for w in split_list(f"mini_imagenet_{s}.txt"))
    rng = np.random.default_rng(0)
    for k, wnid in enumerate(wnids):
        folder = root / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(synthetic_images(per_class, size, np.full(per_class, k), rng)):
            Image.fromarray(img).save(folder / f"{wnid}_{i:05d}.jpg", quality=90)
    return root


def write_cifar100(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` as CIFAR-100 ships them (pickled dicts of [N, 3072] uint8
    rows, fine and coarse labels; meta with the class names). torchvision checks the files' md5 against the
    real dataset's: this process registers the synthetic files' md5 sums on ``CIFAR100``."""
    from torchvision.datasets import CIFAR100

    from ncbench.data.cifar import fc100_lists
    from ncbench.data.common import split_list

    names = sorted({*(n for s in ("train", "val", "test") for n in split_list(f"cifar_fs_{s}.txt")),
                    *(n for names in fc100_lists().values() for n in names)})
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    md5 = {}
    for fname, n in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(100), n)
        rows = synthetic_images(len(labels), 32, labels, rng).transpose(0, 3, 1, 2).reshape(len(labels), 3072)
        entry = {"data": rows, "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist()}
        (folder / fname).write_bytes(pickle.dumps(entry, protocol=4))
        md5[fname] = hashlib.md5((folder / fname).read_bytes()).hexdigest()
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": names,
                                                "coarse_label_names": [f"super{i}" for i in range(20)]}))
    CIFAR100.train_list = [["train", md5["train"]]]
    CIFAR100.test_list = [["test", md5["test"]]]
    CIFAR100.meta = {**CIFAR100.meta, "md5": hashlib.md5((folder / "meta").read_bytes()).hexdigest()}
    return root


# ---------------------------------------------------------------------------------------- measuring
@dataclass
class Stage:
    name: str
    seconds: float
    images: int = 0
    measured: bool = True
    peak_rss_gb: float = 0.0
    peak_cuda_gb: float | None = None
    note: str = ""
    sample: bool = False  # a measured sample whose full-size figure is the extrapolated row after it

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.images and self.seconds > 0 else None


@dataclass
class Rehearsal:
    device: torch.device
    stages: list[Stage] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str, images: int = 0, note: str = ""):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        cuda = torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None
        self.stages.append(Stage(name, time.perf_counter() - start, images, True, peak_rss_gb(), cuda, note))

    def extrapolated(self, name: str, seconds: float, note: str) -> None:
        """A full-size figure extrapolated from the measured sample just before it."""
        self.stages[-1].sample = True
        self.stages.append(Stage(name, seconds, measured=False, peak_rss_gb=float("nan"), note=note))

    def total(self, prefixes: tuple[str, ...] = ("",)) -> float:
        """Seconds of the full-size stages whose names start with one of ``prefixes`` (samples left out)."""
        return sum(x.seconds for x in self.stages if not x.sample and x.name.startswith(prefixes))

    def table(self) -> str:
        lines = [f"{'stage':<34} {'wall s':>10} {'images/s':>10} {'peak RSS GB':>12} {'peak CUDA GB':>13}  kind          note"]
        for s in self.stages:
            ips = f"{s.images_per_s:10.1f}" if s.images_per_s else f"{'':>10}"
            rss = f"{s.peak_rss_gb:12.2f}" if s.measured else f"{'':>12}"
            cuda = f"{s.peak_cuda_gb:13.2f}" if s.peak_cuda_gb is not None else f"{'':>13}"
            kind = "measured" if s.measured else "EXTRAPOLATED"
            lines.append(f"{s.name:<34} {s.seconds:10.1f} {ips} {rss} {cuda}  {kind:<13} {s.note}")
        return "\n".join(lines)


def finite(v):
    """A result-file value: booleans kept, non-finite floats (e.g. the CDNV of coinciding means) as None."""
    return v if isinstance(v, bool) else (float(v) if math.isfinite(v) else None)


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def step_flops(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one forward + backward of ``net`` on the batch (torch's FlopCounterMode; convolutions and
    matrix products, which dominate)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        torch.nn.functional.cross_entropy(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------------------ the run
def forward_stage(r: Rehearsal, name: str, idx: np.ndarray, run, max_forward: int | None, passes: int = 1):
    """Run ``run(idx)`` (a stage that pushes ``dataset.images[idx]`` through the backbone) and time it. With
    ``max_forward`` below ``len(idx)``, run it on an evenly spaced subset of that many images and extrapolate
    the time linearly to all of them (a per-image cost); a feature matrix is then brought to its full shape
    by repeating the computed rows, so that later stages (metrics, episodes) still run at full size."""
    if max_forward is None or max_forward >= len(idx):
        with r.stage(name, images=passes * len(idx)):
            return run(idx)
    part = idx[np.linspace(0, len(idx) - 1, max_forward).round().astype(int)]
    with r.stage(f"{name} [{max_forward} of {len(idx)}]", images=passes * max_forward):
        out = run(part)
    r.extrapolated(name, r.stages[-1].seconds * len(idx) / max_forward,
                   f"linear in images from the {max_forward}-image row above")
    if isinstance(out, torch.Tensor):
        out = out[torch.arange(len(idx)) % len(part)]  # [len(idx), m]
    return out


def rehearse(task_name: str, data_root: Path, device: torch.device, steps: int, episodes: int | None,
             out: Path, small: bool = False, max_forward: int | None = None,
             source_classes: int | None = None) -> tuple[Rehearsal, dict]:
    """Run the stages of one unit of ``task_name`` on the copy in ``data_root``, at ``source_classes``
    (default: the task's largest s). ``small``: 12 TRAIN and 4 TEST images a source class, for a copy with
    few images; ``max_forward``: see :func:`forward_stage`."""
    from ncbench import leaderboard
    from ncbench.backbones import build_backbone, extract
    from ncbench.data.preprocessing import preprocessing_of, to_input
    from ncbench.heads import build_head, episode_accuracy
    from ncbench.stats import mean_ci95
    from ncbench.layerwise import layer_collapse
    from ncbench.metrics import cdnv, collapse_report, ncc_accuracy
    from ncbench.pretrain import _make_classifier, _Net, _train_epoch
    from ncbench.results import EpisodeScore, Provenance, Result, Status, write_result
    from ncbench.unit import RunOptions, dataset_for, norm_indices, plan_units, target_indices, unit_data
    from ncbench.episodes import sample_episodes
    from ncbench.tasks import load_task

    task = load_task(REPO / "tasks" / f"{task_name}.yaml")
    if small:
        task = dataclasses.replace(task, train_per_class=12, test_per_class=4)
    r = Rehearsal(device)
    opts = RunOptions(out=out, results=out / "results", data_root=str(data_root))
    with r.stage("load + decode (real loader)"):
        ds = dataset_for(task, opts.data_root)  # the pipeline's loader call (cached for unit_data below)
    r.stages[-1].images = len(ds.labels)
    opts = dataclasses.replace(opts, source_classes=[source_classes] if source_classes else None)
    unit = max(plan_units(task, opts), key=lambda u: u.source_classes)
    with r.stage("pools, source draw, normalisation"):
        data = unit_data(unit, opts)
        pp = preprocessing_of(ds, norm_indices(data), source="source-pool train images")
    s = len(data.classes)
    y_train, y_test = data.source_labels(data.train_idx), data.source_labels(data.test_idx)

    # ---- pretraining: `steps` real SGD steps, then extrapolated to the recipe
    config = task.pretrain_config().for_size(len(data.train_idx))
    torch.manual_seed(unit.seed)
    model = build_backbone(unit.backbone, in_channels=ds.channels, image_size=list(ds.image_size),
                           **unit.backbone_options).to(device)
    head = _make_classifier(config.classifier, model.feature_dim, s, unit.seed).to(device)
    net = _Net(model, head)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    bs = min(config.batch_size, len(y_train))
    n_steps = max(1, min(steps, len(y_train) // bs))
    sub = np.random.default_rng(0).choice(len(y_train), n_steps * bs, replace=False)
    images_t = torch.from_numpy(np.ascontiguousarray(ds.images[data.train_idx[sub]]))
    labels_t = torch.from_numpy(y_train[sub])
    flops = step_flops(net, to_input(images_t[:bs], pp).to(device), labels_t[:bs].to(device))
    _train_epoch(net, opt, images_t[:bs], labels_t[:bs], pp, config.loss, bs, torch.Generator().manual_seed(1))  # warm-up
    with r.stage(f"pretrain: {n_steps} SGD steps (batch {bs})", images=n_steps * bs):
        _train_epoch(net, opt, images_t, labels_t, pp, config.loss, bs, torch.Generator().manual_seed(0))
    step_s = r.stages[-1].seconds / n_steps
    del images_t, labels_t, opt
    total_steps = config.epochs * (len(y_train) // bs)
    r.extrapolated(f"pretrain: all {total_steps} steps", step_s * total_steps,
                   f"{config.epochs} epochs x {len(y_train) // bs} steps x {step_s:.3f} s")

    # ---- evaluation stages, at full size
    weight, bias = (t.detach().cpu() for t in (head.weight, head.bias if head.bias is not None else torch.zeros(s)))
    f_train = forward_stage(r, "features: source TRAIN", data.train_idx, lambda idx: extract(model, ds.images[idx], pp),
                            max_forward)
    f_test = forward_stage(r, "features: source TEST", data.test_idx, lambda idx: extract(model, ds.images[idx], pp),
                           max_forward)
    tgt_idx = target_indices(data)
    f_tgt = forward_stage(r, "features: target pool", tgt_idx, lambda idx: extract(model, ds.images[idx], pp),
                          max_forward)
    with r.stage("collapse metrics: source + target", images=len(f_train) + len(f_test) + len(f_tgt)):
        source = collapse_report(f_train, y_train, f_test, y_test, weight=weight, bias=bias)
        y_tgt = ds.labels[tgt_idx]
        tgt_train = ds.split[tgt_idx] == 0
        target = {"cdnv": cdnv(f_tgt, y_tgt),
                  "ncc_acc": ncc_accuracy(f_tgt[tgt_train], y_tgt[tgt_train], f_tgt[~tgt_train], y_tgt[~tgt_train])}
    curves = forward_stage(r, "layer curves: every source TRAIN image", data.train_idx,
                           lambda idx: layer_collapse(model, ds.images[idx], data.source_labels(idx),
                                                      pp, task.layer_eps), max_forward, passes=2)
    ep = task.episodes
    count = episodes or ep.count
    episodes_out, digests = [], {}
    with r.stage(f"episodes: {count} x {len(task.heads)} heads x {len(ep.shots)} shots",
                 images=count * len(task.heads) * len(ep.shots) * ep.ways * ep.queries):
        center = f_train.double().mean(0)
        for shots in ep.shots:
            eps = sample_episodes(data.target_dataset.labels, data.target_pool, ep.ways, shots, ep.queries, count,
                                  ep.seed)
            digests[str(shots)] = eps.digest
            pos = lambda a: np.searchsorted(tgt_idx, a)  # noqa: E731  dataset index -> row of f_tgt
            for spec in task.heads:
                accs = episode_accuracy(build_head(spec, center=center), f_tgt, pos(eps.support), eps.support_labels,
                                        pos(eps.query), eps.query_labels)
                mean, ci, n = mean_ci95(accs)
                episodes_out.append(EpisodeScore(head=spec["name"], ways=ep.ways, shots=shots, queries=ep.queries,
                                                 acc_mean=mean, acc_ci95=finite(ci), n=n,
                                                 per_episode=[float(a) for a in accs]))
    epochs = range(1, config.epochs + 1)  # pretrain tracks before training, every track_every epochs and at the last
    tracked = len({0, config.epochs} | {e for e in epochs if e % config.track_every == 0}) if config.track_every else 0
    one_track = r.total(("features: source", "collapse", "layer curves"))
    r.stages.append(Stage(f"pretrain: collapse tracking x {tracked}", one_track * tracked, measured=False,
                          peak_rss_gb=float("nan"), note=f"every {config.track_every} epochs: source features + "
                          f"metrics + layer curves, {one_track:.1f} s each"))
    with r.stage("result file + leaderboard rebuild"):
        record = Result(status=Status.OK, unit=unit.key(), provenance=Provenance(device=device.type, episodes=digests),
                        source={k: finite(v) for k, v in source.items()},
                        target={k: finite(v) for k, v in target.items()}, layers=curves.rows, episodes=episodes_out)
        write_result(opts.results, record)
        leaderboard.rebuild(opts.results, out / "leaderboards", [task.name])
    summary = {"task": task.name, "backbone": unit.backbone, "source_classes": s, "device": device.type,
               "threads": torch.get_num_threads(), "train_images": len(y_train), "step_s": step_s,
               "step_gflop": flops / 1e9, "step_gflops_per_s": flops / 1e9 / step_s,
               "recipe_steps": total_steps, "tracked_evaluations": tracked,
               # a whole unit: every full-size stage, extrapolations in place of their measured samples
               "extrapolated_full_unit_s": r.total(),
               "stages": [{**x.__dict__, "images_per_s": x.images_per_s} for x in r.stages]}
    return r, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=SUPPORTED, help="the task file (tasks/<task>.yaml) to rehearse")
    parser.add_argument("--small", action="store_true", help="a few images a class, for a smoke run (not a measurement)")
    parser.add_argument("--steps", type=int, default=50, help="SGD steps measured (default 50)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per head x shots (default: the task's)")
    parser.add_argument("--max-forward", type=int, default=None,
                        help="run the backbone-forward stages (features, layer curves) on at most this many images each "
                             "and extrapolate their time (default: all images)")
    parser.add_argument("--source-classes", type=int, default=None, help="s of the unit (default: the task's largest)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--data", type=Path, default=None, help="reuse/write the synthetic copy here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table and summary as JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="ncbench-scale-") as tmp:
        root = args.data or Path(tmp) / "data"
        start = time.perf_counter()
        if args.task == "mini-imagenet":
            write_mini_imagenet(root, 24 if args.small else 600)
        else:
            write_cifar100(root, *((16, 8) if args.small else (500, 100)))
        built = time.perf_counter() - start
        rehearsal, summary = rehearse(args.task, root, device, args.steps,
                                      args.episodes or (20 if args.small else None), Path(tmp) / "out", args.small,
                                      args.max_forward, args.source_classes)
    print(f"{args.task}: synthetic copy written in {built:.1f} s ({'small' if args.small else 'full size'}); "
          f"{summary['backbone']}, s = {summary['source_classes']}, {summary['train_images']} source TRAIN images, "
          f"{summary['threads']} threads on {summary['device']}")
    print(rehearsal.table())
    print(f"training step: {summary['step_gflop']:.1f} GFLOP (forward + backward), {summary['step_s']:.3f} s "
          f"= {summary['step_gflops_per_s']:.1f} GFLOP/s achieved")
    print(f"one full unit (pretraining extrapolated, the rest measured): {summary['extrapolated_full_unit_s'] / 3600:.2f} h")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
