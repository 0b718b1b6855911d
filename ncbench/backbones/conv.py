"""Conv-4 (Vinyals et al. 2016 / Snell et al. 2017): ``depth`` × [conv3×3 – BN – ReLU – maxpool2], flattened."""

from __future__ import annotations

from torch import nn

from ncbench.backbones.base import Backbone, image_hw
from ncbench.registry import register_backbone


def conv_net(*, in_channels: int, image_size, width: int = 64, depth: int = 4) -> Backbone:
    """``depth`` conv blocks of ``width`` channels; features = flattened last map.

    For a 32×32 input and the defaults: [B, 64, 2, 2] -> feature_dim 256.
    """
    h, w = image_hw(image_size)
    if width < 1 or depth < 1:
        raise ValueError(f"conv backbone: width and depth must be >= 1, got width={width}, depth={depth}")
    if min(h, w) < 2**depth:
        raise ValueError(f"conv backbone: image_size {h}x{w} is too small for depth {depth} (needs >= {2**depth})")
    stages, channels = [], in_channels
    for i in range(depth):
        block = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        stages.append((f"block{i + 1}", block))
        channels, h, w = width, h // 2, w // 2
    return Backbone(stages, width * h * w)


@register_backbone("conv4")
def conv4(*, in_channels: int, image_size, width: int = 64, depth: int = 4) -> Backbone:
    """The standard Conv-4: 4 blocks of 64 channels."""
    return conv_net(in_channels=in_channels, image_size=image_size, width=width, depth=depth)


@register_backbone("tiny-conv")
def tiny_conv(*, in_channels: int, image_size, width: int = 4, depth: int = 2) -> Backbone:
    """A two-block, four-channel Conv net for fast tests."""
    return conv_net(in_channels=in_channels, image_size=image_size, width=width, depth=depth)
