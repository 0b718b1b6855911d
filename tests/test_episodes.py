import numpy as np
import pytest

from ncbench.data.base import TEST, TRAIN, ImageDataset
from ncbench.episodes import (EpisodeError, draw_source_classes, sample_episodes, source_images,
                              split_pools)


def make_dataset(k=30, per_class=12, class_splits=None):
    labels = np.repeat(np.arange(k), per_class)
    split = np.tile(np.r_[np.full(per_class - 4, TRAIN), np.full(4, TEST)], k).astype(np.int8)
    images = np.zeros((len(labels), 4, 4, 1), np.uint8)
    return ImageDataset("toy", images, labels, [f"c{i}" for i in range(k)], split, class_splits or {})


def test_seeded_pools_are_disjoint_cover_and_reproducible():
    ds = make_dataset()
    src, tgt = split_pools(ds, source_fraction=0.6, seed=3)
    assert len(src) == 18 and len(tgt) == 12
    assert not set(src) & set(tgt) and set(src) | set(tgt) == set(range(30))
    src2, tgt2 = split_pools(ds, source_fraction=0.6, seed=3)
    assert np.array_equal(src, src2) and np.array_equal(tgt, tgt2)
    assert not np.array_equal(src, split_pools(ds, source_fraction=0.6, seed=4)[0])


def test_standard_class_split_pools_and_errors():
    ds = make_dataset(class_splits={"train": list(range(20)), "val": [20, 21], "test": list(range(22, 30))})
    src, tgt = split_pools(ds, ["train", "val"], ["test"])
    assert list(src) == list(range(22)) and list(tgt) == list(range(22, 30))
    with pytest.raises(EpisodeError, match="unknown class split \\['tst'\\]"):
        split_pools(ds, ["train"], ["tst"])
    with pytest.raises(EpisodeError, match="share 2 classes"):
        split_pools(ds, ["train", "val"], ["val"])


def test_source_draws_are_nested_and_sized():
    pool = np.arange(100, 160)
    small, big = draw_source_classes(pool, 5, seed=0), draw_source_classes(pool, 20, seed=0)
    assert len(small) == 5 and len(big) == 20 and set(small) <= set(big) and set(big) <= set(pool)
    assert list(small) == sorted(small)
    with pytest.raises(EpisodeError, match="61 asked, the source pool has 60"):
        draw_source_classes(pool, 61, seed=0)


def test_source_images_takes_train_and_test_split():
    ds = make_dataset()
    train, test = source_images(ds, np.array([2, 5]), 8, 4)
    assert len(train) == 16 and len(test) == 8
    assert (ds.split[train] == TRAIN).all() and (ds.split[test] == TEST).all()
    assert list(ds.labels[train]) == [2] * 8 + [5] * 8
    with pytest.raises(EpisodeError, match="images_per_class.train: 9 asked"):
        source_images(ds, np.array([2]), 9, 4)


def test_episodes_balanced_valid_and_reproducible():
    ds = make_dataset(k=30, per_class=12)
    pool = np.arange(10, 30)
    e = sample_episodes(ds.labels, pool, ways=5, shots=3, queries=4, count=200, seed=7)
    assert e.support.shape == (200, 15) and e.query.shape == (200, 20) and e.classes.shape == (200, 5)
    for i in range(200):
        cls = e.classes[i]
        assert len(set(cls)) == 5 and set(cls) <= set(pool)
        # every support/query image belongs to the class its episode label names
        assert np.array_equal(ds.labels[e.support[i]], cls[e.support_labels[i]])
        assert np.array_equal(ds.labels[e.query[i]], cls[e.query_labels[i]])
        assert np.array_equal(np.bincount(e.support_labels[i], minlength=5), [3] * 5)
        assert np.array_equal(np.bincount(e.query_labels[i], minlength=5), [4] * 5)
        assert len(set(e.support[i]) | set(e.query[i])) == 35  # no image used twice
    again = sample_episodes(ds.labels, pool, ways=5, shots=3, queries=4, count=200, seed=7)
    assert again.digest == e.digest and np.array_equal(again.query, e.query)
    assert sample_episodes(ds.labels, pool, 5, 3, 4, 200, seed=8).digest != e.digest
    # classes are used roughly uniformly
    counts = np.bincount(e.classes.ravel(), minlength=30)[10:]
    assert counts.min() > 25 and counts.max() < 80


def test_episode_errors_name_the_field():
    ds = make_dataset(k=6, per_class=12)
    with pytest.raises(EpisodeError, match="episodes.ways: 7-way"):
        sample_episodes(ds.labels, np.arange(6), 7, 1, 1, 5, 0)
    with pytest.raises(EpisodeError, match="shots \\+ queries = 13"):
        sample_episodes(ds.labels, np.arange(6), 5, 5, 8, 5, 0)
    with pytest.raises(EpisodeError, match="episodes.shots must be >= 1"):
        sample_episodes(ds.labels, np.arange(6), 5, 0, 8, 5, 0)
