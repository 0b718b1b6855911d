"""Fully connected backbones: ``depth`` × [Linear – BatchNorm1d – ReLU] on flattened images (Galanti 2022)."""

from __future__ import annotations

from torch import nn

from ncbench.backbones.base import Backbone, image_hw
from ncbench.registry import register_backbone


def mlp_net(*, in_channels: int, image_size, width: int, depth: int) -> Backbone:
    """Stage i (``layer1``..``layer<depth>``) is Linear(width) – BN – ReLU; feature_dim = width."""
    h, w = image_hw(image_size)
    if width < 1 or depth < 1:
        raise ValueError(f"mlp backbone: width and depth must be >= 1, got width={width}, depth={depth}")
    stages, fan_in = [], in_channels * h * w
    for i in range(depth):
        layers = [nn.Flatten()] if i == 0 else []
        layers += [nn.Linear(fan_in, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        stages.append((f"layer{i + 1}", nn.Sequential(*layers)))
        fan_in = width
    return Backbone(stages, width)


@register_backbone("mlp")
def mlp(*, in_channels: int, image_size, width: int = 512, depth: int = 4) -> Backbone:
    return mlp_net(in_channels=in_channels, image_size=image_size, width=width, depth=depth)


@register_backbone("tiny-mlp")
def tiny_mlp(*, in_channels: int, image_size, width: int = 16, depth: int = 2) -> Backbone:
    return mlp_net(in_channels=in_channels, image_size=image_size, width=width, depth=depth)
