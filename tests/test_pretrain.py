"""Pretraining: config validation, determinism, resume, checkpoints and collapse tracking."""

import csv
import json
import math

import numpy as np
import pytest
import safetensors.torch
import torch

import ncbench.pretrain as pretrain_module
from ncbench.backbones import build_backbone, extract
from ncbench.checkpoint import CheckpointError, load_checkpoint, load_classifier, read_weights
from ncbench.data.base import ImageDataset
from ncbench.pretrain import PretrainConfig, pretrain, simplex_etf
from ncbench.registry import BACKBONES
from ncbench.tracking import CollapseTracker


def make_dataset(k=4, per_class=12, size=12, channels=1, seed=0):
    """k classes of noisy copies of one random prototype each; the last 3 images of a class are TEST."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), per_class)
    protos = rng.integers(0, 256, (k, size, size, channels))
    images = np.clip(protos[labels] + rng.normal(0, 25, (len(labels), size, size, channels)), 0, 255).astype(np.uint8)
    split = np.tile(np.r_[np.zeros(per_class - 3), np.ones(3)].astype(np.int8), k)
    return ImageDataset("synthetic", images, labels.astype(np.int64), [f"class{i}" for i in range(k)], split)


@pytest.fixture(scope="module")
def data():
    ds = make_dataset()
    return ds, np.flatnonzero(ds.split == 0), np.flatnonzero(ds.split == 1)


FAST = dict(epochs=4, batch_size=9, lr=0.1, track_every=0, num_threads=1)


def weights(directory):
    return safetensors.torch.load_file(directory / "model.safetensors")


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- config ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "field, value, message",
    [("epochs", 0, "pretrain.epochs must be a positive integer"), ("batch_size", 2.5, "pretrain.batch_size"),
     ("lr", -1, "pretrain.lr must be a finite number > 0"), ("momentum", 1.0, "pretrain.momentum must be < 1"),
     ("schedule", "linear", r"pretrain.schedule must be one of \['cosine', 'step', 'constant'\]"),
     ("loss", "hinge", "pretrain.loss"), ("classifier", "cosine", "pretrain.classifier"),
     ("milestones", [5, 3], "pretrain.milestones must be increasing"), ("track_every", -1, "pretrain.track_every"),
     ("num_threads", 0, "pretrain.num_threads"), ("weight_decay", True, "pretrain.weight_decay")],
)
def test_config_rejects_bad_values_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        PretrainConfig(**{field: value})


def test_config_rejects_unknown_key():
    with pytest.raises(TypeError, match="learning_rate"):
        PretrainConfig(learning_rate=0.1)


def test_schedules():
    cos = PretrainConfig(epochs=4, lr=0.2, schedule="cosine")
    assert [cos.lr_at(e) for e in range(4)] == pytest.approx([0.2, 0.1 * (1 + math.cos(math.pi / 4)), 0.1, 0.1 * (1 - math.cos(math.pi / 4))])
    step = PretrainConfig(epochs=6, lr=1.0, schedule="step", milestones=[2, 4], gamma=0.5)
    assert [step.lr_at(e) for e in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert PretrainConfig(lr=0.3, schedule="constant").lr_at(17) == 0.3


@pytest.mark.parametrize("k, m", [(5, 4), (5, 16), (2, 3)])
def test_simplex_etf_is_equiangular_with_unit_rows(k, m):
    w = simplex_etf(k, m, torch.Generator().manual_seed(0)).double()
    assert w.shape == (k, m)
    gram = w @ w.T
    expected = torch.full((k, k), -1 / (k - 1), dtype=torch.float64).fill_diagonal_(1.0)
    torch.testing.assert_close(gram, expected, atol=1e-6, rtol=0)


def test_simplex_etf_needs_enough_dimensions():
    with pytest.raises(ValueError, match="feature_dim >= num_classes - 1"):
        simplex_etf(6, 4, torch.Generator())


# -- training -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_trains_two_steps(name, tmp_path):
    ds = make_dataset(k=2, per_class=4, size=16, channels=3)
    out = pretrain(name, ds, np.arange(8), None, PretrainConfig(epochs=1, batch_size=4, lr=0.01, track_every=0, num_threads=1),
                   tmp_path, seed=0)
    model, card = load_checkpoint(out)
    torch.manual_seed(0)  # pretrain initialises the model right after seeding torch with its seed
    initial = build_backbone(name, in_channels=3, image_size=[16, 16])
    assert card.feature_dim == model.feature_dim and card.num_train == 8
    assert math.isfinite(card.train_loss)
    params = [(a, b) for a, b in zip(model.state_dict().values(), initial.state_dict().values()) if a.is_floating_point()]
    assert sum(not torch.equal(a, b) for a, b in params) > len(params) // 2
    assert int(model.state_dict()[next(k for k in model.state_dict() if k.endswith("num_batches_tracked"))]) == 2


def test_same_seed_same_weights_other_seed_other_weights(data, tmp_path):
    ds, tr, te = data
    a = pretrain("tiny-conv", ds, tr, te, PretrainConfig(**FAST), tmp_path / "a", seed=3)
    b = pretrain("tiny-conv", ds, tr, te, PretrainConfig(**FAST), tmp_path / "b", seed=3)
    c = pretrain("tiny-conv", ds, tr, te, PretrainConfig(**FAST), tmp_path / "c", seed=4)
    assert_same_weights(weights(a), weights(b))
    assert not torch.equal(weights(a)["backbone.stages.block1.0.weight"], weights(c)["backbone.stages.block1.0.weight"])


def test_interrupted_run_resumes_to_identical_weights_and_curve(data, tmp_path, monkeypatch):
    ds, tr, te = data
    config = PretrainConfig(**{**FAST, "epochs": 5, "track_every": 2})
    full = pretrain("tiny-conv", ds, tr, te, config, tmp_path / "full", seed=0, tracker=CollapseTracker())

    real_epoch, calls = pretrain_module._train_epoch, []

    def dies_in_epoch_four(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("killed")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "_train_epoch", dies_in_epoch_four)
    with pytest.raises(KeyboardInterrupt):
        pretrain("tiny-conv", ds, tr, te, config, tmp_path / "resumed", seed=0, tracker=CollapseTracker())
    state = json.loads((tmp_path / "resumed" / "resume" / "state.json").read_text())
    assert state["epoch"] == 3 and not (tmp_path / "resumed" / "card.json").exists()
    monkeypatch.setattr(pretrain_module, "_train_epoch", real_epoch)
    resumed = pretrain("tiny-conv", ds, tr, te, config, tmp_path / "resumed", seed=0, tracker=CollapseTracker())
    assert_same_weights(weights(full), weights(resumed))
    assert (full / "curve.csv").read_text() == (resumed / "curve.csv").read_text()
    assert not (resumed / "resume").exists()


def test_finished_run_returns_at_once_and_other_config_is_refused(data, tmp_path, monkeypatch):
    ds, tr, te = data
    out = pretrain("tiny-conv", ds, tr, None, PretrainConfig(**FAST), tmp_path, seed=0)
    before = (out / "card.json").read_text()
    monkeypatch.setattr(pretrain_module, "_train_epoch", lambda *a, **k: pytest.fail("trained again"))
    assert pretrain("tiny-conv", ds, tr, None, PretrainConfig(**FAST), tmp_path, seed=0) == out
    assert (out / "card.json").read_text() == before
    with pytest.raises(CheckpointError, match=r"holds a different pretraining run \(recipe: .*'lr': 0.1.*'lr': 0.2"):
        pretrain("tiny-conv", ds, tr, None, PretrainConfig(**{**FAST, "lr": 0.2}), tmp_path, seed=0)
    (out / "run.json").unlink()  # a copied-in checkpoint of another run is not overwritten either
    with pytest.raises(CheckpointError, match="holds the checkpoint of a different run"):
        pretrain("tiny-conv", ds, tr, None, PretrainConfig(**FAST), tmp_path, seed=1)


def test_labels_are_remapped_in_sorted_order_and_card_records_the_run(tmp_path):
    ds = make_dataset(k=5)
    idx = np.flatnonzero(np.isin(ds.labels, [4, 1, 3]) & (ds.split == 0))
    out = pretrain("tiny-mlp", ds, idx, None, PretrainConfig(**FAST), tmp_path, seed=1,
                   card_extra={"name": "tiny-mlp.synthetic-s3-seed1", "task": "unit"})
    model, card = load_checkpoint(out)
    assert card.source_classes == ["class1", "class3", "class4"]
    assert card.extra == {"name": "tiny-mlp.synthetic-s3-seed1", "task": "unit"}
    pixels = ds.images[idx].astype(np.float64) / 255  # normalisation: exactly the pretraining images (default norm_idx)
    assert card.preprocessing == {
        "image_size": [12, 12], "channels": 1,
        "mean": [pytest.approx(pixels.mean(), abs=1e-12)], "std": [pytest.approx(pixels.std(), abs=1e-12)],
        "transform": {"mode": "L", "invert": False, "transpose": False, "resize": [12, 12], "resample": "bilinear"},
        "normalization": {"source": "pretraining train images (train_idx)", "images": len(idx), "classes": 3}}
    assert (card.backbone, card.seed, card.epochs, card.num_train, card.recipe["lr"]) == ("tiny-mlp", 1, 4, len(idx), 0.1)
    assert card.torch_version == torch.__version__ and len(card.sha256) == 64
    weight, bias = load_classifier(out)
    assert weight.shape == (3, 16) and bias.shape == (3,)
    remapped = np.searchsorted([1, 3, 4], ds.labels[idx])
    with torch.no_grad():
        acc = float(((extract(model, ds.images[idx], card.preprocessing) @ weight.T + bias).argmax(1).numpy() == remapped).mean())
    assert acc == pytest.approx(card.train_acc)
    with pytest.raises(ValueError, match="card_extra keys \\['seed'\\]"):
        pretrain("tiny-mlp", ds, idx, None, PretrainConfig(**FAST), tmp_path / "x", seed=1, card_extra={"seed": 2})


def test_bad_indices_are_rejected(data, tmp_path):
    ds, tr, _ = data
    with pytest.raises(ValueError, match="train_idx must index the dataset's 48 images"):
        pretrain("tiny-conv", ds, np.array([0, 99]), None, PretrainConfig(**FAST), tmp_path, seed=0)
    with pytest.raises(ValueError, match="train_idx must cover at least 2 classes"):
        pretrain("tiny-conv", ds, np.array([0, 1]), None, PretrainConfig(**FAST), tmp_path, seed=0)
    with pytest.raises(ValueError, match="test_idx holds images of classes that are not in train_idx"):
        pretrain("tiny-conv", ds, tr[ds.labels[tr] < 2], np.array([47]), PretrainConfig(**FAST), tmp_path, seed=0)
    with pytest.raises(ValueError, match="norm_idx must index the dataset's 48 images"):
        pretrain("tiny-conv", ds, tr, None, PretrainConfig(**FAST), tmp_path, seed=0, norm_idx=np.array([48]))


def test_norm_idx_sets_the_normalisation_and_the_run_identity(data, tmp_path):
    ds, tr, _ = data
    pool = np.flatnonzero(ds.split == 0)  # e.g. a source pool's TRAIN images: more images than train_idx
    sub = tr[ds.labels[tr] < 2]
    out = pretrain("tiny-mlp", ds, sub, None, PretrainConfig(**FAST), tmp_path / "a", seed=0, norm_idx=pool,
                   norm_source="source-pool train images")
    pp = load_checkpoint(out)[1].preprocessing
    pixels = ds.images[pool].astype(np.float64) / 255
    assert (pp["mean"], pp["std"]) == ([pytest.approx(pixels.mean(), abs=1e-12)], [pytest.approx(pixels.std(), abs=1e-12)])
    assert pp["normalization"] == {"source": "source-pool train images", "images": len(pool), "classes": 4}
    with pytest.raises(CheckpointError, match="holds a different pretraining run \\(preprocessing: "):
        pretrain("tiny-mlp", ds, sub, None, PretrainConfig(**FAST), tmp_path / "a", seed=0)  # default: train_idx


def test_etf_classifier_stays_fixed_with_mse_loss(data, tmp_path):
    ds, tr, _ = data
    out = pretrain("tiny-mlp", ds, tr, None, PretrainConfig(**{**FAST, "classifier": "etf", "loss": "mse"}), tmp_path, seed=2)
    weight, bias = load_classifier(out)
    assert bias is None
    assert torch.equal(weight, simplex_etf(4, 16, torch.Generator().manual_seed(2)))
    assert load_checkpoint(out)[1].train_acc == 1.0


# -- checkpoints ----------------------------------------------------------------------------------

def test_checkpoint_round_trip_and_corruption(data, tmp_path):
    ds, tr, _ = data
    out = pretrain("tiny-conv", ds, tr, None, PretrainConfig(**FAST), tmp_path / "run", seed=0)
    model, card = load_checkpoint(out)
    assert not model.training
    saved = weights(out)
    assert all(torch.equal(v, saved[f"backbone.{k}"]) for k, v in model.state_dict().items())
    path = out / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"model.safetensors' has sha256 .* truncated or modified"):
        load_checkpoint(out)
    (out / "card.json").unlink()
    with pytest.raises(CheckpointError, match="card.json' not found"):
        load_checkpoint(out)


def test_pickles_are_refused_unless_allowed(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"a": torch.arange(3)}, path)
    with pytest.raises(CheckpointError, match="w.pt' is a pickle; refusing to unpickle it"):
        read_weights(path)
    assert torch.equal(read_weights(path, allow_pickle=True)["a"], torch.arange(3))


# -- collapse tracking ----------------------------------------------------------------------------

def test_tracking_writes_curves_at_tracked_epochs(data, tmp_path):
    ds, tr, te = data
    out = pretrain("tiny-conv", ds, tr, te, PretrainConfig(**{**FAST, "epochs": 3, "track_every": 2}), tmp_path, seed=0,
                   tracker=CollapseTracker())
    rows = list(csv.DictReader((out / "curve.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert [r["nc1"] != "" for r in rows] == [True, False, True, True]  # epoch 0, every 2, and the last
    assert rows[0]["loss"] == "" and float(rows[1]["loss"]) > 0
    for key in ("train_acc", "test_acc", "cdnv_train", "nc1", "nc2", "nc3", "nc4", "ncc_test_acc", "effective_depth"):
        assert math.isfinite(float(rows[-1][key]))
    assert float(rows[-1]["train_acc"]) == pytest.approx(load_checkpoint(out)[1].train_acc)
    layers = list(csv.DictReader((out / "layer_curve.csv").open()))
    assert [(r["layer"], r["variant"]) for r in layers if r["epoch"] == "3"] == [  # block2/flat IS penultimate
        ("block1", "flat"), ("penultimate", "flat"),
        ("block1", "pooled"), ("block2", "pooled"), ("penultimate", "pooled")]
    assert {int(r["n"]) for r in layers} == {len(tr)}  # every train image, not a sample
    assert all(int(r["ncc_errors"]) == round(float(r["ncc_error"]) * len(tr)) for r in layers)


def test_tensorboard_logs_the_curves_when_asked(data, tmp_path, monkeypatch):
    """$NCBENCH_TENSORBOARD: the curve.csv values, live, as TensorBoard scalars (tested when installed)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ds, tr, te = data
    monkeypatch.setenv("NCBENCH_TENSORBOARD", str(tmp_path / "tb"))
    out = pretrain("tiny-conv", ds, tr, te, PretrainConfig(**{**FAST, "epochs": 3, "track_every": 2}),
                   tmp_path / "ckpt", seed=0, tracker=CollapseTracker())
    rows = list(csv.DictReader((out / "curve.csv").open()))
    events = EventAccumulator(str(tmp_path / "tb" / "ckpt")).Reload()
    assert {"pretrain/loss", "pretrain/nc1", "pretrain/lr", "layers/penultimate/flat/ncc_error"} <= set(events.Tags()["scalars"])
    for column in ("loss", "nc1", "cdnv_train", "running_acc"):
        logged = [(e.step, e.value) for e in events.Scalars(f"pretrain/{column}")]
        expected = [(int(r["epoch"]), float(r[column])) for r in rows if r[column] != ""]
        assert [s for s, _ in logged] == [s for s, _ in expected]
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6)  # stored as float32
    monkeypatch.delenv("NCBENCH_TENSORBOARD")
    plain = pretrain("tiny-conv", ds, tr, te, PretrainConfig(**{**FAST, "epochs": 3, "track_every": 2}),
                     tmp_path / "plain", seed=0, tracker=CollapseTracker())
    assert_same_weights(weights(out), weights(plain))  # logging changes nothing
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["ckpt"]


def test_tensorboard_without_the_extra_is_a_clear_error(data, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith(("torch.utils.tensorboard", "tensorboard")):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    monkeypatch.setenv("NCBENCH_TENSORBOARD", str(tmp_path / "tb"))
    ds, tr, te = data
    with pytest.raises(ValueError, match=r"NCBENCH_TENSORBOARD is set .* pip install 'ncbench\[tensorboard\]'"):
        pretrain("tiny-conv", ds, tr, te, PretrainConfig(**FAST), tmp_path / "ckpt", seed=0)


def test_tracking_honours_layer_eps(data, tmp_path):
    ds, tr, te = data
    config = PretrainConfig(**{**FAST, "epochs": 1, "track_every": 1})
    loose = pretrain("tiny-conv", ds, tr, te, config, tmp_path / "loose", seed=0, tracker=CollapseTracker(1.0))
    strict = pretrain("tiny-conv", ds, tr, te, config, tmp_path / "strict", seed=0, tracker=CollapseTracker(0.0))
    rows = {name: list(csv.DictReader((out / "curve.csv").open()))[-1] for name, out in (("loose", loose), ("strict", strict))}
    layers = [r for r in csv.DictReader((strict / "layer_curve.csv").open()) if r["epoch"] == "1" and r["variant"] == "flat"]
    assert rows["loose"]["effective_depth"] == "1"  # every error rate is <= 1
    want = next((i + 1 for i, r in enumerate(layers) if r["ncc_errors"] == "0"), len(layers))
    assert rows["strict"]["effective_depth"] == str(want)
    with pytest.raises(ValueError, match="eps must be an error rate"):
        CollapseTracker(1.5)


@pytest.mark.slow
def test_conv4_on_glyphs_collapses(tmp_path):
    from ncbench.data import load_dataset

    ds = load_dataset("glyphs", classes=20, per_class=60)
    tr, te = np.flatnonzero(ds.split == 0), np.flatnonzero(ds.split == 1)
    config = PretrainConfig(epochs=12, batch_size=64, lr=0.05, track_every=4)
    out = pretrain("conv4", ds, tr, te, config, tmp_path, seed=0, tracker=CollapseTracker())
    tracked = [r for r in csv.DictReader((out / "curve.csv").open()) if r["nc1"]]
    assert float(tracked[-1]["train_acc"]) == 1.0
    for key in ("cdnv_train", "nc1"):
        values = [float(r[key]) for r in tracked]
        assert values[-1] < 0.5 * values[0], (key, values)


def test_min_steps_raises_epochs_for_small_source_sets():
    from ncbench.pretrain import PretrainConfig

    cfg = PretrainConfig(epochs=10, batch_size=16, min_steps=100, schedule="step", milestones=[5, 8])
    assert cfg.for_size(1000) is cfg                      # 62 steps/epoch x 10 epochs >= 100 steps
    small = cfg.for_size(40)                               # 2 steps per epoch -> 50 epochs
    assert small.epochs == 50 and small.milestones == [25, 40] and small.track_every == 25
    assert cfg.for_size(8).epochs == 100                   # fewer images than a batch: one step per epoch
    with pytest.raises(ValueError, match="pretrain.min_steps"):
        PretrainConfig(min_steps=-1)


def test_rescaled_squared_error_matches_a_loop():
    """k·(f_y − M)² + Σ_{c≠y} f_c², averaged over the batch (Hui & Belkin 2021); k = M = 1 is the plain one."""
    import numpy as np

    from ncbench.pretrain import _loss

    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.tensor([0, 4, 2, 2, 1, 3, 0])
    for k, m in ((1.0, 1.0), (10.0, 10.0), (3.0, 0.5)):
        brute = np.mean([sum((k if c == y else 1.0) * (float(f[c]) - (m if c == y else 0.0)) ** 2 for c in range(5))
                         for f, y in zip(logits, target.tolist())])
        assert float(_loss("mse", logits, target, (k, m))) == pytest.approx(brute, rel=1e-12)
    assert float(_loss("mse", logits, target)) == pytest.approx(float(((logits - torch.eye(5, dtype=torch.float64)[target]) ** 2).sum(1).mean()))


@pytest.mark.parametrize("field, bad", [("clip_grad_norm", 0), ("clip_grad_norm", float("inf")), ("mse_weight", 0),
                                        ("mse_target", -1.0), ("clip_grad_norm", True)])
def test_bad_loss_settings_name_the_field(field, bad):
    with pytest.raises(ValueError, match=f"pretrain.{field}"):
        PretrainConfig(**{field: bad})


def test_clipping_bounds_every_step(data, tmp_path, monkeypatch):
    """With clip_grad_norm the gradient the optimizer sees never exceeds it; the recipe records the setting."""
    ds, tr = data[0], data[1]
    norms = []
    real_step = torch.optim.SGD.step

    def step(self, *a, **k):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    out = pretrain("tiny-mlp", ds, tr, None, PretrainConfig(**{**FAST, "loss": "mse", "lr": 0.5, "clip_grad_norm": 0.01}),
                   tmp_path, seed=0)
    assert norms and max(norms) <= 0.01 * (1 + 1e-5)
    assert json.loads((out / "run.json").read_text())["recipe"]["clip_grad_norm"] == 0.01
