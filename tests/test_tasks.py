"""Task files: every shipped task validates; broken files fail with file, field and expectation."""

import re
from pathlib import Path

import pytest
import yaml

from ncbench.cli import main
from ncbench.tasks import TaskError, check_against_data, load_task, task_files

TASKS = Path(__file__).resolve().parents[1] / "tasks"
SMOKE = TASKS / "glyphs-smoke.yaml"


@pytest.mark.parametrize("name", sorted(task_files()))
def test_shipped_task_is_valid(name):
    task = load_task(task_files()[name])
    assert task.name == name and task.version >= 1
    assert task.source_classes == sorted(task.source_classes) and task.seeds
    task.pretrain_config()  # the recipe builds


def test_smoke_task_passes_data_checks():
    assert check_against_data(load_task(SMOKE)) == []


def write(tmp_path, data, name="t.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def smoke_dict():
    d = yaml.safe_load(SMOKE.read_text())
    d["include"] = str(TASKS / "_base.yaml")
    return d


def problems(tmp_path, data):
    with pytest.raises(TaskError) as e:
        load_task(write(tmp_path, data))
    return "\n".join(e.value.problems)


def test_include_merges_base_and_overrides(tmp_path):
    t = load_task(write(tmp_path, smoke_dict()))
    assert t.episodes.shots == [1, 5] and t.episodes.queries == 10  # override of a nested key
    assert t.pretrain["epochs"] == 3 and t.pretrain["lr"] == 0.05     # merged with the base recipe
    assert [h["name"] for h in t.heads] == ["ridge", "ncc", "ncc-cl2n"]


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.pop("name"), r"name: missing \(expected a string\)"),
    (lambda d: d.update(version="one"), r"version: expected an integer, got 'one'"),
    (lambda d: d.update(version=0), r"version: expected a value >= 1"),
    (lambda d: d.update(dataset={"name": "glyph"}), r"dataset.name: unknown dataset 'glyph'; did you mean 'glyphs'"),
    (lambda d: d.update(backbone={"name": "conv-4"}), r"backbone.name: unknown backbone 'conv-4'; did you mean 'conv4'"),
    (lambda d: d.update(heads=[{"name": "rigde"}]), r"heads\[0\].name: unknown head 'rigde'; did you mean 'ridge'"),
    (lambda d: d.update(heads=[{"name": "ridge", "beta": 1}]), r"heads\[0\].beta: unknown option of head 'ridge'; known: alpha"),
    (lambda d: d.update(metrics=["nc5"]), r"metrics\[0\]: unknown metric 'nc5'"),
    (lambda d: d.update(source_classes=[5, -1]), r"source_classes: expected values >= 2"),
    (lambda d: d.update(images_per_class={"train": 0, "test": 8}), r"images_per_class.train: expected a value >= 1"),
    (lambda d: d["episodes"].update(ways="five"), r"episodes.ways: expected an integer, got 'five'"),
    (lambda d: d["episodes"].update(shots=[1, 1]), r"episodes.shots: duplicate values"),
    (lambda d: d.update(pools={"source": ["train", "val"], "target": ["val"]}), r"pools: source and target pools overlap"),
    (lambda d: d.update(pools={"source": ["train"]}), r"pools: give both 'source' and 'target'"),
    (lambda d: d.update(colour="red"), r"colour: unknown field"),
    (lambda d: d["pretrain"].update(epochs="many"), r"pretrain: .*epochs"),
    (lambda d: d["pretrain"].update(optimiser="adam"), r"pretrain: .*optimiser"),
])
def test_invalid_fields_are_reported_precisely(tmp_path, mutate, expected):
    d = smoke_dict()
    mutate(d)
    assert re.search(expected, problems(tmp_path, d)), problems(tmp_path, d)


def test_all_problems_reported_at_once(tmp_path):
    d = smoke_dict()
    d.pop("name")
    d["version"] = "x"
    text = problems(tmp_path, d)
    assert "name: missing" in text and "version: expected an integer" in text
    assert all(line.startswith(str(tmp_path / "t.yaml") + ": ") for line in text.splitlines())


def test_yaml_syntax_error_names_line(tmp_path):
    text = problems(tmp_path, "name: x\nversion: [1,\n")
    assert "YAML syntax error: line" in text


def test_data_checks_catch_ways_and_sizes(tmp_path):
    d = smoke_dict()
    d["episodes"]["ways"] = 40           # the smoke target pool has 30 classes
    d["episodes"]["queries"] = 30        # 24 images per class
    d["source_classes"] = [5, 31]        # the source pool has 30
    found = "\n".join(check_against_data(load_task(write(tmp_path, d))))
    assert "source_classes: 31 asked, the source pool of 'glyphs' has 30 classes" in found
    assert "episodes.ways: 40-way episodes need 40 target classes, the target pool has 30" in found


def test_cli_validate_exit_codes(tmp_path, capsys):
    assert main(["validate", str(SMOKE)]) == 0
    assert "ok (task 'glyphs-smoke' version 1)" in capsys.readouterr().out
    d = smoke_dict()
    d["dataset"] = {"name": "glyph"}
    bad = write(tmp_path, d)
    before = bad.read_bytes()
    assert main(["validate", "--no-data", str(bad)]) == 2
    assert "did you mean 'glyphs'" in capsys.readouterr().err
    assert bad.read_bytes() == before


OMNIGLOT_SMALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot-small"


def test_real_dataset_without_files_skips_only_data_checks(capsys):
    assert main(["validate", str(TASKS / "cifar-fs.yaml")]) == 0
    assert "data checks skipped" in capsys.readouterr().out


@pytest.mark.skipif(not OMNIGLOT_SMALL.is_dir(), reason="../shared/data/omniglot-small is absent")
def test_omniglot_task_checks_against_real_omniglot(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NCBENCH_CACHE", str(tmp_path))
    root = str(OMNIGLOT_SMALL / "images_background_small1.zip")
    assert main(["validate", str(TASKS / "omniglot.yaml"), "--data-root", root]) == 0
    out = capsys.readouterr().out
    assert "ok (task 'omniglot'" in out and "skipped" not in out


def test_validate_accepts_every_shipped_file_including_bases(capsys):
    files = sorted(str(p) for p in TASKS.glob("*.yaml"))
    assert main(["validate", "--no-data", *files]) == 0
    assert "_base.yaml: ok (base file" in capsys.readouterr().out


def test_base_file_with_unknown_field_fails(tmp_path, capsys):
    base = write(tmp_path, {"colour": "red", "seeds": [0]}, name="_base.yaml")
    assert main(["validate", str(base)]) == 2
    assert "colour: unknown field" in capsys.readouterr().err


def test_set_overrides_are_validated_and_hashed(tmp_path):
    from ncbench.tasks import with_overrides
    from ncbench.unit import RunOptions, plan_units

    task = load_task(SMOKE)
    over = with_overrides(task, {"episodes.count": 7, "pretrain.epochs": 2, "dataset.options.classes": 50})
    assert over.episodes.count == 7 and over.pretrain["epochs"] == 2 and over.dataset_options["classes"] == 50
    assert over.name == task.name and task.episodes.count == 100                    # the original is untouched
    unit, base = (plan_units(t, RunOptions(seeds=[0], source_classes=[5]))[0] for t in (over, task))
    assert unit.config_hash != base.config_hash
    with pytest.raises(TaskError, match=r"episodes.count: expected an integer, got 'abc'"):
        with_overrides(task, {"episodes.count": "abc"})
    with pytest.raises(TaskError, match=r"--set episode.count: expected a task field"):
        with_overrides(task, {"episode.count": 3})
    with pytest.raises(TaskError, match=r"--set name: expected a task field"):
        with_overrides(task, {"name": "other"})
    with pytest.raises(TaskError, match=r"--set layer_eps.x: layer_eps is not a mapping"):
        with_overrides(task, {"layer_eps.x": 3})


def test_cli_set_reaches_the_run(tmp_path, capsys):
    assert main(["run", str(SMOKE), "--set", "episodes.count=abc", "--out", str(tmp_path)]) == 2
    assert "episodes.count: expected an integer, got 'abc'" in capsys.readouterr().err
