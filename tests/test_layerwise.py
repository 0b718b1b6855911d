"""Layer curves (ncbench.layerwise): streamed over every image, equal to the materialised computation,
identical taps probed once, L of every registered backbone, exact-count depth, and the serialised form."""

import numpy as np
import pytest
import torch

import ncbench.metrics as M
from ncbench.backbones import build_backbone, extract
from ncbench.layerwise import LayerCurves, layer_collapse
from ncbench.registry import BACKBONES

PP1 = {"image_size": [12, 12], "channels": 1, "mean": [0.4], "std": [0.2]}
PP3 = {"image_size": [32, 32], "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}


def labelled_images(n, shape, classes, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    base = rng.integers(0, 256, (classes, *shape))
    noise = rng.integers(-40, 41, (n, *shape))
    return np.clip(base[y] + noise, 0, 255).astype(np.uint8), y


def test_streamed_curves_equal_the_materialised_ones():
    torch.manual_seed(0)
    model = build_backbone("tiny-conv", in_channels=1, image_size=12)
    images, y = labelled_images(23, (12, 12, 1), 3)
    curves = layer_collapse(model, images, y, PP1, eps=0.2, batch_size=4)  # 6 batches, the last of 3
    features, taps = extract(model, images, PP1, layers=True)
    want = {"flat": [taps["block1/flat"], features], "pooled": [taps["block1/pooled"], taps["block2/pooled"], features]}
    for variant, layers in want.items():
        ref = M.layer_curves(layers, y, eps=0.2)
        rows = curves.variant(variant)
        assert [r["ncc_errors"] for r in rows] == ref["ncc_errors"]
        assert all(r["n"] == 23 for r in rows)
        assert [r["cdnv"] for r in rows] == pytest.approx(ref["cdnv"], rel=1e-9)
        assert curves.depths[variant] == ref["effective_depth"]


def test_identical_taps_are_probed_once():
    """tiny-conv's flattened last block is its feature vector: one layer, named penultimate."""
    torch.manual_seed(0)
    model = build_backbone("tiny-conv", in_channels=1, image_size=12)
    images, y = labelled_images(10, (12, 12, 1), 2)
    features, taps = extract(model, images, PP1, layers=True)
    assert torch.equal(taps["block2/flat"], features)
    curves = layer_collapse(model, images, y, PP1)
    assert [r["layer"] for r in curves.variant("flat")] == ["block1", "penultimate"]
    assert [r["layer"] for r in curves.variant("pooled")] == ["block1", "block2", "penultimate"]


# L per variant of every registered backbone: the table in docs/metrics.md
LAYERS = {
    "conv4": (["block1", "block2", "block3", "penultimate"], ["block1", "block2", "block3", "block4", "penultimate"]),
    "resnet12": (["block1", "block2", "block3", "block4", "penultimate"], ["block1", "block2", "block3", "penultimate"]),
    "resnet18": (["stem", "layer1", "layer2", "layer3", "layer4", "penultimate"],
                 ["stem", "layer1", "layer2", "layer3", "penultimate"]),
    "wrn-28-4": (["stem", "group1", "group2", "group3", "post", "penultimate"],
                 ["stem", "group1", "group2", "group3", "penultimate"]),
    "mlp": (["layer1", "layer2", "layer3", "penultimate"], []),
    "tiny-conv": (["block1", "penultimate"], ["block1", "block2", "penultimate"]),
    "tiny-mlp": (["layer1", "penultimate"], []),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layers_of_every_registered_backbone(name):
    assert set(LAYERS) == set(BACKBONES.names())
    torch.manual_seed(0)
    model = build_backbone(name, in_channels=3, image_size=32)
    images, y = labelled_images(6, (32, 32, 3), 2)
    curves = layer_collapse(model, images, y, PP3, batch_size=4)
    flat, pooled = LAYERS[name]
    assert [r["layer"] for r in curves.variant("flat")] == flat
    assert [r["layer"] for r in curves.variant("pooled")] == pooled


def test_depth_uses_exact_counts_and_the_given_eps():
    rows = [{"layer": f"l{i}", "variant": "flat", "ncc_error": k / 200, "ncc_errors": k, "n": 200, "cdnv": 1.0}
            for i, k in enumerate([40, 3, 2, 0])]
    assert LayerCurves(rows, 0.01).depths == {"flat": 3}  # 2 of 200 = 0.01 exactly
    assert LayerCurves(rows, 0.015).depths == {"flat": 2}
    assert LayerCurves(rows, 0.0).depths == {"flat": 4}
    assert LayerCurves(rows[:3], 0.0).depths == {"flat": 3}  # never reached: L
    assert LayerCurves(rows, 0.0).reached == {"flat": True}  # reached at the last layer, L = 4
    assert LayerCurves(rows[:3], 0.0).reached == {"flat": False}


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(ncc_errors=201), "0 <= ncc_errors <= n"),
    (lambda r: r.update(n=2.0), "0 <= ncc_errors <= n"),
    (lambda r: r.update(cdnv=float("nan")), "cdnv must be a finite float"),
    (lambda r: r.update(variant="avg"), "variant must be one of"),
    (lambda r: r.pop("n"), "expected keys"),
])
def test_malformed_rows_are_refused(change, message):
    row = {"layer": "b", "variant": "flat", "ncc_error": 0.01, "ncc_errors": 2, "n": 200, "cdnv": 0.5}
    change(row)
    with pytest.raises(ValueError, match=message):
        LayerCurves([row], 0.01)
    with pytest.raises(ValueError, match="eps must be an error rate"):
        LayerCurves([], 2.0)
