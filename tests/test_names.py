"""The name rule (``ncbench.names``): which names pass, which are refused and why, default model names of
backbone specs, and :func:`ncbench.names.inside`. The CLI reproductions (exit 2, one line, nothing written)
are in ``tests/test_bad_input.py`` (``NAME_CASES``)."""

import os
from pathlib import Path

import pytest

from ncbench.names import BadNameError, PathEscapeError, check_name, inside, is_valid_name, name_from_spec
from ncbench.registry import BACKBONES, DATASETS, HEADS, METRICS

ROOT = Path(__file__).resolve().parents[1]

VALID = ["conv4", "tiny-conv", "wrn-28-4", "glyphs-smoke", "mini-imagenet", "a", "0", "my_net.v2", "x" * 64]

# name -> a part of the reason
INVALID = {
    "/tmp/PWNED": "a name is not a path",
    "../../TASKPWN": "a name is not a path",
    "a\\b": "a name is not a path",
    "..": "must not start with '.'",
    ".hidden": "must not start with '.'",
    "-rf": "must not start with '-'",
    "": "empty name",
    "x" * 65: "65 characters, at most 64 allowed",
    "a..b": "must not contain '..'",
    "net.": "must not end with '.'",
    "=cmd": "character '=' not allowed",
    "+1": "character '+' not allowed",
    "@sum": "character '@' not allowed",
    "a b": "character ' ' not allowed",
    "a:b": "character ':' not allowed",
    "a\x00b": "character '\\x00' not allowed",
    "t\u0456ny": "non-ASCII character 'і' (U+0456; look-alikes are refused)",   # Cyrillic i
    "\u0441onv4": "U+0441",                                                     # Cyrillic es for c
    "Conv4": "upper-case letters (did you mean 'conv4'?)",
    "\uff43\uff4f\uff4e\uff56\uff14": "did you mean 'conv4'?",                   # full-width, NFKC -> conv4
}


def test_registered_and_shipped_names_pass():
    """Every registered dataset / backbone / head / metric, every task file and every leaderboard model."""
    names = [*DATASETS.names(), *BACKBONES.names(), *HEADS.names(), *METRICS.names()]
    names += [p.stem for p in (ROOT / "tasks").glob("*.yaml") if not p.name.startswith("_")]
    names += [p.name for p in (ROOT / "leaderboards" / "results").glob("*/*") if p.is_dir()]
    assert len(names) > 30
    assert [n for n in names if not is_valid_name(n)] == []


@pytest.mark.parametrize("name", VALID)
def test_valid(name):
    assert check_name(name, "--model") == name


@pytest.mark.parametrize("name, reason", list(INVALID.items()), ids=[repr(n)[:20] for n in INVALID])
def test_invalid(name, reason):
    with pytest.raises(BadNameError) as e:
        check_name(name, "--model")
    msg = str(e.value)
    assert msg.startswith("--model: invalid name ") and reason in msg and "\n" not in msg


def test_not_a_string():
    with pytest.raises(BadNameError, match="expected a name \\(string\\), got int"):
        check_name(3, "name")


def test_a_long_name_is_cut_in_the_message():
    with pytest.raises(BadNameError) as e:
        check_name("a" * 100_000, "--name")
    assert len(str(e.value)) < 400


@pytest.mark.parametrize("spec, name", [
    ("conv4", "conv4"),
    ("tiny-conv", "tiny-conv"),
    ("/tmp/x/misbehaving.py:backbone", "misbehaving.py-backbone"),
    ("my_nets:SmallNet", "my_nets-smallnet"),
    ("nets\\win.py", "win.py"),
    ("..hidden.py", "hidden.py"),
    ("a" * 100, "a" * 64),
])
def test_default_model_name_of_a_spec(spec, name):
    assert name_from_spec(spec) == name and is_valid_name(name)


def test_spec_without_a_usable_name():
    with pytest.raises(BadNameError, match="give one with --model"):
        name_from_spec("/tmp/...")


def test_inside(tmp_path):
    assert inside(tmp_path, "a", "b.json") == tmp_path / "a" / "b.json"  # returned as built, unresolved
    assert inside(tmp_path / "sub" / ".." / "x", "y") == tmp_path / "sub" / ".." / "x" / "y"
    with pytest.raises(PathEscapeError, match="outside its folder"):
        inside(tmp_path / "root", "..", "evil")
    with pytest.raises(PathEscapeError):
        inside(tmp_path / "root", "/etc/passwd")
    (tmp_path / "root").mkdir()
    os.symlink("/etc", tmp_path / "root" / "link")
    with pytest.raises(PathEscapeError, match="resolves to '/etc/passwd'"):
        inside(tmp_path / "root", "link", "passwd")


def test_result_paths_stay_inside_results(tmp_path):
    """UnitKey.path checks the names and the folder (a results tree with a link out is refused)."""
    from ncbench.results import UnitKey

    key = UnitKey("tiny", 1, "conv4", "conv4", 4, 0, "abc123")
    assert key.path(tmp_path) == tmp_path / "tiny" / "conv4" / "s4-seed0-abc123.json"
    with pytest.raises(BadNameError, match="unit.model: invalid name '../x'"):
        UnitKey("tiny", 1, "../x", "conv4", 4, 0, "abc123").path(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "res").mkdir()
    os.symlink(tmp_path / "out", tmp_path / "res" / "tiny")
    with pytest.raises(PathEscapeError):
        key.path(tmp_path / "res")
