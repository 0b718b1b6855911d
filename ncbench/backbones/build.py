"""Resolve a backbone spec to a validated ``nn.Module``.

A spec is, tried in this order:

1. a registered name (``conv4``; see ``ncbench list``),
2. ``path/to/file.py[:callable]`` — the callable defaults to ``backbone``,
3. ``package.module:callable``,
4. the name of an entry point in group ``ncbench.backbones``.

The callable receives the keyword options it accepts (``in_channels`` and ``image_size`` are always
offered; any other option it does not accept is an error) and must return an ``nn.Module`` mapping
``[B, C, H, W]`` to ``[B, m]``. The result is checked on a dummy batch by :func:`validate_backbone`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ncbench.backbones.base import image_hw
from ncbench.registry import BACKBONES, ENTRY_POINT_GROUP, is_user_spec  # noqa: F401  (public here too)

DEFAULT_FILE_CALLABLE = "backbone"


class BackboneError(ValueError):
    """A backbone spec cannot be resolved, built or validated; the message names the spec."""


def _load_file(spec: str) -> Callable[..., Any]:
    path_str, name = (spec, DEFAULT_FILE_CALLABLE) if spec.endswith(".py") else spec.rsplit(":", 1)
    path = Path(path_str)
    if not path.is_file():
        raise BackboneError(f"backbone {spec!r}: file {str(path)!r} not found")
    mod_name = "ncbench_user_backbone_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[mod_name]
        raise BackboneError(f"backbone {spec!r}: importing {str(path)!r} failed: {type(e).__name__}: {e}") from e
    return _attr(module, name, spec)


def _load_module(spec: str) -> Callable[..., Any]:
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise BackboneError(f"backbone {spec!r}: importing module {module_name!r} failed: {type(e).__name__}: {e}") from e
    return _attr(module, name, spec)


def _attr(module: Any, name: str, spec: str) -> Callable[..., Any]:
    obj = getattr(module, name, None)
    if not callable(obj):
        what = "is not callable" if hasattr(module, name) else "is missing"
        raise BackboneError(f"backbone {spec!r}: callable {name!r} {what} in {module.__name__}")
    return obj


def resolve_backbone(spec: str) -> Callable[..., Any]:
    """The factory a spec names (see the module docstring for the forms); raises BackboneError."""
    if not isinstance(spec, str) or not spec:
        raise BackboneError(f"backbone spec must be a non-empty string, got {spec!r}")
    if spec in BACKBONES:
        return BACKBONES.get(spec)
    if spec.endswith(".py") or ".py:" in spec:
        return _load_file(spec)
    if ":" in spec:
        return _load_module(spec)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=spec):
        try:
            return ep.load()
        except Exception as e:
            raise BackboneError(f"backbone {spec!r}: loading entry point {ep.value!r} failed: {type(e).__name__}: {e}") from e
    raise BackboneError(
        BACKBONES.unknown_message(spec)
        + f"; or give 'module:callable', 'path/to/file.py[:callable]' or an entry point in group {ENTRY_POINT_GROUP!r}"
    )


def _accepted_options(factory: Callable[..., Any], options: dict[str, Any], spec: str) -> dict[str, Any]:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature: offer everything
        return options
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return options
    unknown = sorted(k for k in options if k not in params and k not in ("in_channels", "image_size"))
    if unknown:
        raise BackboneError(f"backbone {spec!r}: unknown option(s) {unknown}; it accepts {sorted(params)}")
    return {k: v for k, v in options.items() if k in params}


def build_backbone(spec: str, *, in_channels: int = 3, image_size: int | tuple[int, int] = 32, **options: Any) -> nn.Module:
    """Build and validate the backbone ``spec`` for images [B, in_channels, H, W].

    Returns an ``nn.Module`` with ``feature_dim`` (set from the dummy batch when the module lacks it).
    Raises BackboneError naming ``spec`` when it cannot be resolved, built or validated.
    """
    factory = resolve_backbone(spec)
    kwargs = _accepted_options(factory, {"in_channels": in_channels, "image_size": image_size, **options}, spec)
    try:
        model = factory(**kwargs)
    except BackboneError:
        raise
    except Exception as e:
        raise BackboneError(f"backbone {spec!r}: building with {kwargs} failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise BackboneError(f"backbone {spec!r}: the factory returned {type(model).__name__}, expected an nn.Module")
    validate_backbone(model, in_channels, image_size, spec=spec)
    return model


def validate_backbone(model: nn.Module, in_channels: int, image_size: int | tuple[int, int], *, spec: str | None = None) -> int:
    """Check ``model`` on a seeded dummy batch x: [2, in_channels, H, W] in eval mode.

    The output must be a float tensor [2, m] with finite values, equal over two passes (eval-mode
    determinism), the passes must leave every parameter and buffer unchanged, and m must equal
    ``model.feature_dim`` when present (else it is set). Returns m.
    The model's train/eval mode is restored. Raises BackboneError naming ``spec``.
    """
    name = repr(spec) if spec is not None else type(model).__name__
    h, w = image_hw(image_size)
    x = torch.randn(2, in_channels, h, w, generator=torch.Generator().manual_seed(0))
    x = x.to(next((p.device for p in model.parameters()), torch.device("cpu")))  # a module already on a GPU
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            y1, y2 = model(x), model(x)
    except Exception as e:
        raise BackboneError(f"backbone {name}: forward pass on a dummy batch [2, {in_channels}, {h}, {w}] failed: {type(e).__name__}: {e}") from e
    finally:
        model.train(was_training)
    if not isinstance(y1, torch.Tensor):
        raise BackboneError(f"backbone {name}: forward must return a tensor [B, m], got {type(y1).__name__}")
    if y1.ndim != 2 or y1.shape[0] != 2:
        raise BackboneError(f"backbone {name}: output must have shape [B, m] = [2, m] for a batch of 2, got {list(y1.shape)}")
    if not y1.is_floating_point():
        raise BackboneError(f"backbone {name}: output must be floating point, got {y1.dtype}")
    if not torch.isfinite(y1).all():
        raise BackboneError(f"backbone {name}: output holds NaN or inf values on a dummy batch")
    after = model.state_dict()
    changed = sorted(set(state) ^ set(after)) + [k for k in after if k in state and not torch.equal(after[k], state[k])]
    if changed:
        raise BackboneError(f"backbone {name}: eval-mode forward passes changed its weights or buffers {changed} "
                            "(evaluation must leave the model unchanged)")
    if not torch.equal(y1, y2):
        raise BackboneError(f"backbone {name}: two eval-mode forward passes on the same batch differ (not deterministic)")
    m = int(y1.shape[1])
    declared = getattr(model, "feature_dim", None)
    if declared is None:
        model.feature_dim = m
    elif declared != m:
        raise BackboneError(f"backbone {name}: feature_dim is {declared} but the output has {m} features")
    return m


def probe_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's ``probe_layers()``, or its top-level children (in order) for modules without one."""
    method = getattr(model, "probe_layers", None)
    return list(method()) if callable(method) else list(model.named_children())
