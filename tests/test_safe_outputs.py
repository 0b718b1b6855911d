"""Safe outputs (issue 15): leaderboard text cells that a spreadsheet would run as formulas are neutralised
and read back unchanged, written files honour the umask, and feature-cache entries carry their sha256 and a
key that changes with the backbone's spec, options, code and weights."""

import importlib.util
import logging
import os
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from ncbench import leaderboard
from ncbench.files import atomic_folder, atomic_write, umask


# ------------------------------------------------------------------------------------------- CSV cells
def frame(**cells):
    """A one-row leaderboard frame of a failed unit with the given cells."""
    row = {"task": "tiny", "model": "conv4", "source_classes": 4, "seed": 0, "status": "failed",
           "backbone": "conv4", "error": "RuntimeError: boom", "acc_mean": None}
    row.update(cells)
    return leaderboard.to_frame([row])


FORMULAS = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\ncmd", "'=1", "''+x"]


@pytest.mark.parametrize("text", FORMULAS)
def test_formula_cells_are_neutralised_and_read_back(tmp_path, text):
    csv = leaderboard.to_csv_text(frame(error=text, backbone=text))
    df = pd.read_csv(pd.io.common.StringIO(csv), dtype=str, keep_default_na=False)
    assert df.loc[0, "error"] == "'" + text and df.loc[0, "backbone"] == "'" + text
    path = tmp_path / "tiny.csv"
    path.write_text(csv)
    back = leaderboard.read(path)
    assert back.loc[0, "error"] == text and back.loc[0, "backbone"] == text


def test_carriage_returns_become_line_feeds(tmp_path):
    """A bare CR is not quoted by the CSV writer (its line terminator is LF) and would split the row."""
    (tmp_path / "t.csv").write_text(leaderboard.to_csv_text(frame(error="\rcmd", backbone="a\r\nb\rc")))
    back = leaderboard.read(tmp_path / "t.csv")
    assert len(back) == 1 and back.loc[0, "error"] == "\ncmd" and back.loc[0, "backbone"] == "a\nb\nc"


@pytest.mark.parametrize("text", ["RuntimeError: a - b = c", "x=1", "'quoted'", "conv4"])
def test_other_text_cells_are_left_alone(text):
    csv = leaderboard.to_csv_text(frame(error=text))
    df = pd.read_csv(pd.io.common.StringIO(csv), dtype=str, keep_default_na=False)
    assert df.loc[0, "error"] == text


def test_negative_numbers_stay_numbers(tmp_path):
    """Numeric columns are not text: a negative value is written as a number, without a quote."""
    df = frame(status="ok", acc_mean=-0.5, head="ridge", shots=1)
    csv = leaderboard.to_csv_text(df)
    assert ",-0.5," in csv and "'-" not in csv
    (tmp_path / "t.csv").write_text(csv)
    assert leaderboard.read(tmp_path / "t.csv").loc[0, "acc_mean"] == -0.5


# ------------------------------------------------------------------------------------------- umask
@pytest.fixture
def with_umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                       (0o002, 0o664, 0o775)])
def test_outputs_honour_the_umask(tmp_path, with_umask, mask, file_mode, dir_mode):
    with_umask(mask)
    assert umask() == mask
    atomic_write(tmp_path / "f.json", b"{}")
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == file_mode
    with atomic_folder(tmp_path / "d") as d:
        (d / "x").write_text("x")
    assert (tmp_path / "d").stat().st_mode & 0o777 == dir_mode


# ------------------------------------------------------------------------------------------- feature cache
NET = '''
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, in_channels=1, image_size=8, width=4):
        super().__init__()
        self.lin = nn.Linear(in_channels * image_size * image_size, width)
        self.feature_dim = width

    def forward(self, x):
        return self.lin(x.flatten(1)){extra}
'''


def load_net(path, extra=""):
    path.write_text(textwrap.dedent(NET.format(extra=extra)))
    spec = importlib.util.spec_from_file_location(f"net_{abs(hash((str(path), extra)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    return module.Net()


@pytest.fixture
def cache_parts(tmp_path):
    from ncbench.checkpoint import Card
    from ncbench.data.base import ImageDataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 8, 8, 1), dtype=np.uint8)
    ds = ImageDataset("synthetic", images, np.arange(10) % 2, ["a", "b"], np.zeros(10, np.int8))
    pp = {"image_size": [8, 8], "channels": 1, "mean": [0.5], "std": [0.25]}
    card = Card(backbone=str(tmp_path / "net.py"), backbone_options={"width": 4}, feature_dim=4, dataset="synthetic",
                source_classes=["a", "b"], num_train=10, recipe={}, seed=0, epochs=0, preprocessing=pp,
                sha256="ab" * 32)
    return ds, card, load_net(tmp_path / "net.py")


def test_corrupted_entry_is_recomputed_with_a_warning(tmp_path, cache_parts, caplog):
    from ncbench.features import FeatureCache

    ds, card, model = cache_parts
    idx = np.array([3, 1, 4])
    first = FeatureCache(tmp_path / "cache", model, card, ds).features(idx)
    (path,) = (tmp_path / "cache").rglob("features-*.safetensors")
    good = path.read_bytes()
    bad = bytearray(good)
    bad[-3] ^= 0xFF  # one flipped bit-pattern in the tensor data: still a valid safetensors file
    path.write_bytes(bytes(bad))
    with caplog.at_level(logging.WARNING, logger="ncbench.features"):
        again = FeatureCache(tmp_path / "cache", model, card, ds).features(idx)
    assert "do not match their sha256 (corrupted)" in caplog.text
    assert torch.equal(again, first) and path.read_bytes() == good


def test_cache_key_follows_spec_options_code_and_weights(tmp_path, cache_parts):
    import dataclasses

    from ncbench.features import FeatureCache, code_digest

    ds, card, model = cache_parts
    idx = np.arange(4)

    def path(card=card, model=model):
        return FeatureCache(tmp_path / "cache", model, card, ds)._path(idx)

    base = path()
    assert path() == base  # the same checkpoint and code: the same entry
    assert path(dataclasses.replace(card, backbone_options={"width": 5})) != base
    assert path(dataclasses.replace(card, backbone="conv4")) != base
    assert path(dataclasses.replace(card, sha256="cd" * 32)).name != base.name
    before = code_digest(model)
    edited = load_net(tmp_path / "net.py", extra=" * 2")  # the same class name, its source file edited
    assert code_digest(model) != before  # the file on disk is what is hashed
    assert path(model=edited) != base
