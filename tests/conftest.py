"""Shared fixtures: a tiny task (tiny backbone, few classes and episodes) that runs the whole pipeline in seconds."""

from pathlib import Path

import pytest
import yaml

TASKS = Path(__file__).resolve().parents[1] / "tasks"


def tiny_task_dict(**over):
    d = {
        "include": str(TASKS / "_base.yaml"),
        "name": "tiny",
        "version": 1,
        "dataset": {"name": "glyphs", "options": {"classes": 30, "per_class": 12, "image_size": 16, "seed": 0}},
        "pools": {"source_fraction": 0.5},
        "source_classes": [4, 8],
        "images_per_class": {"train": 8, "test": 3},
        "episodes": {"ways": 3, "shots": [1, 3], "queries": 4, "count": 20},
        "backbone": {"name": "tiny-conv"},
        "pretrain": {"epochs": 2, "batch_size": 16, "track_every": 1},
    }
    d.update(over)
    return d


@pytest.fixture
def tiny_task_file(tmp_path):
    """Path of a tiny task YAML; call with keyword overrides to change fields."""
    def make(**over):
        p = tmp_path / f"tiny-{len(list(tmp_path.glob('tiny-*.yaml')))}.yaml"
        p.write_text(yaml.safe_dump(tiny_task_dict(**over)))
        return p
    return make


# A grid of two units (s = 4, 8), each pretraining long enough (a few seconds here) that its job can be
# killed or preempted while it trains; shared by the executor tests.
GRID = tiny_task_dict(pretrain={"epochs": 400, "batch_size": 16, "track_every": 200})


def options(root):
    from ncbench.unit import RunOptions

    return RunOptions(out=root / "runs", results=root / "results")


def board(results):
    """The leaderboard of the grid's task without the columns that say when a row was made."""
    from ncbench.leaderboard import build

    return build(results, "tiny").drop(columns=["date", "wall_time_s"])


@pytest.fixture(scope="session")
def grid(tmp_path_factory):
    """The grid's task and its leaderboard from the serial in-process run (one torch thread), which every
    executor must reproduce."""
    from ncbench.executor import execute
    from ncbench.tasks import load_task

    root = tmp_path_factory.mktemp("grid")
    (root / "tiny.yaml").write_text(yaml.safe_dump(GRID))
    task = load_task(root / "tiny.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NCBENCH_THREADS", "1")
        statuses = execute(task, options(root / "serial"), "local", workers=1)
    assert [st for _, st in statuses] == ["ok", "ok"]
    return task, board(root / "serial" / "results")
