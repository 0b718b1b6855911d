"""No peeking at target classes: normalisation statistics come from the source pool's TRAIN images only
(DESIGN §1), are shared by every unit of a task, and are recorded in the card."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import ncbench.unit
from ncbench.checkpoint import read_card
from ncbench.data import TRAIN, ImageDataset
from ncbench.data.base import mean_std
from ncbench.data.preprocessing import preprocessing_of
from ncbench.features import embed_images
from ncbench.unit import RunOptions, features_here, plan_units, pretrain_here, target_indices, unit_data
from ncbench.tasks import load_task

QUICK = {"epochs": 1, "batch_size": 16, "track_every": 0}


def brute_force(images: np.ndarray) -> tuple[list[float], list[float]]:
    """float64 per-channel mean / population std of uint8 images [n, H, W, C], in [0, 1] units."""
    x = images.astype(np.float64).reshape(-1, images.shape[-1]) / 255
    return list(x.mean(0)), list(x.std(0))


def test_mean_std_is_exact_over_the_given_indices():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 5, 4, 3), dtype=np.uint8)
    idx = np.array([3, 7, 7, 40])  # a repeated index counts twice
    mean, std = mean_std(images, idx)
    np.testing.assert_allclose(mean, brute_force(images[idx])[0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(std, brute_force(images[idx])[1], rtol=0, atol=1e-15)
    assert mean_std(np.full((2, 3, 3, 1), 9, np.uint8)) == ((9 / 255,), (1e-6,))  # constant images: std floor
    with pytest.raises(ValueError, match="idx must be a non-empty 1-D integer array"):
        mean_std(images, np.array([], np.int64))


def test_preprocessing_of_uses_exactly_norm_idx():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 6, 6, 1), dtype=np.uint8)
    ds = ImageDataset("toy", images, np.arange(12) % 3, ["a", "b", "c"], np.zeros(12, np.int8))
    idx = np.flatnonzero(ds.labels != 2)
    pp = preprocessing_of(ds, idx, source="classes a and b")
    assert pp["mean"] == pytest.approx(brute_force(images[idx])[0], abs=1e-12)
    assert pp["std"] == pytest.approx(brute_force(images[idx])[1], abs=1e-12)
    assert pp["normalization"] == {"source": "classes a and b", "images": 8, "classes": 2}
    with pytest.raises(ValueError, match=r"norm_idx must index the dataset's 12 images, got values in 0..12"):
        preprocessing_of(ds, np.array([0, 12]))
    with pytest.raises(ValueError, match="norm_idx must be a non-empty 1-D integer array"):
        preprocessing_of(ds, np.array([0.0]))


def test_card_statistics_are_the_source_pool_train_images(tiny_task_file, tmp_path):
    task = load_task(tiny_task_file(pretrain=QUICK))
    opts = RunOptions(out=tmp_path / "runs", results=tmp_path / "results")
    units = plan_units(task, opts)  # s = 4 and s = 8
    data = unit_data(units[0], opts)
    ds = data.dataset
    pool_train = np.isin(ds.labels, data.source_pool) & (ds.split == TRAIN)
    mean, std = brute_force(ds.images[pool_train])
    cards = [read_card(pretrain_here(u, opts)) for u in units]
    for card in cards:
        assert card.preprocessing["mean"] == [pytest.approx(mean[0], abs=1e-12)]
        assert card.preprocessing["std"] == [pytest.approx(std[0], abs=1e-12)]
        assert card.preprocessing["normalization"] == {"source": "source-pool train images",
                                                       "images": int(pool_train.sum()), "classes": len(data.source_pool)}
    assert cards[0].preprocessing == cards[1].preprocessing  # every s of the task shares one normalisation
    # not what the whole dataset's TRAIN images give (those include the target pool)
    assert brute_force(ds.images[ds.split == TRAIN])[0][0] != pytest.approx(mean[0], abs=1e-6)

    # embed_images on raw images still equals the pipeline's features (source and target images)
    feats = features_here(units[0], opts, data)
    tgt = target_indices(data)
    for idx, expected in ((data.train_idx, feats.train), (tgt, feats.target)):
        given = [Image.fromarray(ds.images[i][..., 0]) for i in idx]
        torch.testing.assert_close(embed_images(feats.checkpoint, given), expected)


def test_target_pool_pixels_do_not_reach_the_checkpoint(tiny_task_file, tmp_path, monkeypatch):
    task = load_task(tiny_task_file(pretrain=QUICK, source_classes=[4]))
    opts = RunOptions(out=tmp_path / "runs", results=tmp_path / "results")
    (unit,) = plan_units(task, opts)
    data = unit_data(unit, opts)
    ds = data.dataset
    card = read_card(pretrain_here(unit, opts))

    target_train = np.flatnonzero(np.isin(ds.labels, data.target_pool) & (ds.split == TRAIN))
    images = ds.images.copy()
    images[target_train[0]] = 255  # one target-pool TRAIN image turned all white
    changed = dataclasses.replace(ds, images=images)
    # under the old rule (every class's TRAIN images) the statistics would move
    all_train = np.flatnonzero(ds.split == TRAIN)
    assert mean_std(images, all_train) != mean_std(ds.images, all_train)

    monkeypatch.setattr(ncbench.unit, "dataset_for", lambda task, data_root: changed)
    other = RunOptions(out=tmp_path / "other", results=tmp_path / "other-results")
    again = read_card(pretrain_here(unit, other))
    assert again.preprocessing == card.preprocessing  # mean / std unchanged, to the last bit
    assert again.sha256 == card.sha256  # and so are the weights: the target pool's pixels never entered

