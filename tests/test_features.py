"""Feature extraction with layer taps, and embed_images from a saved checkpoint."""

import numpy as np
import pytest
import torch
from PIL import Image

from ncbench.backbones import build_backbone
from ncbench.checkpoint import Card, save_checkpoint
from ncbench.backbones import extract
from ncbench.data.preprocessing import to_input
from ncbench.features import embed_images

PP = {"image_size": [12, 12], "channels": 1, "mean": [0.4], "std": [0.2]}


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (10, 12, 12, 1), dtype=np.uint8)


@pytest.fixture
def conv():
    torch.manual_seed(0)
    return build_backbone("tiny-conv", in_channels=1, image_size=12)


def test_to_input_normalises_and_moves_channels_first(images):
    x = to_input(torch.from_numpy(images[:2]), PP)
    assert x.shape == (2, 1, 12, 12) and x.dtype == torch.float32
    expected = (images[:2].astype(np.float32) / 255 - 0.4) / 0.2
    np.testing.assert_allclose(x.numpy(), expected.transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-6)


def test_extract_matches_model_and_taps_every_stage(conv, images):
    conv.train()
    features, layers = extract(conv, images, PP, batch_size=3, layers=True)
    assert conv.training  # mode restored
    assert not any(m._forward_hooks for m in conv.modules())  # hooks removed
    with torch.no_grad():
        expected = conv.eval()(to_input(torch.from_numpy(images), PP))
        block1 = conv.stages.block1(to_input(torch.from_numpy(images), PP))
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-6)
    assert list(layers) == ["block1/flat", "block1/pooled", "block2/flat", "block2/pooled"]
    assert layers["block1/flat"].shape == (10, 4 * 6 * 6) and layers["block1/pooled"].shape == (10, 4)
    torch.testing.assert_close(layers["block1/flat"], block1.flatten(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layers["block1/pooled"], block1.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layers["block2/flat"], features)  # conv features = last map flattened
    assert features.dtype == torch.float32 and features.device.type == "cpu"


def test_extract_mlp_stages_have_no_pooled_variant(images):
    model = build_backbone("tiny-mlp", in_channels=1, image_size=12)
    features, layers = extract(model, images, PP, layers=True)
    assert list(layers) == ["layer1/flat", "layer2/flat"]
    torch.testing.assert_close(layers["layer2/flat"], features)


def test_extract_does_not_depend_on_batch_size(conv, images):
    torch.testing.assert_close(extract(conv, images, PP, batch_size=4), extract(conv, images, PP), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "bad, message",
    [(np.zeros((2, 12, 12, 1), np.float32), r"uint8 array \[N, H, W, C\]"),
     (np.zeros((2, 12, 12, 3), np.uint8), r"expects \[N, 12, 12, 1\]"),
     (np.zeros((2, 12, 12), np.uint8), "uint8 array")],
)
def test_extract_rejects_bad_images(conv, bad, message):
    with pytest.raises(ValueError, match=message):
        extract(conv, bad, PP)


def test_extract_rejects_bad_preprocessing(conv, images):
    with pytest.raises(ValueError, match="preprocessing"):
        extract(conv, images, {"image_size": [12, 12], "channels": 1, "mean": [0.5, 0.5], "std": [0.5]})
    with pytest.raises(ValueError, match="batch_size"):
        extract(conv, images, PP, batch_size=0)


def _checkpoint(tmp_path, model, pp):
    card = Card(backbone="tiny-conv", backbone_options={"in_channels": pp["channels"], "image_size": pp["image_size"]},
                feature_dim=model.feature_dim, dataset="synthetic", source_classes=["a", "b"], num_train=0,
                recipe={}, seed=0, epochs=0, preprocessing=pp)
    save_checkpoint(tmp_path, model, card)
    return tmp_path


def test_embed_images_matches_extract(tmp_path, conv, images):
    directory = _checkpoint(tmp_path, conv, PP)
    pil = [Image.fromarray(im[:, :, 0], mode="L") for im in images]
    assert torch.equal(embed_images(directory, pil), extract(conv, images, PP))


def test_embed_images_converts_mode_and_resizes(tmp_path, conv):
    directory = _checkpoint(tmp_path, conv, PP)
    rgb = Image.fromarray(np.full((30, 20, 3), 200, np.uint8), mode="RGB")
    gray = Image.fromarray(np.full((12, 12), 200, np.uint8), mode="L")
    out = embed_images(directory, [rgb, gray])
    assert out.shape == (2, conv.feature_dim)
    torch.testing.assert_close(out[0], out[1])  # a uniform image stays uniform after convert + resize


def test_feature_cache_computes_once_and_matches_extract(tmp_path, conv, images, monkeypatch):
    import ncbench.features as features_module
    from ncbench.checkpoint import load_checkpoint
    from ncbench.data.base import ImageDataset
    from ncbench.features import FeatureCache

    ds = ImageDataset("synthetic", images, np.arange(10) % 2, ["a", "b"], np.zeros(10, np.int8))
    model, card = load_checkpoint(_checkpoint(tmp_path / "ckpt", conv, PP))
    idx = np.array([7, 1, 4])
    cache = FeatureCache(tmp_path / "cache", model, card, ds)
    features = cache.features(idx)
    expected = extract(model, images[idx], PP)
    assert torch.equal(features, expected)
    assert len(list((tmp_path / "cache" / card.sha256[:16]).glob("*.safetensors"))) == 1

    monkeypatch.setattr(features_module, "extract", lambda *a, **k: pytest.fail("recomputed cached features"))
    again = FeatureCache(tmp_path / "cache", model, card, ds)
    assert torch.equal(again.features(idx), expected)
    with pytest.raises(pytest.fail.Exception):
        again.features(np.array([0, 1]))  # other indices are another cache entry
