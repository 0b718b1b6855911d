"""Cross-domain tasks (``target:``) and the model zoo (``models:``): validation, shapes, shared checkpoints,
and one tiny unit end to end whose episodes come from the target dataset."""

from pathlib import Path

import numpy as np
import pytest

from ncbench.tasks import check_against_data, load_task, task_files
from ncbench.unit import RunOptions, plan_units, unit_data
from tests.conftest import tiny_task_dict
from test_tasks import problems, write  # the task-file helpers (tests/ is on sys.path)

SHARED_OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot-small"
# another glyphs dataset (other seed, classes) at the tiny task's shape: a cross-domain target without files
TARGET = {"dataset": {"name": "glyphs", "options": {"classes": 12, "per_class": 10, "image_size": 16, "seed": 7}}}


def test_target_section_is_parsed(tmp_path):
    t = load_task(write(tmp_path, tiny_task_dict(target=TARGET)))
    assert t.target.dataset == "glyphs" and t.target.dataset_options["seed"] == 7


@pytest.mark.parametrize("target, expected", [
    ({"dataset": {"name": "omniglott"}}, r"target.dataset.name: unknown dataset 'omniglott'; did you mean 'omniglot'"),
    ({"dataset": {"name": "glyphs", "options": {"size": 3}}}, r"target.dataset.options.size: unknown option"),
    ({"dataset": {"name": "glyphs"}, "pools": 3}, r"target.pools: unknown field; known: dataset"),
    ({}, r"target.dataset: missing \(expected a mapping\)"),
    ("omniglot", r"target: expected a mapping, got 'omniglot'"),
])
def test_bad_target_sections_name_the_field(tmp_path, target, expected):
    import re

    assert re.search(expected, problems(tmp_path, tiny_task_dict(target=target)))


def test_target_with_class_split_pools_is_refused(tmp_path):
    d = tiny_task_dict(target=TARGET, pools={"source": "train", "target": "test"})
    assert "pools: a task with a target dataset splits only its source dataset" in problems(tmp_path, d)


def test_shape_mismatch_is_reported_by_validate(tmp_path):
    target = {"dataset": {"name": "glyphs", "options": {"classes": 12, "per_class": 10, "image_size": 20, "seed": 7}}}
    task = load_task(write(tmp_path, tiny_task_dict(target=target)))
    (problem,) = check_against_data(task)
    assert "target.dataset: images of shape [20, 20, 1]" in problem and "has [16, 16, 1]" in problem


@pytest.mark.parametrize("models, expected", [
    ({"x": {"backbone": "conv-4"}}, r"models.x.backbone: unknown backbone 'conv-4'"),
    ({"x": {"backbone": "conv4", "pretrain": {"loss": "hinge"}}}, r"models.x.pretrain: .*loss"),
    ({"x": {"backbone": "conv4", "pretrain": {"lossy": 1}}}, r"models.x.pretrain: .*lossy"),
    ({"x": {"backbone": "conv4", "colour": 1}}, r"models.x.colour: unknown field"),
    ({"x": "conv4"}, r"models.x: expected a mapping"),
])
def test_bad_model_zoo_entries_name_the_field(tmp_path, models, expected):
    import re

    assert re.search(expected, problems(tmp_path, tiny_task_dict(models=models)))


def test_zoo_models_plan_their_backbone_options_and_pretraining(tmp_path):
    task = load_task(write(tmp_path, tiny_task_dict()))  # the zoo of _base.yaml
    units = plan_units(task, RunOptions(models=["conv4", "conv4-mse", "conv4-w80-etf"], seeds=[0],
                                        source_classes=[4]))
    by = {u.model: u for u in units}
    assert by["conv4-mse"].pretrain_config().loss == "mse" and by["conv4"].pretrain_config().loss == "ce"
    assert by["conv4-w80-etf"].backbone_options == {"width": 80} and by["conv4-w80-etf"].pretrain_config().classifier == "etf"
    assert len({u.config_hash for u in units}) == 3 and len({u.pretrain_hash for u in units}) == 3
    with pytest.raises(ValueError, match="not in the models: section"):
        plan_units(task, RunOptions(models=["conv4", "mynet"]))


def test_a_cross_domain_task_shares_checkpoints_with_its_source_task(tmp_path):
    base = load_task(write(tmp_path, tiny_task_dict(), "base.yaml"))
    cross = load_task(write(tmp_path, tiny_task_dict(name="tiny-x", target=TARGET), "cross.yaml"))
    other = load_task(write(tmp_path, tiny_task_dict(name="tiny-y", images_per_class={"train": 7, "test": 3}), "y.yaml"))
    a, b, c = (plan_units(t, RunOptions(seeds=[0], source_classes=[4]))[0] for t in (base, cross, other))
    assert a.pretrain_hash == b.pretrain_hash and a.checkpoint_name == b.checkpoint_name
    assert a.config_hash != b.config_hash                       # other numbers: other rows
    assert c.pretrain_hash != a.pretrain_hash                   # other training images: another checkpoint


def test_unit_data_takes_the_target_pool_from_the_target_dataset(tmp_path):
    task = load_task(write(tmp_path, tiny_task_dict(name="tiny-x", target=TARGET)))
    data = unit_data(plan_units(task, RunOptions(seeds=[0], source_classes=[4]))[0], RunOptions())
    assert data.target_dataset is not data.dataset
    assert data.target_pool.tolist() == list(range(12))          # every class of the target dataset
    assert len(data.dataset.class_names) == 30 and data.classes.max() < 30


def test_cross_domain_unit_end_to_end(tmp_path):
    """Two models of a cross-domain task: both pretrain on the source, are scored on the same target episodes,
    and the result's target measures are over the target dataset's images."""
    from ncbench.executor import execute
    from ncbench.leaderboard import build

    task = load_task(write(tmp_path, tiny_task_dict(name="tiny-x", target=TARGET,
                                                    models={"a": {"backbone": "tiny-conv"},
                                                            "b": {"backbone": "tiny-mlp"}})))
    opts = RunOptions(out=tmp_path / "runs", results=tmp_path / "results", models=["a", "b"], seeds=[0],
                      source_classes=[4])
    assert [st for _, st in execute(task, opts, "local", workers=1)] == ["ok", "ok"]
    df = build(tmp_path / "results", "tiny-x")
    assert set(df["model"]) == {"a", "b"} and (df["status"] == "ok").all()
    assert df.groupby(["head", "shots"])["episodes_hash"].nunique().eq(1).all()  # identical episodes
    assert df["target_ncc_acc"].between(0, 1).all()


def test_shipped_cross_domain_tasks_pair_with_their_source_tasks():
    files = task_files()
    for cross, source in (("glyphs-to-omniglot", "glyphs"), ("omniglot-to-glyphs", "omniglot")):
        c, s = load_task(files[cross]), load_task(files[source])
        assert c.target is not None and c.target.dataset != c.dataset
        uc, us = (plan_units(t, RunOptions(model="conv4"))[0] for t in (c, s))
        assert uc.pretrain_hash == us.pretrain_hash  # the cross-domain leaderboard reuses the source task's checkpoints


@pytest.mark.skipif(not SHARED_OMNIGLOT.is_dir(), reason="../shared/data/omniglot-small is not here")
def test_shipped_cross_domain_tasks_pass_their_data_checks_on_the_shared_omniglot():
    files = task_files()
    for name in ("glyphs-to-omniglot", "omniglot-to-glyphs", "omniglot"):
        assert check_against_data(load_task(files[name]), str(SHARED_OMNIGLOT)) == [], name


@pytest.mark.skipif(not SHARED_OMNIGLOT.is_dir(), reason="../shared/data/omniglot-small is not here")
def test_omniglot_folder_of_archives_is_the_union_of_their_characters():
    import zipfile

    from ncbench.data import load_dataset

    ds = load_dataset("omniglot", root=str(SHARED_OMNIGLOT), image_size=16)
    names = set()
    for z in sorted(SHARED_OMNIGLOT.glob("*.zip")):
        names |= {"/".join(p.split("/")[1:3]) for p in zipfile.ZipFile(z).namelist() if p.endswith(".png")}
    assert sorted(ds.class_names) == sorted(names) == ds.class_names     # each character once, sorted
    assert np.bincount(ds.labels).tolist() == [20] * len(names)          # 20 drawers each
