"""Dataset registry: every registered loader, each real loader on a tiny copy in its real on-disk format,
and the error messages. Nothing here touches the network."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ncbench.data import TEST, TRAIN, DatasetError, ImageDataset, load_dataset
from ncbench.data.cifar import fc100_lists
from ncbench.data.common import split_list
from ncbench.data.transforms import MODES, check_transform
from ncbench.registry import DATASETS, UnknownNameError

OMNIGLOT_SMALL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "omniglot-small"
CIFAR_FINE = sorted(n for names in fc100_lists().values() for n in names)  # CIFAR-100's 100 fine names


# ---- tiny copies in the real on-disk formats -------------------------------------------------------

def write_cifar100(root: Path, monkeypatch, per_class=(2, 1)) -> None:
    """``root/cifar-100-python/{train,test,meta}`` pickles as CIFAR-100 ships them (python dicts with
    ``data`` [N, 3072] uint8 rows, ``fine_labels``, ``coarse_labels``; ``meta`` with ``fine_label_names``).
    torchvision checks each file's md5 against the real dataset's, so the test registers the tiny
    files' md5 sums on the ``CIFAR100`` class: the files still go through torchvision's own reader."""
    from torchvision.datasets import CIFAR100

    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    md5 = {}
    for fname, n in zip(("train", "test"), per_class):
        labels = np.repeat(np.arange(100), n)
        entry = {"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8),
                 "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist()}
        (folder / fname).write_bytes(pickle.dumps(entry))
        md5[fname] = hashlib.md5((folder / fname).read_bytes()).hexdigest()
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": CIFAR_FINE,
                                                "coarse_label_names": [f"super{i}" for i in range(20)]}))
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5["train"]]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5["test"]]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": hashlib.md5((folder / "meta").read_bytes()).hexdigest()})


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx-ubyte file (the MNIST family's raw format): magic 0x08 (uint8) + ndim, big-endian dims."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_mnist_like(raw: Path, prefixes: tuple[str, str], num_classes: int, per_class: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = {}
    for prefix in prefixes:
        labels = np.repeat(np.arange(num_classes), per_class).astype(np.uint8)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[prefix] = images
    return out


def write_omniglot(folder: Path, alphabets: dict[str, int], drawers: int = 4) -> None:
    """``folder/<alphabet>/<character>/<id>_<drawer>.png``: 105x105 1-bit images, black strokes on white."""
    rng = np.random.default_rng(2)
    for alphabet, n_chars in alphabets.items():
        for c in range(1, n_chars + 1):
            char_dir = folder / alphabet / f"character{c:02d}"
            char_dir.mkdir(parents=True)
            for d in range(1, drawers + 1):
                ink = np.ones((105, 105), bool)
                r, col = rng.integers(10, 80, 2)
                ink[r : r + 15, col : col + 4] = False
                Image.fromarray(ink).convert("1").save(char_dir / f"0{c:03d}_{d:02d}.png")


def write_image_folder(root: Path, classes: dict[str, list[str]], per_class: int = 4) -> None:
    rng = np.random.default_rng(3)
    for split, wnids in classes.items():
        for wnid in wnids:
            (root / split / wnid).mkdir(parents=True)
            for i in range(per_class):
                h, w = rng.integers(60, 120, 2)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / wnid / f"{wnid}_{i:04d}.jpg")


def ravi_sample() -> dict[str, list[str]]:
    return {s: split_list(f"mini_imagenet_{s}.txt")[:n] for s, n in (("train", 3), ("val", 1), ("test", 2))}


def tiny_copy(name: str, tmp_path: Path, monkeypatch) -> dict:
    """Options that load ``name`` from a tiny copy built under ``tmp_path``."""
    if name == "glyphs":
        return {"classes": 6, "per_class": 8, "cache_dir": tmp_path / "cache"}
    if name == "digits":
        return {}
    if name in ("cifar-fs", "fc100"):
        write_cifar100(tmp_path, monkeypatch)
        return {"root": tmp_path}
    if name == "emnist":
        write_mnist_like(tmp_path / "EMNIST" / "raw", ("emnist-balanced-train", "emnist-balanced-test"), 47)
        return {"root": tmp_path}
    if name == "fashion-mnist":
        write_mnist_like(tmp_path / "FashionMNIST" / "raw", ("train", "t10k"), 10)
        return {"root": tmp_path}
    if name == "omniglot":
        write_omniglot(tmp_path / "images_background", {"Alpha": 3, "Beta": 2})
        write_omniglot(tmp_path / "images_evaluation", {"Gamma": 2})
        return {"root": tmp_path, "image_size": 20}
    if name == "mini-imagenet":
        write_image_folder(tmp_path, ravi_sample())
        return {"root": tmp_path, "image_size": 24}
    raise AssertionError(f"no tiny copy for dataset {name!r}: add one to tiny_copy()")


def check_invariants(ds: ImageDataset) -> None:
    n, k = len(ds.labels), ds.num_classes
    assert ds.images.dtype == np.uint8 and ds.images.ndim == 4 and ds.images.shape[0] == n > 0
    assert ds.channels in (1, 3) and ds.images.shape[1] == ds.images.shape[2]
    assert ds.labels.dtype == np.int64 and set(np.unique(ds.labels)) == set(range(k))
    assert ds.split.dtype == np.int8 and set(np.unique(ds.split)) == {TRAIN, TEST}
    for c in range(k):
        assert len(ds.indices(c, TRAIN)) > 0 and len(ds.indices(c, TEST)) > 0, ds.class_names[c]
    used = [i for idx in ds.class_splits.values() for i in idx]
    assert len(used) == len(set(used)), "class splits overlap"
    assert all(0 <= i < k for i in used)
    assert not hasattr(ds, "mean") and not hasattr(ds, "std")  # fitted on chosen images, not by the loader
    assert check_transform(ds.transform) == ds.transform  # a complete, valid record...
    assert ds.transform["resize"] == list(ds.image_size) and MODES[ds.transform["mode"]] == ds.channels  # ...of these images
    assert json.loads(json.dumps(ds.transform)) == ds.transform  # JSON-serialisable, as the card stores it
    assert ds.images.std() > 0


# ---- registry walk ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", DATASETS.names())
def test_every_registered_dataset_loads(name, tmp_path, monkeypatch):
    ds = load_dataset(name, **tiny_copy(name, tmp_path, monkeypatch))
    assert ds.name == name
    check_invariants(ds)


def test_registered_names_are_the_documented_ones():
    """docs/datasets.md's table has one row per registered dataset (the registry is the list; the doc follows)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text().split("## Transform records")[0]
    assert sorted(re.findall(r"^\| `([\w-]+)` \|", doc, flags=re.M)) == DATASETS.names()


# ---- errors ----------------------------------------------------------------------------------------

def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="did you mean 'omniglot'"):
        load_dataset("omniglott")


def test_unknown_option_names_it_and_the_accepted_ones():
    with pytest.raises(DatasetError, match=r"unknown option\(s\) 'shots'.*accepted options: download, root, seed"):
        load_dataset("digits", shots=5)


@pytest.mark.parametrize("name", ["cifar-fs", "fc100", "emnist", "fashion-mnist", "omniglot", "mini-imagenet"])
def test_missing_root_names_root_and_download(name, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=f"{name}: root '{missing}' does not exist.*download=True"):
        load_dataset(name, root=missing)
    with pytest.raises(DatasetError, match=f"{name}: option 'root' is required"):
        load_dataset(name)


@pytest.mark.parametrize("name", ["cifar-fs", "emnist", "fashion-mnist", "omniglot", "mini-imagenet"])
def test_incomplete_root_names_what_was_expected(name, tmp_path):
    with pytest.raises(DatasetError, match=f"{name}: root '{tmp_path}' is missing or has an incomplete copy.*expected"):
        load_dataset(name, root=tmp_path)


def test_bad_option_values_are_rejected(tmp_path):
    with pytest.raises(DatasetError, match="emnist: option 'split'"):
        load_dataset("emnist", root=tmp_path, split="nope")
    with pytest.raises(DatasetError, match="omniglot: option 'image_size'"):
        load_dataset("omniglot", root=tmp_path, image_size=0)


# ---- each real format, through the real code path ----------------------------------------------------

def test_cifar_fs_and_fc100_standard_class_splits(tmp_path, monkeypatch):
    write_cifar100(tmp_path, monkeypatch)
    fs = load_dataset("cifar-fs", root=tmp_path)
    assert fs.images.shape == (300, 32, 32, 3) and fs.class_names == CIFAR_FINE
    assert {k: len(v) for k, v in fs.class_splits.items()} == {"train": 64, "val": 16, "test": 20}
    assert [fs.class_names[i] for i in fs.class_splits["test"]][:3] == ["baby", "bed", "bicycle"]
    assert ((fs.split == TRAIN).sum(), (fs.split == TEST).sum()) == (200, 100)  # official train / test files
    # torchvision's reader turns each 3072-byte row into [32, 32, 3] (channel planes -> HWC)
    row = pickle.loads((tmp_path / "cifar-100-python" / "train").read_bytes())["data"][0]
    np.testing.assert_array_equal(fs.images[0], row.reshape(3, 32, 32).transpose(1, 2, 0))
    fc = load_dataset("fc100", root=tmp_path)
    sizes = {k: len(v) for k, v in fc.class_splits.items()}
    assert sizes == {"train": 60, "val": 20, "test": 20}
    assert sorted(i for v in fc.class_splits.values() for i in v) == list(range(100))
    people = {"baby", "boy", "girl", "man", "woman"}  # superclass 14 is an FC100 test superclass
    assert people <= {fc.class_names[i] for i in fc.class_splits["test"]}


def test_emnist_reads_raw_idx_and_transposes(tmp_path):
    raw = write_mnist_like(tmp_path / "EMNIST" / "raw", ("emnist-balanced-train", "emnist-balanced-test"), 47)
    ds = load_dataset("emnist", root=tmp_path, seed=3)
    assert ds.num_classes == 47 and ds.images.shape == (2 * 47 * 3, 28, 28, 1)
    np.testing.assert_array_equal(ds.images[0, :, :, 0], raw["emnist-balanced-train"][0].T)
    assert ds.class_names[:3] == ["0", "1", "2"]
    assert {k: len(v) for k, v in ds.class_splits.items()} == {"train": 29, "val": 9, "test": 9}
    assert load_dataset("emnist", root=tmp_path, seed=4).class_splits != ds.class_splits


def test_fashion_mnist_official_split(tmp_path):
    raw = write_mnist_like(tmp_path / "FashionMNIST" / "raw", ("train", "t10k"), 10, per_class=2)
    ds = load_dataset("fashion-mnist", root=tmp_path)
    np.testing.assert_array_equal(ds.images[ds.split == TEST][:, :, :, 0], raw["t10k"])
    assert ds.class_names[0] == "T-shirt/top" and ds.num_classes == 10


def test_omniglot_folder_background_evaluation_and_zip(tmp_path):
    write_omniglot(tmp_path / "data" / "images_background", {"Alpha": 3, "Beta": 2})
    write_omniglot(tmp_path / "data" / "images_evaluation", {"Gamma": 2})
    both = load_dataset("omniglot", root=tmp_path / "data", image_size=28)
    assert both.class_names[:2] == ["Alpha/character01", "Alpha/character02"] and both.num_classes == 7
    assert both.class_splits == {"train": [0, 1, 2, 3, 4], "test": [5, 6]}
    assert both.images.shape == (28, 28, 28, 1)
    assert both.images.mean() < 40 and both.images.max() > 150  # inverted: bright strokes on dark
    assert list(both.split[:4]) == [TRAIN, TRAIN, TRAIN, TEST]  # 4 drawers: 3 TRAIN, 1 TEST
    # torchvision root (omniglot-py/), one set only -> seeded class split
    (tmp_path / "tv" / "omniglot-py").mkdir(parents=True)
    (tmp_path / "data" / "images_background").rename(tmp_path / "tv" / "omniglot-py" / "images_background")
    tv = load_dataset("omniglot", root=tmp_path / "tv", image_size=28)
    assert tv.num_classes == 5 and set(tv.class_splits) == {"train", "val", "test"}
    np.testing.assert_array_equal(tv.images, both.images[:20])
    # a .zip archive of a set folder, unzipped once into the cache
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted((tmp_path / "tv" / "omniglot-py").rglob("*.png")):
            z.write(f, f.relative_to(tmp_path / "tv" / "omniglot-py"))
    zipped = load_dataset("omniglot", root=archive, image_size=28, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(zipped.images, tv.images)
    assert len(list((tmp_path / "cache" / "omniglot").iterdir())) == 1
    again = load_dataset("omniglot", root=archive, image_size=28, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.images, zipped.images)


@pytest.mark.skipif(not OMNIGLOT_SMALL.is_dir(), reason="../shared/data/omniglot-small is absent")
def test_omniglot_small_real_archive(tmp_path):
    ds = load_dataset("omniglot", root=OMNIGLOT_SMALL / "images_background_small1.zip", cache_dir=tmp_path)
    assert (ds.num_classes, len(ds.labels), ds.image_size) == (136, 2720, (28, 28))
    assert np.bincount(ds.labels).tolist() == [20] * 136 and (ds.split == TRAIN).sum() == 136 * 15
    assert ds.class_names[0] == "Balinese/character01"
    assert ds.images.mean() / 255 < 0.2  # mostly dark background after inversion
    assert ds.transform == {"mode": "L", "invert": True, "transpose": False, "resize": [28, 28], "resample": "bilinear"}


def test_mini_imagenet_image_folder_and_saved_datasets(tmp_path):
    import datasets

    sample = ravi_sample()
    write_image_folder(tmp_path / "folder", sample)
    ds = load_dataset("mini-imagenet", root=tmp_path / "folder", image_size=24)
    assert ds.images.shape == (24, 24, 24, 3) and ds.class_names == sorted(w for v in sample.values() for w in v)
    assert {k: sorted(ds.class_names[i] for i in v) for k, v in ds.class_splits.items()} == {k: sorted(v) for k, v in sample.items()}
    # the same images as a Hugging Face dataset written by save_to_disk
    files = sorted((tmp_path / "folder").rglob("*.jpg"), key=lambda p: p.name)
    names = sorted({f.parent.name for f in files})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    hf = datasets.Dataset.from_dict({"image": [str(f) for f in files],
                                     "label": [names.index(f.parent.name) for f in files]}, features=features)
    hf.save_to_disk(str(tmp_path / "saved"))
    saved = load_dataset("mini-imagenet", root=tmp_path / "saved", image_size=24)
    assert saved.class_names == ds.class_names and saved.class_splits == ds.class_splits
    assert np.bincount(saved.labels).tolist() == [4] * 6
    # JPEG decoding is the same in both paths: identical pixels
    np.testing.assert_array_equal(saved.images, ds.images)
