"""Residual backbones for small images: ResNet-12 (few-shot standard), torchvision's ResNet-18 with a
3×3 stride-1 stem and no max-pool, and Wide-ResNet-28-k (Zagoruyko & Komodakis 2016). All end in global
average pooling, so feature_dim is the last stage's channel count."""

from __future__ import annotations

import torch
from torch import nn

from ncbench.backbones.base import Backbone, image_hw
from ncbench.registry import register_backbone


class _ResNet12Block(nn.Module):
    """3 × [conv3×3 – BN – LeakyReLU(0.1)] with a 1×1-conv shortcut, then maxpool2 (halves H and W)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        layers = []
        for i in range(3):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
            if i < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


@register_backbone("resnet12")
def resnet12(*, in_channels: int, image_size, widths: tuple[int, ...] | list[int] = (64, 160, 320, 640)) -> Backbone:
    """Four residual blocks (``block1``..``block4``) of ``widths`` channels; feature_dim = widths[-1]."""
    h, w = image_hw(image_size)
    if min(h, w) < 2 ** len(widths):
        raise ValueError(f"resnet12: image_size {h}x{w} is too small for {len(widths)} blocks (needs >= {2 ** len(widths)})")
    stages, cin = [], in_channels
    for i, cout in enumerate(widths):
        stages.append((f"block{i + 1}", _ResNet12Block(cin, cout)))
        cin = cout
    return Backbone(stages, cin, pool=True)


@register_backbone("resnet18")
def resnet18(*, in_channels: int, image_size) -> Backbone:
    """torchvision's ResNet-18 with the CIFAR stem (conv3×3 stride 1, no max-pool); feature_dim 512.

    Stages: ``stem``, ``layer1``..``layer4`` (torchvision's modules and initialisation).
    """
    h, w = image_hw(image_size)
    if min(h, w) < 8:
        raise ValueError(f"resnet18: image_size {h}x{w} is too small (needs >= 8)")
    import torchvision  # lazy: start-up time (torchvision imports torch._dynamo)

    net = torchvision.models.resnet18(weights=None)
    stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), net.bn1, net.relu)
    nn.init.kaiming_normal_(stem[0].weight, mode="fan_out", nonlinearity="relu")
    stages = [("stem", stem)] + [(f"layer{i}", getattr(net, f"layer{i}")) for i in range(1, 5)]
    return Backbone(stages, 512, pool=True)


class _WideBlock(nn.Module):
    """Pre-activation basic block: BN – ReLU – conv3×3 – BN – ReLU – conv3×3, plus (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.pre = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=False))
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        )
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pre(x)
        return self.body(a) + (x if self.shortcut is None else self.shortcut(a))


def wide_resnet(*, in_channels: int, image_size, depth: int, width: int) -> Backbone:
    """WRN-``depth``-``width``: stem conv(16), three groups of (depth-4)/6 blocks with 16k, 32k, 64k
    channels (strides 1, 2, 2), final BN – ReLU (stage ``post``); feature_dim = 64·width."""
    h, w = image_hw(image_size)
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(f"wide_resnet: depth must be 6n+4 with n >= 1, got {depth}")
    if min(h, w) < 4:
        raise ValueError(f"wide_resnet: image_size {h}x{w} is too small (needs >= 4)")
    n = (depth - 4) // 6
    stages = [("stem", nn.Conv2d(in_channels, 16, 3, padding=1, bias=False))]
    cin = 16
    for g, (cout, stride) in enumerate([(16 * width, 1), (32 * width, 2), (64 * width, 2)]):
        blocks = [_WideBlock(cin if b == 0 else cout, cout, stride if b == 0 else 1) for b in range(n)]
        stages.append((f"group{g + 1}", nn.Sequential(*blocks)))
        cin = cout
    stages.append(("post", nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True))))
    model = Backbone(stages, cin, pool=True)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


@register_backbone("wrn-28-4")
def wrn_28_4(*, in_channels: int, image_size, depth: int = 28, width: int = 4) -> Backbone:
    return wide_resnet(in_channels=in_channels, image_size=image_size, depth=depth, width=width)
