"""The pretraining recipe: a task's ``pretrain:`` block as a validated dataclass.

Its own module, free of torch, so that reading and validating task files (``ncbench validate``) stays fast;
:mod:`ncbench.pretrain` runs the recipe.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEDULES = ("cosine", "step", "constant")
LOSSES = ("ce", "mse")
CLASSIFIERS = ("linear", "etf")


def is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass
class PretrainConfig:
    """A task's ``pretrain:`` block (field names are the YAML keys).

    epochs:          training epochs (one epoch = floor(N / batch_size) steps; one batch of N if N < batch_size).
    min_steps:       train at least this many SGD steps: with few source images the epochs are raised to
                     ceil(min_steps / steps per epoch) (milestones and track_every scaled alike), so a sweep over the
                     number of source classes does not leave the small source sets under-trained; 0 = off.
    batch_size, lr, momentum, weight_decay: SGD settings (weight decay on every trainable parameter).
    schedule:        "cosine" (lr · ½(1 + cos(π e / epochs))), "step" (lr · gamma^#{milestones ≤ e}) or "constant".
    milestones:      epochs at which "step" multiplies the lr by ``gamma``.
    loss:            "ce" (cross-entropy) or "mse" (squared error to one-hot targets, summed over classes,
                     averaged over the batch; Hui & Belkin 2021).
    mse_weight, mse_target: Hui & Belkin's rescaling of "mse" for many classes: the true class's term is
                     weighted by k = ``mse_weight`` and its target is M = ``mse_target``,
                     k·(f_y − M)² + Σ_{c≠y} f_c²; 1 and 1 = the plain squared error.
    classifier:      "linear" (learned weight and bias) or "etf" (fixed simplex ETF, no bias; Zhu et al. 2021).
    clip_grad_norm:  rescale each step's gradient to this global L2 norm when it is larger (None: never); keeps
                     the squared error stable with many classes, whose summed gradient is ~√K times the CE one.
    track_every:     compute collapse metrics every this many epochs (and before training); 0 = off. The
                     per-layer curves use every train image (``ncbench.layerwise``, streamed).
    num_threads:     torch CPU threads; None = ``$NCBENCH_THREADS``, else Slurm's CPUs per task, else the CPUs this
                     process may use shared by the processes of its node (``LOCAL_WORLD_SIZE``).
    """

    epochs: int = 30
    min_steps: int = 0
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    loss: str = "ce"
    mse_weight: float = 1.0
    mse_target: float = 1.0
    classifier: str = "linear"
    track_every: int = 5
    clip_grad_norm: float | None = None
    num_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"pretrain.{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("min_steps", "track_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"pretrain.{name} must be an integer >= 0, got {getattr(self, name)!r}")
        for name, low, strict in (("lr", 0.0, True), ("momentum", 0.0, False), ("weight_decay", 0.0, False),
                                  ("gamma", 0.0, True), ("mse_weight", 0.0, True), ("mse_target", 0.0, True)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < low or (strict and v == low):
                raise ValueError(f"pretrain.{name} must be a finite number {'>' if strict else '>='} {low}, got {v!r}")
            setattr(self, name, float(v))
        if self.momentum >= 1:
            raise ValueError(f"pretrain.momentum must be < 1, got {self.momentum}")
        for name, choices in (("schedule", SCHEDULES), ("loss", LOSSES), ("classifier", CLASSIFIERS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"pretrain.{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        m = self.milestones
        if not isinstance(m, (list, tuple)) or not all(is_int(v) and 0 < v <= self.epochs for v in m) or list(m) != sorted(set(m)):
            raise ValueError(f"pretrain.milestones must be increasing epochs in 1..{self.epochs}, got {m!r}")
        self.milestones = [int(v) for v in m]
        c = self.clip_grad_norm
        if c is not None and (not isinstance(c, (int, float)) or isinstance(c, bool) or not math.isfinite(c) or c <= 0):
            raise ValueError(f"pretrain.clip_grad_norm must be a finite number > 0 or null, got {c!r}")
        if self.num_threads is not None and (not is_int(self.num_threads) or self.num_threads < 1):
            raise ValueError(f"pretrain.num_threads must be a positive integer or null, got {self.num_threads!r}")

    def for_size(self, n: int) -> "PretrainConfig":
        """This recipe for ``n`` training images: ``epochs`` raised to reach ``min_steps`` steps."""
        steps_per_epoch = max(1, n // self.batch_size)
        epochs = max(self.epochs, math.ceil(self.min_steps / steps_per_epoch))
        if epochs == self.epochs:
            return self
        scale = epochs / self.epochs
        return dataclasses.replace(self, epochs=epochs, track_every=round(self.track_every * scale),
                                   milestones=sorted({min(epochs, max(1, round(m * scale))) for m in self.milestones}))

    def lr_at(self, epoch: int) -> float:
        """Learning rate for (0-based) ``epoch``."""
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))
        if self.schedule == "step":
            return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        return self.lr
