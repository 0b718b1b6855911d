"""Collapse during pretraining: the :class:`ncbench.pretrain.Tracker` the pipeline gives ``pretrain``.

At epoch 0 and every ``track_every`` epochs (rank 0 only) it computes the training-curve columns of the
selected metrics (``ncbench.metrics.Column.curve``): source-scope ones on the source TRAIN (and TEST)
features and the current classifier — accuracy, CDNV, NC1–NC4, ... — and layer-scope ones on the layer
curves (:mod:`ncbench.layerwise`, streamed only when a selected metric tracks one, e.g. ε-effective depth).
``pretrain`` writes them into ``curve.csv`` and ``layer_curve.csv``, and every result file carries them as
its ``training_curve``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ncbench.backbones import extract
from ncbench.layerwise import layer_collapse
from ncbench.metrics import SourceEvidence, check_eps, evaluate, tracks
from ncbench.pretrain import LabelledImages


@dataclass(frozen=True)
class CollapseTracker:
    """eps: the ε of the ε-effective depth in the layer curves (the task's ``layer_eps``); metrics: the
    metric names to track (a task's ``metrics:``), None for every registered metric."""

    eps: float = 0.01
    metrics: tuple[str, ...] | None = None
    identity: dict[str, Any] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        check_eps(self.eps)
        if self.metrics is not None:
            object.__setattr__(self, "metrics", tuple(self.metrics))
        identity = {"layer_eps": float(self.eps)}
        if self.metrics is not None:
            identity["tracked_metrics"] = sorted(self.metrics)
        object.__setattr__(self, "identity", identity)

    def __call__(self, model: nn.Module, head: nn.Linear, train: LabelledImages, test: LabelledImages | None,
                 preprocessing: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(curve row, per-layer rows of :mod:`ncbench.layerwise`) of ``model`` and its classifier ``head``."""
        row: dict[str, Any] = {}
        if tracks("source", self.metrics):
            evidence = SourceEvidence(extract(model, train.images, preprocessing), train.labels,
                                      None if test is None else extract(model, test.images, preprocessing),
                                      None if test is None else test.labels,
                                      weight=head.weight.detach(), bias=None if head.bias is None else head.bias.detach())
            row.update(evaluate("source", evidence, self.metrics, curve=True))
        if not tracks("layer", self.metrics):
            return row, []
        curves = layer_collapse(model, train.images, train.labels, preprocessing, self.eps)
        row.update(evaluate("layer", curves, self.metrics, curve=True))
        return row, curves.rows
