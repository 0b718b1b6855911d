"""benchmarks/scale.py at a small size: the rehearsal's stages run through the real loaders and task files
(a smoke run; no timing is asserted)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("task, images", [("cifar-fs", 100 * 24), ("mini-imagenet", 100 * 24)])
def test_small_rehearsal_runs_every_stage(scale, task, images, tmp_path, capsys):
    out = tmp_path / "scale.json"
    assert scale.main([task, "--small", "--steps", "1", "--source-classes", "2", "--max-forward", "16",
                       "--episodes", "5", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    stages = {s["name"]: s for s in summary["stages"]}
    assert stages["load + decode (real loader)"]["images"] == images  # the whole synthetic copy went through the loader
    assert summary["source_classes"] == 2 and summary["train_images"] == 2 * 12
    steps = next(s for name, s in stages.items() if name.startswith("pretrain: all"))
    assert not steps["measured"] and steps["seconds"] == pytest.approx(summary["step_s"] * summary["recipe_steps"])
    assert summary["step_gflop"] > 0
    sampled = [name for name in stages if name.startswith("features: target pool [16 of")]
    assert sampled and not stages["features: target pool"]["measured"]  # 20 target classes x 24 images, sampled
    assert summary["extrapolated_full_unit_s"] == pytest.approx(
        sum(s["seconds"] for s in summary["stages"] if not s["sample"]))
    printed = capsys.readouterr().out
    assert "EXTRAPOLATED" in printed and "measured" in printed
