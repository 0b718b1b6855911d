"""Collapse during pretraining: the :class:`ncbench.pretrain.Tracker` the pipeline gives ``pretrain``.

At epoch 0 and every ``track_every`` epochs (rank 0 only) it measures, on the source TRAIN (and TEST)
images, the classifier's accuracy, the collapse metrics of the penultimate features and the layer curves
(:mod:`ncbench.layerwise`, with ε-effective depth); ``pretrain`` writes them into ``curve.csv`` and
``layer_curve.csv``, and every result file carries them as its ``training_curve``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ncbench.backbones import extract
from ncbench.layerwise import layer_collapse
from ncbench.metrics import check_eps, collapse_report
from ncbench.pretrain import LabelledImages


def _accuracy(head: nn.Linear, features: torch.Tensor, labels) -> float:
    """Classifier accuracy on features [N, m] with labels [N] in 0..s-1, as the classifier computes it."""
    with torch.inference_mode():
        return float((head(features.to(head.weight.device)).argmax(1).cpu().numpy() == labels).mean())


@dataclass(frozen=True)
class CollapseTracker:
    """eps: the ε of the ε-effective depth in the layer curves (the task's ``layer_eps``)."""

    eps: float = 0.01
    identity: dict[str, Any] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        check_eps(self.eps)
        object.__setattr__(self, "identity", {"layer_eps": float(self.eps)})

    def __call__(self, model: nn.Module, head: nn.Linear, train: LabelledImages, test: LabelledImages | None,
                 preprocessing: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(scalar row, per-layer rows of :mod:`ncbench.layerwise`) of ``model`` at this epoch."""
        weight, bias = head.weight.detach(), None if head.bias is None else head.bias.detach()
        feats = extract(model, train.images, preprocessing)
        row = {"train_acc": _accuracy(head, feats, train.labels)}
        test_feats = None
        if test is not None:
            test_feats = extract(model, test.images, preprocessing)
            row["test_acc"] = _accuracy(head, test_feats, test.labels)
        row.update(collapse_report(feats, train.labels, test_feats, None if test is None else test.labels,
                                   weight=weight, bias=bias))
        curves = layer_collapse(model, train.images, train.labels, preprocessing, self.eps)
        row.update({"effective_depth" if v == "flat" else f"effective_depth_{v}": d for v, d in curves.depths.items()})
        return row, curves.rows
