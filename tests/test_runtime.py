"""The process rules of ncbench.runtime: CPUs under a cgroup CPU quota (fake cgroup trees in tmp_path) and
OpenMP's passive wait policy, set before torch is imported at the entry points."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ncbench import runtime
from ncbench.runtime import cgroup_cpu_limit, prepare_process_env, shell_env_defaults

ROOT = Path(__file__).resolve().parents[1]


def _tree(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake cgroup mount ``root`` holding ``files`` (relative path -> text) and a /proc/self/cgroup file."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "proc-cgroup").write_text(textwrap.dedent(proc).lstrip())
    return root, tmp_path / "proc-cgroup"


def test_cgroup_v2_quota_rounds_up(tmp_path):
    root, proc = _tree(tmp_path, "0::/user.slice/job-7\n", {"user.slice/job-7/cpu.max": "150000 100000\n",
                                                          "user.slice/cpu.max": "max 100000\n", "cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 2  # ceil(1.5)


def test_cgroup_v2_parent_quota_limits_too(tmp_path):
    root, proc = _tree(tmp_path, "0::/slurm/job-1/step\n", {"slurm/job-1/step/cpu.max": "max 100000\n",
                                                          "slurm/job-1/cpu.max": "300000 100000\n",
                                                          "slurm/cpu.max": "800000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 3


def test_cgroup_v2_container_namespace_reads_the_top(tmp_path):
    # a container with its own cgroup namespace sees "0::/" and its quota at the mount's top;
    # one without sees the host's path, which does not exist under its mount: the top still counts
    root, proc = _tree(tmp_path, "0::/\n", {"cpu.max": "400000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 4
    proc.write_text("0::/docker/abc123\n")
    assert cgroup_cpu_limit(root, proc) == 4


def test_cgroup_v1_quota(tmp_path):
    proc = """
        12:memory:/docker/abc
        4:cpu,cpuacct:/docker/abc
        0::/
    """
    root, proc = _tree(tmp_path, proc, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
                                        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
                                        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root, proc) == 3


def test_cgroup_v1_mounted_as_cpu_alone(tmp_path):
    root, proc = _tree(tmp_path, "3:cpu,cpuacct:/job\n", {"cpu/job/cpu.cfs_quota_us": "100000",
                                                         "cpu/job/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(root, proc) == 1


@pytest.mark.parametrize("files,proc", [
    ({"cpu.max": "max 100000\n"}, "0::/\n"),                                                 # v2, no quota
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "1:cpu:/\n"),   # v1, no quota
    ({}, "0::/\n"),                                                                          # no cpu files at all
    ({"cpu.max": "garbage\n"}, "0::/\n"),                                                    # unparseable
    ({"cpu.max": "0 100000\n"}, "0::/\n"),                                                   # nonsense quota
])
def test_no_quota(tmp_path, files, proc):
    root, proc = _tree(tmp_path, proc, files)
    assert cgroup_cpu_limit(root, proc) is None


def test_quota_below_one_cpu_is_one(tmp_path):
    root, proc = _tree(tmp_path, "0::/a\n", {"a/cpu.max": "20000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 1


def test_missing_proc_file(tmp_path):
    assert cgroup_cpu_limit(tmp_path, tmp_path / "no-such-file") is None


def test_unreadable_quota_falls_back_to_affinity(tmp_path, monkeypatch):
    root, proc = _tree(tmp_path, "0::/a\n", {"a/cpu.max": "100000 100000\n"})
    quota = root / "a" / "cpu.max"
    if os.geteuid() == 0:  # root reads files whatever their permissions: a folder in its place is unreadable
        quota.unlink()
        quota.mkdir()
    else:
        quota.chmod(0)
    assert cgroup_cpu_limit(root, proc) is None
    monkeypatch.setattr(runtime, "CGROUP_ROOT", root)
    monkeypatch.setattr(runtime, "PROC_CGROUP", proc)
    assert runtime.available_cpus() == len(os.sched_getaffinity(0))


def test_available_cpus_is_the_smaller_of_quota_and_affinity(tmp_path, monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    root, proc = _tree(tmp_path, "0::/a\n", {"a/cpu.max": "100000 100000\n"})
    monkeypatch.setattr(runtime, "CGROUP_ROOT", root)
    monkeypatch.setattr(runtime, "PROC_CGROUP", proc)
    assert runtime.available_cpus() == 1
    (root / "a" / "cpu.max").write_text(f"{(affinity + 8) * 100000} 100000\n")  # a quota above the mask
    assert runtime.available_cpus() == affinity
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.delenv("NCBENCH_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    (root / "a" / "cpu.max").write_text("100000 100000\n")
    assert runtime.default_threads() == 1


# ------------------------------------------------------------------------------------ OpenMP wait policy
def test_wait_policy_rule():
    assert prepare_process_env({}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "active"}
    assert prepare_process_env(env) == {} and env == {"OMP_WAIT_POLICY": "active"}  # the user's value is kept
    env = {"GOMP_SPINCOUNT": "10000"}  # the user chose how threads wait
    assert prepare_process_env(env) == {} and env == {"GOMP_SPINCOUNT": "10000"}
    env = {"PATH": "/bin"}
    assert prepare_process_env(env) == {"OMP_WAIT_POLICY": "PASSIVE"} and env["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.parametrize("job_env,expected", [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),
                                              ({"GOMP_SPINCOUNT": "1"}, "unset")])
def test_job_script_lines_follow_the_rule(job_env, expected):
    script = "\n".join([*shell_env_defaults(), 'echo "${OMP_WAIT_POLICY-unset}"'])
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run(["sh", "-c", script], env={**env, **job_env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


# sitecustomize.py for the child: an import hook that writes OMP_WAIT_POLICY as os.environ holds it at the
# moment torch is first imported (when torch loads libgomp, which reads it then)
PROBE = """
import json, os, sys

class Probe:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch" not in sys.modules:
            with open(os.environ["PROBE_OUT"], "w") as f:
                json.dump({"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}, f)
        return None

sys.meta_path.insert(0, Probe())
"""


@pytest.mark.parametrize("user", [None, "ACTIVE"])
def test_cli_sets_the_wait_policy_before_torch_is_imported(tmp_path, user):
    """``python -m ncbench`` (the CLI's path) has OMP_WAIT_POLICY=PASSIVE in os.environ when torch is first
    imported, or the user's value. A ``sitecustomize`` on PYTHONPATH installs an import hook that records
    os.environ at the first ``import torch``."""
    (tmp_path / "sitecustomize.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]), PROBE_OUT=str(tmp_path / "probe.json"),
               NCBENCH_CACHE=str(tmp_path / "cache"))
    if user:
        env["OMP_WAIT_POLICY"] = user
    proc = subprocess.run([sys.executable, "-m", "ncbench", "list", "backbones"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "probe.json").read_text()) == {"OMP_WAIT_POLICY": user or "PASSIVE"}


def test_sandbox_child_environment_has_the_wait_policy(tmp_path, monkeypatch):
    from ncbench.sandbox import _sandbox_env

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert _sandbox_env(tmp_path)["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert _sandbox_env(tmp_path)["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    env = _sandbox_env(tmp_path)
    assert env["GOMP_SPINCOUNT"] == "1000" and "OMP_WAIT_POLICY" not in env


def test_slurm_job_script_sets_the_wait_policy(tiny_task_file):
    from ncbench.executor import submitit_parameters
    from ncbench.tasks import load_task

    task = load_task(tiny_task_file())
    assert submitit_parameters(task.slurm, task)["slurm_setup"] == shell_env_defaults()
