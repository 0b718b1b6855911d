"""glyphs: determinism, per-index independence, cache behaviour, class count, difficulty."""

from __future__ import annotations

import numpy as np
import pytest

from ncbench.data import TEST, TRAIN, load_dataset
from ncbench.data import glyphs


def load(tmp_path, **options):
    return load_dataset("glyphs", cache_dir=tmp_path, **{"classes": 5, "per_class": 6, **options})


def test_at_least_1000_usable_classes():
    usable = glyphs.usable_characters()
    assert len(usable) >= 1000 and usable == sorted(set(usable))
    assert ord("A") in usable and ord(" ") not in usable and 0x0301 not in usable  # no space, no combining accent


def test_same_options_same_bytes_across_a_fresh_cache(tmp_path):
    a = load(tmp_path / "one")
    b = load(tmp_path / "two")
    np.testing.assert_array_equal(a.images, b.images)
    assert a.class_names == b.class_names and a.transform == b.transform


def test_image_i_of_class_c_does_not_depend_on_how_many_are_asked(tmp_path):
    small = load(tmp_path, per_class=10)
    large = load(tmp_path, per_class=20)
    assert small.class_names == large.class_names
    for c in range(small.num_classes):
        np.testing.assert_array_equal(small.images[small.labels == c], large.images[large.labels == c][:10])
    # nor on which other classes are asked: render a single class directly
    cp = ord(small.class_names[2])
    np.testing.assert_array_equal(glyphs.render([cp], 10, 0, 32)[0][..., None], small.images[small.labels == 2])


def test_different_seeds_give_different_images(tmp_path):
    a = load(tmp_path, seed=0)
    b = load(tmp_path, seed=1)
    assert a.class_names != b.class_names  # seeded class subset
    cp = ord(a.class_names[0])
    x0, x1 = glyphs.render([cp], 4, 0, 32), glyphs.render([cp], 4, 1, 32)
    assert np.abs(x0.astype(int) - x1.astype(int)).mean() > 10


def test_images_vary_within_a_class_and_have_bright_strokes(tmp_path):
    ds = load(tmp_path, per_class=8, image_size=24)
    assert ds.images.shape == (40, 24, 24, 1)
    first = ds.images[ds.labels == 0].astype(float)
    assert np.abs(first - first.mean(0)).mean() > 5  # distortions: images of one class differ
    assert np.median(ds.images) < 80 and ds.images.max() > 200  # dark background, bright strokes


def test_per_class_split_first_three_quarters_train(tmp_path):
    ds = load(tmp_path, per_class=7)
    assert ds.split[:7].tolist() == [TRAIN] * 6 + [TEST]  # ceil(0.75 * 7) = 6
    assert ds.class_splits == {}


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
    first = load(tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("rendered again instead of reading the cache")

    monkeypatch.setattr(glyphs, "render", fail)
    np.testing.assert_array_equal(load(tmp_path).images, first.images)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape"])
def test_corrupt_cache_file_is_rendered_again(tmp_path, damage):
    first = load(tmp_path)
    (path,) = (tmp_path / "glyphs").glob("*.npz")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"not an npz file")
    else:
        np.savez(path, images=np.zeros((1, 2, 3, 4), np.uint8), codepoints=np.zeros(1, np.int64))
    np.testing.assert_array_equal(load(tmp_path).images, first.images)
    with np.load(path) as z:  # and the cache file was repaired
        assert z["images"].shape == (5, 6, 32, 32)


@pytest.mark.parametrize("options, message", [
    ({"classes": 0}, "option 'classes'"),
    ({"classes": 10**6}, "option 'classes'"),
    ({"per_class": 0}, "option 'per_class'"),
    ({"image_size": 4}, "option 'image_size'"),
])
def test_bad_options(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        load(tmp_path, **options)


def test_raw_pixel_ncc_is_informative(tmp_path):
    """5-way 5-shot 15-query nearest-class-mean on raw pixels: well above chance, far from perfect."""
    ds = load(tmp_path, classes=25, per_class=20, seed=7)
    x = ds.images.reshape(len(ds.images), -1).astype(np.float64) / 255.0
    rng = np.random.default_rng(0)
    accs = []
    for _ in range(100):
        classes = rng.choice(ds.num_classes, 5, replace=False)
        idx = [rng.permutation(np.flatnonzero(ds.labels == c)) for c in classes]
        means = np.stack([x[i[:5]].mean(0) for i in idx])
        queries = np.concatenate([x[i[5:20]] for i in idx])
        truth = np.repeat(np.arange(5), 15)
        pred = ((queries[:, None] - means[None]) ** 2).sum(-1).argmin(1)
        accs.append((pred == truth).mean())
    assert 0.35 < float(np.mean(accs)) < 0.75


def test_bytes_do_not_depend_on_torch_thread_count():
    import torch

    cps = glyphs.usable_characters()[100:103]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = glyphs.render(cps, 64, 5, 32)
        torch.set_num_threads(2)
        two = glyphs.render(cps, 64, 5, 32)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(one, two)
