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
