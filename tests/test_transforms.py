"""Transform records: validation, ``decode``, and ``embed_images`` replaying each registered dataset's record
on the images as a user has them (files opened with PIL, torchvision items, stored arrays), which must give
the pipeline's features of the same dataset indices."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from ncbench.backbones import build_backbone
from ncbench.checkpoint import Card, load_checkpoint, save_checkpoint
from ncbench.data import TRAIN, DatasetError, ImageDataset, load_dataset
from ncbench.data.transforms import KEYS, check_transform, decode, decode_arrays, make_transform, plain_transform
from ncbench.data.preprocessing import pil_to_array, preprocessing_of
from ncbench.features import FeatureCache, embed_images
from ncbench.registry import DATASETS

from test_data import OMNIGLOT_SMALL, tiny_copy  # tiny copies in the real on-disk formats (tests/ is on sys.path)


# ---- the record ------------------------------------------------------------------------------------

def test_check_transform_completes_defaults_in_key_order():
    t = check_transform({"resize": (4, 5), "mode": "RGB"})
    assert t == {"mode": "RGB", "invert": False, "transpose": False, "resize": [4, 5], "resample": "bilinear"}
    assert list(t) == list(KEYS)
    assert plain_transform(1, (3, 3)) == make_transform("L", [3, 3])


@pytest.mark.parametrize("record, message", [
    ("L", r"transform: expected a dict with keys \['mode', 'invert', 'transpose', 'resize', 'resample'\], got str"),
    ({"mode": "L", "resize": [2, 2], "crop": [0, 0]}, r"transform: unknown key\(s\) \['crop'\]; accepted keys"),
    ({"mode": "L"}, r"transform: missing key\(s\) \['resize'\]"),
    ({"mode": "P", "resize": [2, 2]}, r"transform.mode: expected one of \['L', 'RGB'\], got 'P'"),
    ({"mode": "L", "resize": [2, 2], "invert": "yes"}, r"transform.invert: expected true or false, got 'yes'"),
    ({"mode": "L", "resize": [2, 2], "transpose": 1}, r"transform.transpose: expected true or false, got 1"),
    ({"mode": "L", "resize": [0, 2]}, r"transform.resize: expected \[H, W\], two positive integers, got \[0, 2\]"),
    ({"mode": "L", "resize": 28}, r"transform.resize: expected \[H, W\]"),
    ({"mode": "L", "resize": [2, 2], "resample": "cubic"}, r"transform.resample: expected one of \['nearest', 'bilinear'"),
])
def test_bad_records_name_the_field_and_what_was_expected(record, message):
    with pytest.raises(ValueError, match=message):
        check_transform(record)


def test_dataset_rejects_a_record_that_does_not_fit_its_images():
    images = np.zeros((2, 6, 6, 1), np.uint8)
    with pytest.raises(DatasetError, match=r"toy: transform gives \[5, 5, 1\] images \(mode 'L'\), the images are \[6, 6, 1\]"):
        ImageDataset("toy", images, np.array([0, 1]), ["a", "b"], np.zeros(2, np.int8), transform=make_transform("L", (5, 5)))
    with pytest.raises(DatasetError, match="toy: transform.mode"):
        ImageDataset("toy", images, np.array([0, 1]), ["a", "b"], np.zeros(2, np.int8), transform={"mode": "X", "resize": [6, 6]})


def test_decode_steps_in_documented_order_match_pil():
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (30, 17, 3), dtype=np.uint8), mode="RGB")
    t = make_transform("L", (9, 11), invert=True, transpose=True, resample="bilinear")
    by_pil = ImageOps.invert(im.convert("L")).transpose(Image.Transpose.TRANSPOSE).resize((11, 9), Image.Resampling.BILINEAR)
    out = decode(im, t)
    assert out.shape == (9, 11, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], np.asarray(by_pil))
    # the batched form used by array-backed loaders is the same function
    gray = np.asarray(im.convert("L"))
    np.testing.assert_array_equal(decode_arrays(gray[None], t)[0], out)
    rgb = make_transform("RGB", (30, 17))
    np.testing.assert_array_equal(decode(im, rgb), np.asarray(im))
    with pytest.raises(ValueError, match=r"images for transform mode 'RGB' must be uint8 \[N, h, w, 3\], got uint8 \[1, 30, 17\]"):
        decode_arrays(gray[None], rgb)


# ---- raw images as a user has them, one per dataset index ----------------------------------------------

def _files_per_class(ds, folders: list[Path], pattern: str) -> list[Path]:
    """File of every dataset index: class k's images, in dataset order, are its folder's sorted files."""
    out: list[Path | None] = [None] * len(ds.labels)
    for k, name in enumerate(ds.class_names):
        folder = next(f / name for f in folders if (f / name).is_dir())
        for i, path in zip(ds.indices(k), sorted(folder.glob(pattern)), strict=True):
            out[i] = path
    return out


def raw_images(name: str, ds, options: dict) -> list[Image.Image]:
    """Every image of the tiny copy of ``name`` as a user would hand it to embed_images."""
    root = Path(options.get("root", "."))
    if name in ("glyphs", "digits"):  # rendered / bundled in memory: the loader's uint8 images are the raw form
        return [Image.fromarray(im[..., 0]) for im in ds.images]
    if name == "omniglot":  # the PNG files (black strokes on white, 105x105, mode "1")
        files = _files_per_class(ds, [root / "images_background", root / "images_evaluation"], "*.png")
        return [Image.open(f) for f in files]
    if name == "mini-imagenet":  # the JPEG files, any size
        files = _files_per_class(ds, [root / s for s in ("train", "val", "test")], "*.jpg")
        return [Image.open(f) for f in files]
    if name in ("cifar-fs", "fc100"):  # rows of the pickles: 3072 bytes, channel planes
        rows = [pickle.loads((root / "cifar-100-python" / f).read_bytes())["data"] for f in ("train", "test")]
        return [Image.fromarray(r.reshape(3, 32, 32).transpose(1, 2, 0)) for r in np.concatenate(rows)]
    if name in ("emnist", "fashion-mnist"):  # what torchvision's dataset returns: ds[i][0] (EMNIST: transposed)
        from torchvision.datasets import EMNIST, FashionMNIST

        make = (lambda train: EMNIST(str(root), split="balanced", train=train)) if name == "emnist" else (
            lambda train: FashionMNIST(str(root), train=train))
        return [part[i][0] for part in (make(True), make(False)) for i in range(len(part))]
    raise AssertionError(f"no raw images for dataset {name!r}: add them to raw_images()")


def checkpoint(directory: Path, pp: dict) -> Path:
    """An untrained tiny-conv saved with the card preprocessing ``pp``."""
    torch.manual_seed(0)
    model = build_backbone("tiny-conv", in_channels=pp["channels"], image_size=pp["image_size"])
    card = Card(backbone="tiny-conv", backbone_options={"in_channels": pp["channels"], "image_size": pp["image_size"]},
                feature_dim=model.feature_dim, dataset="test", source_classes=["a", "b"], num_train=0, recipe={},
                seed=0, epochs=0, preprocessing=pp)
    save_checkpoint(directory, model, card)
    return directory


def pipeline_features(ckpt: Path, ds, idx: np.ndarray, cache: Path) -> torch.Tensor:
    model, card = load_checkpoint(ckpt)
    return FeatureCache(cache, model, card, ds).features(idx)


def some_indices(ds, n: int = 24) -> np.ndarray:
    return np.sort(np.random.default_rng(0).choice(len(ds.labels), min(n, len(ds.labels)), replace=False))


@pytest.mark.parametrize("name", DATASETS.names())
def test_embed_images_of_raw_images_equals_pipeline_features(name, tmp_path, monkeypatch):
    options = tiny_copy(name, tmp_path / "data", monkeypatch)
    ds = load_dataset(name, **options)
    pp = preprocessing_of(ds, np.flatnonzero(ds.split == TRAIN), source="train images")
    assert pp["transform"] == ds.transform
    ckpt = checkpoint(tmp_path / "ckpt", pp)
    idx = some_indices(ds)
    users = raw_images(name, ds, options)
    assert len(users) == len(ds.labels)
    given = [users[i] for i in idx]
    np.testing.assert_array_equal(pil_to_array(given, pp), ds.images[idx])  # the loader's own bytes
    torch.testing.assert_close(embed_images(ckpt, given), pipeline_features(ckpt, ds, idx, tmp_path / "cache"))


@pytest.mark.parametrize("name, step", [("omniglot", "invert"), ("emnist", "transpose")])
def test_without_replay_the_features_differ(name, step, tmp_path, monkeypatch):
    """The test above can fail: drop the dataset's step (or the whole record, as old cards had none) and the
    user's images no longer reach the model as the dataset's did."""
    options = tiny_copy(name, tmp_path / "data", monkeypatch)
    ds = load_dataset(name, **options)
    assert ds.transform[step] is True
    pp = preprocessing_of(ds, np.flatnonzero(ds.split == TRAIN))
    idx = some_indices(ds)
    given = [raw_images(name, ds, options)[i] for i in idx]
    expected = pipeline_features(checkpoint(tmp_path / "ok", pp), ds, idx, tmp_path / "cache")
    for label, broken in (("step", {**pp, "transform": {**pp["transform"], step: False}}),
                          ("old card", {k: v for k, v in pp.items() if k not in ("transform", "normalization")})):
        assert not np.array_equal(pil_to_array(given, broken), ds.images[idx]), label
        got = embed_images(checkpoint(tmp_path / label, broken), given)
        assert (got - expected).abs().max() > 1e-2, label


def test_card_transform_must_fit_its_image_size(tmp_path):
    ds = ImageDataset("toy", np.zeros((2, 6, 6, 1), np.uint8), np.array([0, 1]), ["a", "b"], np.zeros(2, np.int8))
    pp = preprocessing_of(ds, np.array([0, 1]))
    pp["transform"] = make_transform("L", (5, 5))
    with pytest.raises(ValueError, match=r"preprocessing.transform gives \[5, 5, 1\] images \(mode 'L'\), expected \[6, 6, 1\]"):
        embed_images(checkpoint(tmp_path, pp), [Image.new("L", (6, 6))])


@pytest.mark.skipif(not OMNIGLOT_SMALL.is_dir(), reason="../shared/data/omniglot-small is absent")
def test_embed_images_of_real_omniglot_pngs(tmp_path):
    """Real Omniglot: PNGs read straight from the archive, as a user has them."""
    archive = OMNIGLOT_SMALL / "images_background_small1.zip"
    ds = load_dataset("omniglot", root=archive, cache_dir=tmp_path / "unzipped")
    pp = preprocessing_of(ds, np.flatnonzero(ds.split == TRAIN), source="train images")
    ckpt = checkpoint(tmp_path / "ckpt", pp)
    idx = some_indices(ds, 30)
    with zipfile.ZipFile(archive) as z:
        members = sorted(n for n in z.namelist() if n.endswith(".png"))
        by_class = {}
        for m in members:
            by_class.setdefault("/".join(m.split("/")[-3:-1]), []).append(m)
        given = []
        for i in idx:
            k = ds.labels[i]
            member = by_class[ds.class_names[k]][int(np.searchsorted(ds.indices(k), i))]
            given.append(Image.open(io.BytesIO(z.read(member))))
    assert given[0].mode == "1" and given[0].size == (105, 105)
    np.testing.assert_array_equal(pil_to_array(given, pp), ds.images[idx])
    torch.testing.assert_close(embed_images(ckpt, given), pipeline_features(ckpt, ds, idx, tmp_path / "cache"))
