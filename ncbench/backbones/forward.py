"""A backbone run over uint8 images in eval mode: penultimate features and, optionally, every probe layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ncbench.backbones.build import probe_layers
from ncbench.data.preprocessing import check_preprocessing, to_input


def _check_images(images: np.ndarray, preprocessing: dict[str, Any]) -> None:
    (h, w), c, _, _ = check_preprocessing(preprocessing)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 array [N, H, W, C], got {got}")
    if images.shape[1:] != (h, w, c):
        raise ValueError(f"images have shape [N, {', '.join(map(str, images.shape[1:]))}], the preprocessing expects [N, {h}, {w}, {c}]")


def extract(
    model: nn.Module,
    images: np.ndarray,
    preprocessing: dict[str, Any],
    *,
    batch_size: int = 256,
    layers: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Features of ``images`` (uint8 [N, H, W, C]) under ``model`` in eval mode, float32 on CPU.

    Returns features [N, m]; with ``layers=True`` also a dict, in stage order, with
    ``"<stage>/flat"``: [N, d] (the stage output flattened) for every probe layer and
    ``"<stage>/pooled"``: [N, c] (global average over H, W) for stages whose output is a map [B, c, H, W].
    The model's train/eval mode is restored afterwards.
    """
    _check_images(images, preprocessing)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = len(images)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    outputs: dict[str, torch.Tensor] = {}
    span = [0, 0]

    def store(key: str, value: torch.Tensor) -> None:
        if key not in outputs:
            outputs[key] = torch.empty(n, value.shape[1], dtype=torch.float32)
        outputs[key][span[0] : span[1]] = value  # copied now: later in-place ops cannot change it

    def hook(name: str):
        def fn(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            store(f"{name}/flat", out.flatten(1))
            if out.ndim == 4:
                store(f"{name}/pooled", out.mean(dim=(2, 3)))

        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in probe_layers(model)] if layers else []
    was_training = model.training
    model.eval()
    source = torch.from_numpy(images)
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, n, batch_size), desc="features", unit="batch", disable=None, leave=False):
                span[:] = [start, min(start + batch_size, n)]
                x = to_input(source[start : span[1]], preprocessing).to(device)
                store("features", model(x))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    features = outputs.pop("features", torch.empty(0, int(getattr(model, "feature_dim", 0))))
    return (features, outputs) if layers else features
