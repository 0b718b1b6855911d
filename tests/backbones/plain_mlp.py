"""A BatchNorm-free MLP for the DDP test: without per-process batch statistics, distributed training
must follow single-process training up to float rounding."""

from torch import nn

from ncbench.backbones.base import Backbone, image_hw


def plain_mlp(*, in_channels: int, image_size, width: int = 24) -> Backbone:
    h, w = image_hw(image_size)
    return Backbone([("layer1", nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, width), nn.ReLU())),
                     ("layer2", nn.Sequential(nn.Linear(width, width), nn.ReLU()))], width)
