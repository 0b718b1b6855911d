"""Untrusted backbones run in a sandbox process: crashes, hangs and memory hogs fail their own row only;
sandboxed numbers equal in-process ones; weights and features are read as safetensors, never unpickled."""

import hashlib
import json
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ncbench import leaderboard, sandbox
from ncbench.backbones import BackboneError
from ncbench.checkpoint import CheckpointError, load_checkpoint, read_card, read_weights
from ncbench.cli import main
from ncbench.layerwise import LayerCurves
from ncbench.results import iter_results
from ncbench.run import run_task
from ncbench.unit import RunOptions, UnitFeatures
from ncbench.sandbox import SandboxError, load_features, save_features
from ncbench.tasks import load_task

needs_bwrap = pytest.mark.skipif(sandbox.bwrap_problem() is not None, reason=f"{sandbox.bwrap_problem()}")
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


NET = """
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self, in_channels, image_size, hang=False):
            super().__init__()
            h, w = image_size if isinstance(image_size, (list, tuple)) else (image_size, image_size)
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, 12), nn.ReLU())
            self.feature_dim = 12
            self.hang = hang

        def forward(self, x):
            if self.hang:
                time.sleep(3600)
            return self.body(x)
"""

# Pretraining builds the backbone under torch.manual_seed(unit seed): the seed picks the misbehaviour, so
# one run holds misbehaving units and a well-behaved one (seed 1004).
MISBEHAVING = NET + """
    def backbone(in_channels=1, image_size=16):
        seed = torch.initial_seed()
        if seed == 1000:
            os.kill(os.getpid(), signal.SIGSEGV)
        if seed == 1001:
            os._exit(7)
        if seed == 1002:
            torch.empty(4 * 2**30)  # 16 GB of address space: over an 8 GB limit, harmless without one
        return Net(in_channels, image_size, hang=seed == 1003)
"""

GOOD = NET + """
    def backbone(in_channels=1, image_size=16):
        return Net(in_channels, image_size)
"""


def write_net(path, body):
    path.write_text("import os, signal, time\nimport torch\n" + textwrap.dedent(body))
    return f"{path}:backbone"


@pytest.fixture
def small_task(tiny_task_file):
    def make(seeds):
        return load_task(tiny_task_file(source_classes=[4], seeds=seeds,
                                        pretrain={"epochs": 1, "batch_size": 16, "track_every": 0}))
    return make


def rows(results):
    return {r.unit.seed: r for _, r in iter_results(results)}


@pytest.mark.slow
@needs_bwrap
def test_crash_exit_memory_and_hang_fail_their_own_rows(small_task, tmp_path):
    spec = write_net(tmp_path / "misbehaving.py", MISBEHAVING)
    # the timeout leaves room for a loaded 2-core machine: each sandbox job imports torch in a fresh process
    opts = RunOptions(out=tmp_path / "runs", results=tmp_path / "results", backbone=spec, memory_gb=8, timeout_s=180)
    statuses = run_task(small_task([1000, 1001, 1002, 1003, 1004]), opts)
    assert [st for _, st in statuses] == ["failed"] * 4 + ["ok"]
    rec = rows(opts.results)
    assert "crashed with signal SIGSEGV" in rec[1000].error
    assert "crashed with exit code 7" in rec[1001].error
    assert "memory limit 8 GB exceeded" in rec[1002].error and "can't allocate memory" in rec[1002].error
    assert "timeout after 180 s" in rec[1003].error
    assert all(spec in rec[s].error for s in range(1000, 1004))
    assert rec[1004].target["ncc_acc"] > 0 and len(rec[1004].episodes) == 6
    assert not list((tmp_path / "runs").glob(".sandbox-*"))  # job folders are removed
    df = leaderboard.build(opts.results, "tiny")
    assert df.groupby("seed")["status"].first().to_dict() == {1000: "failed", 1001: "failed", 1002: "failed",
                                                              1003: "failed", 1004: "ok"}
    assert set(df["model"]) == {"misbehaving.py-backbone"} and set(df["backbone"]) == {spec}


def _alive(pid):
    try:  # a zombie (state Z) has exited; only its parent has not reaped it yet
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _processes_with(token):
    """Live processes (host PIDs) whose command line holds ``token``: the sandbox's own PID namespace hides
    its PIDs from the code inside, so tests find its processes by a token in their command line."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and token.encode() in (d / "cmdline").read_bytes() and _alive(int(d.name)):
                found.append(int(d.name))
        except OSError:
            pass
    return found


def _wait_for(predicate, seconds=300):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.1)
    return predicate()


def sleeper(token):
    """Backbone code that starts a detached ``setsid`` sleeper carrying ``token`` in its command line."""
    return (f"subprocess.Popen(['setsid', sys.executable, '-c', 'import time; time.sleep(3600)', {token!r}], "
            "stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)")


def _hanging_run(tmp_path, tiny_task_file, token):
    spec = write_net(tmp_path / "hang.py", f"""
        import subprocess, sys
        def backbone(in_channels=1, image_size=16):
            {sleeper(token)}
            time.sleep(3600)
    """)
    cmd = [sys.executable, "-m", "ncbench", "run", str(tiny_task_file(source_classes=[4])), "--backbone", spec,
           "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--leaderboards", str(tmp_path / "lb")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait_for(lambda: _processes_with(token)), "the sandboxed backbone never started its sleeper"
    return proc


@pytest.mark.slow
@needs_bwrap
@needs_proc
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_stopped_harness_takes_its_sandbox_down(how, tiny_task_file, tmp_path):
    """SIGKILL: the kernel kills the sandbox with its parent (--die-with-parent, PID namespace); SIGTERM:
    the harness also removes the job folder."""
    token = f"ncbench-test-{how}-{time.time_ns()}"
    proc = _hanging_run(tmp_path, tiny_task_file, token)
    assert list((tmp_path / "runs").glob(".sandbox-*"))
    proc.send_signal(getattr(signal, how))
    rc = proc.wait(timeout=120)
    assert _wait_for(lambda: not _processes_with(token), 60), "a sandboxed process outlived the harness"
    assert not (tmp_path / "results").exists()
    if how == "SIGTERM":
        assert rc == 128 + signal.SIGTERM
        assert not list((tmp_path / "runs").glob(".sandbox-*"))  # job folder cleaned


@needs_bwrap
def test_sandboxed_numbers_equal_in_process(small_task, tmp_path, capsys):
    spec = write_net(tmp_path / "good.py", GOOD)
    task = small_task([0])
    module = "ncbench_user_backbone_" + hashlib.sha1(str((tmp_path / "good.py").resolve()).encode()).hexdigest()[:12]
    records, imported = {}, {}
    for name, isolate in (("sandbox", None), ("in-process", False)):
        opts = RunOptions(out=tmp_path / name, results=tmp_path / name / "results", backbone=spec, isolate=isolate)
        assert [st for _, st in run_task(task, opts)] == ["ok"]
        (records[name],) = rows(opts.results).values()
        imported[name] = module in sys.modules
        if isolate is None:  # `ncbench pretrain` goes through the sandbox too, and finds the finished checkpoint
            capsys.readouterr()
            assert main(["pretrain", task.path, "--backbone", spec, "--source-classes", "4", "--seed", "0",
                         "--out", str(opts.out)]) == 0
            (ckpt,) = (opts.out / "checkpoints").iterdir()
            assert capsys.readouterr().out.strip() == str(ckpt) and module not in sys.modules
    a, b = records["sandbox"], records["in-process"]
    for key in ("source", "target", "layers", "episodes", "source_classes", "training_curve"):
        assert getattr(a, key) == getattr(b, key), key
    assert a.provenance.checkpoint_sha256 == b.provenance.checkpoint_sha256
    # the child normalised with the same source-pool statistics as this process
    cards = [read_card(next((tmp_path / name / "checkpoints").iterdir())) for name in ("sandbox", "in-process")]
    assert cards[0].preprocessing == cards[1].preprocessing
    assert cards[0].preprocessing["normalization"]["source"] == "source-pool train images"
    # the sandboxed run never imported the submission here: its code ran only in the child
    assert imported == {"sandbox": False, "in-process": True}


@needs_bwrap
def test_submit_validates_untrusted_backbone_in_sandbox(tmp_path, tiny_task_file, capsys):
    crash = tmp_path / "crash.py"
    crash.write_text("import os\ndef backbone(**kw):\n    os._exit(9)\n")
    rc = main(["submit", f"{crash}:backbone", "--name", "crash", "--tasks", str(tiny_task_file()),
               "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r"), "--leaderboards", str(tmp_path / "lb")])
    err = capsys.readouterr().err
    assert rc == 2 and f"backbone '{crash}:backbone': crashed with exit code 9 (check)" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "lb").exists()


@pytest.mark.parametrize("flag", ["--timeout-s", "--memory-gb"])
def test_limits_must_be_positive(flag, tiny_task_file, capsys):
    assert main(["run", str(tiny_task_file()), flag, "0"]) == 2
    assert f"{flag[2:].replace('-', '_')}: expected a positive number, got 0.0" in capsys.readouterr().err


class _Payload:
    """Unpickling this creates a file: proof that a loader ran pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickles_are_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    blob = pickle.dumps({"w": _Payload(marker)})
    for name in ("weights.pt", "features.safetensors"):
        (tmp_path / name).write_bytes(blob)
    with pytest.raises(CheckpointError, match="is a pickle; refusing to unpickle it"):
        read_weights(tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        read_weights(tmp_path / "features.safetensors")
    with pytest.raises(SandboxError, match="from the sandbox is unreadable"):
        load_features(tmp_path / "features.safetensors", tmp_path)
    # a checkpoint whose card names a pickle is refused too
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.pt").write_bytes(blob)
    card = {"backbone": "tiny-mlp", "backbone_options": {}, "feature_dim": 4, "dataset": "d", "source_classes": [],
            "num_train": 0, "recipe": {}, "seed": 0, "epochs": 0, "preprocessing": {}, "weights": "model.pt",
            "sha256": hashlib.sha256(blob).hexdigest()}
    (ckpt / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(ckpt)
    assert not marker.exists()


def test_features_file_round_trip_and_validation(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = [{"layer": "b", "variant": "flat", "ncc_error": 0.25, "ncc_errors": 1, "n": 4, "cdnv": 0.5},
            {"layer": "penultimate", "variant": "flat", "ncc_error": 0.0, "ncc_errors": 0, "n": 4, "cdnv": None}]
    feats = UnitFeatures(tmp_path, torch.randn(6, 3, generator=g), torch.randn(2, 3, generator=g),
                         LayerCurves(rows, 0.01), torch.randn(9, 3, generator=g))
    save_features(tmp_path / "f.safetensors", feats)
    back = load_features(tmp_path / "f.safetensors", tmp_path)
    assert back.layers == feats.layers and back.layers.depths == {"flat": 2}
    for k in ("train", "test", "target"):
        assert torch.equal(getattr(back, k), getattr(feats, k))

    feats.target[0, 0] = float("nan")
    save_features(tmp_path / "nan.safetensors", feats)
    with pytest.raises(SandboxError, match="target holds NaN or inf"):
        load_features(tmp_path / "nan.safetensors", tmp_path)
    bad = UnitFeatures(tmp_path, feats.train, torch.randn(2, 4), feats.layers, feats.train.clone())
    save_features(tmp_path / "shape.safetensors", bad)
    with pytest.raises(SandboxError, match=r"test: expected float32 \[N, 3\], got torch.float32 \[2, 4\]"):
        load_features(tmp_path / "shape.safetensors", tmp_path)
    forged = UnitFeatures(tmp_path, feats.train, feats.test, LayerCurves(rows, 0.01), feats.train.clone())
    object.__setattr__(forged.layers, "rows", [{**rows[0], "ncc_errors": 7}])  # more errors than images
    save_features(tmp_path / "forged.safetensors", forged)
    with pytest.raises(SandboxError, match="layer_curves metadata is malformed"):
        load_features(tmp_path / "forged.safetensors", tmp_path)

ESCAPES = """
    import json, socket, subprocess, sys
    from pathlib import Path

    def attempt(what, fn):
        try:
            return {what: "done: " + str(fn())}
        except Exception as e:
            return {what: f"refused: {type(e).__name__}: {e}"}

    def backbone(in_channels=1, image_size=16):
        __SLEEPER__
        tries = {}
        tries.update(attempt("rewrite result", lambda: Path(__VICTIM__).write_text("{}")))
        tries.update(attempt("new result", lambda: (Path(__VICTIM__).parent / "forged.json").write_text("{}")))
        tries.update(attempt("checkpoint", lambda: (Path(__RUNS__) / "checkpoints" / "x").mkdir(parents=True)))
        tries.update(attempt("project", lambda: Path(__PROJECT__, "forged.txt").write_text("x")))
        tries.update(attempt("home secret", lambda: Path(__HOME_SECRET__).read_text()))
        tries.update(attempt("network", lambda: socket.create_connection(("127.0.0.1", __PORT__), timeout=5)))
        tries.update(attempt("job folder", lambda: (Path.home() / "mine.txt").write_text("ok")))
        tries["environ"] = sorted(os.environ)
        raise RuntimeError("REPORT" + json.dumps(tries) + "REPORT")
"""


@needs_bwrap
@needs_proc
def test_sandbox_escapes_fail(tmp_path, monkeypatch):
    """One sandboxed backbone tries every escape: writing result files, checkpoints or the project, reading
    the user's home, the network, leaving a setsid process behind, reading our environment."""
    token, secret = f"ncbench-test-escape-{time.time_ns()}", "tok-8c1f5e0a7d-SECRET"
    monkeypatch.setenv("MY_SECRET_TOKEN", secret)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(secret)
    monkeypatch.setenv("HOME", str(home))
    victim = tmp_path / "results" / "tiny" / "other-model" / "s4-seed0-abc.json"
    victim.parent.mkdir(parents=True)
    victim.write_text('{"other": "model"}')
    (tmp_path / "runs" / "checkpoints").mkdir(parents=True)
    server = socket.create_server(("127.0.0.1", 0))
    code = (ESCAPES.replace("__SLEEPER__", sleeper(token)).replace("__VICTIM__", repr(str(victim)))
            .replace("__RUNS__", repr(str(tmp_path / "runs"))).replace("__PROJECT__", repr(str(Path.cwd())))
            .replace("__HOME_SECRET__", repr(str(home / ".ssh" / "id_rsa"))).replace("__PORT__", str(server.getsockname()[1])))
    (tmp_path / "submission").mkdir()
    spec = write_net(tmp_path / "submission" / "escape.py", code)
    with server, pytest.raises(BackboneError) as err:
        sandbox.check_backbone(spec, {}, workdir_parent=tmp_path / "runs", timeout_s=600)
    message = str(err.value)
    tries = json.loads(message.split("REPORT")[1])
    # the project is read-only; /tmp (where these folders are) and the home folder are hidden (empty,
    # read-only tmpfs)
    assert "Read-only file system" in tries["project"] and "Read-only file system" in tries["checkpoint"]
    for what in ("rewrite result", "new result", "home secret"):
        assert tries[what].startswith(("refused: OSError", "refused: FileNotFoundError")), tries[what]
    # our server listens on 127.0.0.1, but the sandbox has a loopback of its own
    assert tries["network"].startswith(("refused: ConnectionRefusedError", "refused: OSError")), tries["network"]
    assert tries["job folder"] == "done: 2"  # HOME is the job folder, the one writable place
    assert "MY_SECRET_TOKEN" not in tries["environ"] and set(tries["environ"]) <= {
        *sandbox.ENV_ALLOW, "HOME", "TMPDIR", "PYTHONPATH", "NCBENCH_CACHE", "NCBENCH_THREADS", "PWD",
        "PYTHONDONTWRITEBYTECODE", "MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR", "KMP_DUPLICATE_LIB_OK",
        "KMP_INIT_AT_FORK"}
    assert secret not in message
    assert victim.read_text() == '{"other": "model"}' and sorted(victim.parent.iterdir()) == [victim]
    assert list((tmp_path / "runs" / "checkpoints").iterdir()) == []
    assert not (Path.cwd() / "forged.txt").exists()
    assert not list((tmp_path / "runs").glob(".sandbox-*"))  # job folder removed
    assert _processes_with(token) == []  # the setsid sleeper died with the sandbox's PID namespace


def test_error_texts_are_redacted_and_cut(monkeypatch):
    monkeypatch.setenv("MY_SECRET_TOKEN", "s3cr3t-value-42")
    monkeypatch.setenv("SHORT", "ab")  # too short to be a secret: left alone
    text = sandbox.clean_error("token s3cr3t-value-42 in ab " + "x" * 5000)
    assert "s3cr3t-value-42" not in text and text.startswith("token [redacted] in ab ")
    assert len(text) < sandbox.MAX_ERROR_CHARS + 50 and text.endswith("more characters cut]")
    assert str(Path.home()) in sandbox.clean_error(f"file {Path.home()}/x")  # paths are not secrets


@needs_bwrap
def test_secret_never_reaches_results_or_leaderboard(tmp_path, tiny_task_file, monkeypatch, capsys):
    """A failing submission prints what it can find of our environment, and echoes a value it learnt
    elsewhere: neither the result file, the CSV nor the command's output holds the secret."""
    secret = "tok-5b7e9d1c3a-SECRET"
    monkeypatch.setenv("MY_SECRET_TOKEN", secret)
    spec = write_net(tmp_path / "leak.py", f"""
        def backbone(in_channels=1, image_size=16):
            raise RuntimeError("env " + repr(dict(os.environ)) + " leaked {secret} " + "y" * 10000)
    """)
    task = tiny_task_file(source_classes=[4], seeds=[0])
    rc = main(["run", str(task), "--backbone", spec, "--out", str(tmp_path / "runs"), "--results",
               str(tmp_path / "results"), "--leaderboards", str(tmp_path / "lb")])
    out = capsys.readouterr()
    assert rc == 1
    (result,) = (tmp_path / "results").rglob("*.json")
    error = json.loads(result.read_text())["error"]
    assert "[redacted]" in error and "more characters cut]" in error and len(error) < 2200
    for path in [result, *(tmp_path / "lb").glob("*.csv")]:
        assert secret not in path.read_text() and "MY_SECRET_TOKEN" not in path.read_text()
    assert secret not in out.out + out.err


def test_untrusted_code_refused_without_bubblewrap(tmp_path, tiny_task_file, monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "_bwrap", lambda: (None, "bubblewrap (bwrap) is not installed"))
    spec = write_net(tmp_path / "good.py", GOOD)
    task = str(tiny_task_file(source_classes=[4], seeds=[0]))
    store = ["--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r"), "--leaderboards", str(tmp_path / "lb")]
    for argv in (["run", task, "--backbone", spec], ["pretrain", task, "--backbone", spec, "--source-classes", "4",
                                                      "--seed", "0"],
                 ["submit", spec, "--name", "good", "--tasks", task]):
        assert main([*argv, *store]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "bubblewrap (bwrap) is not installed: refusing to run it" in err
        assert "--trust-backbone" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "lb").exists()
