"""Backbones: images [B, C, H, W] -> features [B, m], with ``feature_dim`` and ``probe_layers()``.

Importing this package registers the built-in architectures (``conv4``, ``resnet12``, ``resnet18``,
``wrn-28-4``, ``mlp`` and the tiny test ones ``tiny-conv``, ``tiny-mlp``) in
``ncbench.registry.BACKBONES``. :func:`build_backbone` also accepts user specs; see
:mod:`ncbench.backbones.build`.
"""

from ncbench.backbones import conv, mlp, resnet  # noqa: F401  (registers the architectures)
from ncbench.backbones.base import Backbone, image_hw
from ncbench.backbones.forward import extract
from ncbench.backbones.build import (
    ENTRY_POINT_GROUP,
    BackboneError,
    build_backbone,
    is_user_spec,
    probe_layers,
    resolve_backbone,
    validate_backbone,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backbone",
    "BackboneError",
    "build_backbone",
    "extract",
    "image_hw",
    "is_user_spec",
    "probe_layers",
    "resolve_backbone",
    "validate_backbone",
]
