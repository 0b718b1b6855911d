"""The common shape of a built-in backbone: an ordered list of stages, then flatten (or pool).

A backbone maps images ``[B, C, H, W]`` float to features ``[B, m]`` float, exposes ``feature_dim``
(``m``) and ``probe_layers()``: its top-level stages in forward order, which layer-wise metrics tap.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def image_hw(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``32`` or ``(32, 32)`` -> ``(H, W)``; raises ValueError naming ``image_size`` otherwise."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        hw = (image_size, image_size)
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        hw = (image_size[0], image_size[1])
    else:
        raise ValueError(f"image_size must be an int or [H, W], got {image_size!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
        raise ValueError(f"image_size must hold positive ints, got {image_size!r}")
    return int(hw[0]), int(hw[1])


class Backbone(nn.Module):
    """``stages`` applied in order, then global-average pooling (``pool=True``) or flattening.

    stages:      (name, module) pairs; ``probe_layers()`` returns them in this order.
    feature_dim: m, the length of the output feature vector.
    """

    def __init__(self, stages: list[tuple[str, nn.Module]], feature_dim: int, *, pool: bool = False):
        super().__init__()
        self.stages = nn.Sequential(OrderedDict(stages))
        self.feature_dim = int(feature_dim)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] float -> features [B, feature_dim] float."""
        x = self.stages(x)
        if self.pool:
            x = x.mean(dim=(2, 3))
        return x.flatten(1)

    def probe_layers(self) -> list[tuple[str, nn.Module]]:
        return list(self.stages.named_children())
