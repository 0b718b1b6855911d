"""Rows that cannot be forged: every result file is validated whole (types, int64, finiteness, ranges, the
mean and CI recomputed from per-episode accuracies, one block per (head, shots) of the task, the canonical
episodes and config hash); a bad file is left out of the leaderboard by name; a manifest of result-file
hashes sits beside each leaderboard; a model name is bound to one configuration."""

import copy
import hashlib
import json
import logging
import math

import numpy as np
import pytest

from ncbench import leaderboard
from ncbench.checkpoint import read_card
from ncbench.cli import main
from ncbench.results import (Canon, NameTakenError, Result, ResultError, bind_model_name, iter_results,
                             validate_record, write_result)
from ncbench.run import run_task
from ncbench.tasks import load_task
from ncbench.unit import RunOptions

HEADS, SHOTS = ("ncc", "ridge"), (1, 3)


def record(model="m", seed=0, accs=(0.5, 0.75, 1.0), model_hash="aaaaaaaaaaaa", backbone="tiny-conv"):
    """A valid finished result of task "tiny" whose acc_mean and acc_ci95 are those of its per-episode values."""
    a = np.asarray(accs, dtype=float)
    ci = 1.96 * float(a.std(ddof=1)) / math.sqrt(a.size)
    return {
        "schema": 1, "status": "ok", "error": None,
        "unit": {"task": "tiny", "task_version": 1, "model": model, "backbone": backbone, "source_classes": 4,
                 "seed": seed, "config_hash": f"{seed:012d}", "model_hash": model_hash, "backbone_options": {}},
        "provenance": {"episodes": {str(s): f"digest{s}" for s in SHOTS}, "date": "2026-01-01T00:00:00+00:00",
                       "wall_time_s": 1.5, "world_size": 1},
        "source": {"nc1": 0.5, "source_test_acc": 0.9, "nc_rank_limited": False},
        "target": {"cdnv": 0.4, "ncc_acc": 0.7},
        "layers": [{"layer": "b", "variant": "flat", "ncc_error": 0.25, "ncc_errors": 1, "n": 4, "cdnv": 0.5}],
        "episodes": [{"head": h, "ways": 3, "shots": s, "queries": 4, "acc_mean": float(a.mean()), "acc_ci95": ci,
                      "n": int(a.size), "per_episode": a.tolist()} for h in HEADS for s in SHOTS],
    }


CANON = Canon("tiny", 1, HEADS, SHOTS, ways=3, queries=4, count=3, episodes={"1": "digest1", "3": "digest3"},
              config_hash=lambda key: f"{key.seed:012d}")


def _set(path, value):
    def mutate(rec):
        *parents, last = path
        d = rec
        for k in parents:
            d = d[k]
        if value is DELETE:
            del d[last]
        else:
            d[last] = value
    return mutate


DELETE = object()

# (mutation of a valid record, what the error says); every one must be refused
FORGERIES = {
    "acc-mean-inflated": (_set(["episodes", 0, "acc_mean"], 0.75 + 1e-6), "is not the mean of per_episode"),
    "ci-shrunk": (_set(["episodes", 0, "acc_ci95"], 0.01), "is not the 95 % half-width"),
    "ci-negative": (_set(["episodes", 0, "acc_ci95"], -0.1), "outside [0, None]"),
    "ci-missing": (_set(["episodes", 0, "acc_ci95"], None), "is not the 95 % half-width"),
    "accuracy-above-1": (_set(["episodes", 1, "per_episode", 0], 1.5), "per_episode[0]: 1.5 is outside [0, 1]"),
    "accuracy-nan": (_set(["episodes", 1, "per_episode", 0], float("nan")), "expected a finite number"),
    "accuracy-string": (_set(["episodes", 1, "per_episode", 0], "0.5"), "expected a number, got '0.5'"),
    "accuracy-bool": (_set(["episodes", 1, "per_episode", 0], True), "expected a number, got True"),
    "n-mismatch": (_set(["episodes", 0, "n"], 4), "3 values, n = 4"),
    "seed-beyond-int64": (_set(["unit", "seed"], 2**63), "outside int64"),
    "seed-string": (_set(["unit", "seed"], "0"), "unit.seed: expected an integer"),
    "source-classes-zero": (_set(["unit", "source_classes"], 0), "unit.source_classes: 0 is outside [1, None]"),
    "metric-inf": (_set(["source", "nc1"], float("inf")), "source.nc1: expected a finite number"),
    "metric-huge-int": (_set(["source", "nc1"], 10**30), "outside int64"),
    "metric-string": (_set(["target", "cdnv"], "0.4"), "target.cdnv: expected a number"),
    "target-acc-above-1": (_set(["target", "ncc_acc"], 1.01), "target.ncc_acc: 1.01 is outside [0, 1]"),
    "layer-error-above-1": (_set(["layers", 0, "ncc_error"], 2.0), "layers[0].ncc_error"),
    "no-episodes": (_set(["episodes"], []), "needs at least one (head, shots) block"),
    "digest-missing": (_set(["provenance", "episodes"], {"1": "digest1"}), "provenance.episodes: digests for shots"),
    "world-size-zero": (_set(["provenance", "world_size"], 0), "provenance.world_size"),
    "wall-time-negative": (_set(["provenance", "wall_time_s"], -1.0), "provenance.wall_time_s"),
    "empty-model": (_set(["unit", "model"], ""), "unit.model: invalid name '': empty name"),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_record_is_refused(name):
    rec = record()
    validate_record(copy.deepcopy(rec), "r.json")  # the original is valid
    mutate, message = FORGERIES[name]
    mutate(rec)
    with pytest.raises(ResultError, match="^r.json: ") as err:
        validate_record(rec, "r.json")
    assert message in str(err.value)


def test_duplicate_episode_block_is_refused():
    rec = record()
    rec["episodes"].append(copy.deepcopy(rec["episodes"][0]))
    with pytest.raises(ResultError, match=r"more than one block for \(head, shots\) \('ncc', 1\)"):
        validate_record(rec, "r.json")


CANON_FORGERIES = {
    "block-missing": (lambda r: r["episodes"].pop(), "('ridge', 3) is missing"),
    "extra-head": (lambda r: r["episodes"].append({**r["episodes"][0], "head": "logistic"}),
                   "('logistic', 1) is not in the task"),
    "fewer-episodes": (lambda r: [ep.update(n=2, per_episode=ep["per_episode"][:2], acc_mean=0.625,
                                            acc_ci95=1.96 * math.sqrt(0.03125) / math.sqrt(2)) for ep in r["episodes"]],
                       "ways, queries, n = (3, 4, 2), the task file says (3, 4, 3)"),
    "easier-ways": (lambda r: [ep.update(ways=2) for ep in r["episodes"]], "ways, queries, n = (2, 4, 3)"),
    "other-episodes": (_set(["provenance", "episodes", "3"], "cherrypicked"), "not the task's canonical digest3"),
    "other-config": (_set(["unit", "config_hash"], "ffffffffffff"), "is not the canonical 000000000000"),
    "other-version": (_set(["unit", "task_version"], 2), "task 'tiny' version 2 is not the task file's"),
}


@pytest.mark.parametrize("name", sorted(CANON_FORGERIES))
def test_record_against_the_task_file(name):
    rec = record()
    validate_record(copy.deepcopy(rec), "r.json", CANON)
    mutate, message = CANON_FORGERIES[name]
    mutate(rec)
    validate_record(copy.deepcopy(rec), "r.json")  # valid on its own ...
    with pytest.raises(ResultError) as err:  # ... but not a result of the task file
        validate_record(rec, "r.json", CANON)
    assert message in str(err.value)


def test_invalid_record_is_never_written(tmp_path):
    rec = record()
    result = Result.from_dict(rec)
    object.__setattr__(result.episodes[0], "acc_mean", 0.99)
    with pytest.raises(ResultError, match="not written.*is not the mean of per_episode"):
        write_result(tmp_path, result)
    assert not list(tmp_path.rglob("*.json"))


def test_bad_files_are_left_out_of_the_leaderboard_by_name(tmp_path, caplog):
    results = tmp_path / "results"
    good = [write_result(results, Result.from_dict(record("m", seed))) for seed in (0, 1)]
    forged = write_result(results, Result.from_dict(record("m", 2)))
    rec = json.loads(forged.read_text())
    rec["episodes"][0]["acc_mean"] = 1.0  # inflated by hand
    forged.write_text(json.dumps(rec))
    junk = results / "tiny" / "m" / "s4-seed3-000000000003.json"
    junk.write_bytes(b"\xff\xfe not json")
    moved = results / "tiny" / "other" / good[0].name  # a valid file of model m, planted under "other"
    moved.parent.mkdir()
    moved.write_bytes(good[0].read_bytes())
    with caplog.at_level(logging.WARNING):
        df = leaderboard.build(results, "tiny")
    assert sorted(set(df["seed"])) == [0, 1] and set(df["model"]) == {"m"} and len(df) == 2 * 4
    warned = caplog.text
    for bad in (forged, junk, moved):
        assert str(bad) in warned
    assert "is not the mean of per_episode" in warned and "file name does not match its unit" in warned


def _manifest_lines(path):
    return path.read_text().splitlines()


def test_manifest_is_written_and_checked(tmp_path, capsys):
    results, lb = tmp_path / "results", tmp_path / "lb"
    paths = [write_result(results, Result.from_dict(record("m", seed))) for seed in (0, 1)]
    store = ["--results", str(results), "--leaderboards", str(lb)]
    assert main(["leaderboard", *store]) == 0
    manifest = lb / "tiny.sha256"
    expected = sorted(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(results).as_posix()}"
                      for p in paths)
    assert _manifest_lines(manifest) == expected  # sha256sum format, sorted by path
    csv = (lb / "tiny.csv").read_bytes()

    # a new result is simply added
    paths.append(write_result(results, Result.from_dict(record("m", 2))))
    assert main(["leaderboard", *store]) == 0 and len(_manifest_lines(manifest)) == 3
    csv = (lb / "tiny.csv").read_bytes()
    capsys.readouterr()

    # a listed result rewritten (valid, but other numbers): reported, nothing written
    write_result(results, Result.from_dict(record("m", 0, accs=(1.0, 1.0, 1.0))))
    assert main(["leaderboard", *store]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tiny/m/s4-seed0-000000000000.json: sha256 differs from" in err
    assert "--update-manifest" in err and (lb / "tiny.csv").read_bytes() == csv
    # accepted with --update-manifest
    assert main(["leaderboard", *store, "--update-manifest"]) == 0
    assert (lb / "tiny.csv").read_bytes() != csv and main(["leaderboard", *store]) == 0

    # a listed result removed: reported too
    paths[1].unlink()
    assert main(["leaderboard", *store]) == 2
    assert "tiny/m/s4-seed1-000000000001.json: listed in" in capsys.readouterr().err


def test_model_name_is_bound_to_its_configuration(tmp_path, tiny_task_file, capsys):
    results = tmp_path / "results"
    write_result(results, Result.from_dict(record("m", 0, model_hash="aaaaaaaaaaaa")))
    key = Result.from_dict(record("m", 1, model_hash="bbbbbbbbbbbb")).unit
    assert bind_model_name(results, Result.from_dict(record("m", 1)).unit) == []  # same configuration
    with pytest.raises(NameTakenError, match="model name 'm' is already taken on task 'tiny' by another configuration"):
        bind_model_name(results, key)
    # the CLI refuses before anything runs: exit 2, one line
    task = str(tiny_task_file(source_classes=[4], seeds=[0]))
    store = ["--out", str(tmp_path / "runs"), "--results", str(results), "--leaderboards", str(tmp_path / "lb")]
    assert main(["run", task, "--backbone", "tiny-mlp", "--model", "m", *store]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already taken" in err and "--replace" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "lb").exists()
    # --replace: the other configuration's results go
    (old,) = bind_model_name(results, key, replace=True)
    assert not old.exists() and list(iter_results(results)) == []


@pytest.mark.slow
def test_real_results_hold_their_hashes_and_match_the_task(tiny_task_file, tmp_path, caplog):
    task = load_task(tiny_task_file(source_classes=[4], seeds=[0],
                                    pretrain={"epochs": 1, "batch_size": 16, "track_every": 0}))
    opts = RunOptions(out=tmp_path / "runs", results=tmp_path / "results", backbone="tiny-mlp", model="mlp")
    assert [st for _, st in run_task(task, opts)] == ["ok"]
    ((path, rec),) = iter_results(opts.results)
    card = read_card(next((opts.out / "checkpoints").iterdir()))
    assert rec.unit.model_hash == card.extra["model_hash"] and len(rec.unit.model_hash) == 12
    assert rec.unit.backbone_options == {}
    canon = leaderboard.canon(task)
    assert len(leaderboard.build(opts.results, "tiny", canon)) == len(task.heads) * len(task.episodes.shots)
    # the same file with another episode digest, or scored on fewer episodes, is left out against the task
    raw = json.loads(path.read_text())
    raw["provenance"]["episodes"]["1"] = "0" * 16
    path.write_text(json.dumps(raw))
    with caplog.at_level(logging.WARNING):
        assert len(leaderboard.build(opts.results, "tiny", canon)) == 0
    assert "provenance.episodes['1']" in caplog.text and str(path) in caplog.text
    # without the task file it is only checked for self-consistency
    assert len(leaderboard.build(opts.results, "tiny")) == len(task.heads) * len(task.episodes.shots)
