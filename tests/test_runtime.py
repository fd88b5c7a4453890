"""Threads that fit the machine: the CPU budget from the affinity mask and the cgroup quota (v1 and v2), and the
OpenMP spin count set before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fluxforge.runtime import CpuBudget, cgroup_quota, choose_threads

ROOT = Path(__file__).resolve().parents[1]


def _files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cgroup_v2_takes_the_tightest_limit_on_the_way_to_the_root(tmp_path):
    _files(tmp_path, {
        "proc/cgroup": "0::/kubepods/pod1/ctr\n",
        "fs/cpu.max": "max 100000\n",
        "fs/kubepods/pod1/cpu.max": "400000 100000\n",
        "fs/kubepods/pod1/ctr/cpu.max": "150000 100000\n",
    })
    assert cgroup_quota(tmp_path / "proc", tmp_path / "fs") == pytest.approx(1.5)
    (tmp_path / "fs/kubepods/pod1/ctr/cpu.max").write_text("max 100000\n")  # the pod's limit then applies
    assert cgroup_quota(tmp_path / "proc", tmp_path / "fs") == pytest.approx(4.0)


def test_cgroup_v1_cfs_quota_and_no_limit(tmp_path):
    _files(tmp_path, {
        "proc/cgroup": "12:memory:/docker/abc\n5:cpu,cpuacct:/docker/abc\n",
        "fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
        "fs/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "fs/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "fs/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_quota(tmp_path / "proc", tmp_path / "fs") == pytest.approx(2.0)
    (tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_quota(tmp_path / "proc", tmp_path / "fs") is None
    assert cgroup_quota(tmp_path / "nowhere", tmp_path / "fs") is None


@pytest.mark.parametrize(("affinity", "quota", "threads"), [
    (64, 2.5, 2),   # a pod limited to 2.5 cores on a big node: 2 threads, not 64
    (2, 8.0, 2),    # a loose quota does not add CPUs the mask forbids
    (4, None, 4),   # no quota: the affinity mask
    (8, 0.5, 1),    # less than a core: still one thread
])
def test_threads_never_exceed_what_the_process_may_use(affinity, quota, threads):
    assert choose_threads(CpuBudget(affinity, quota)) == threads


def test_an_explicit_thread_count_wins():
    assert choose_threads(CpuBudget(2, None), override=1) == 1


# What the OpenMP runtime saw when torch first loaded in a stage process (a finder that notes the variable and
# finds nothing, so the import goes on as usual).
_WATCH = r'''
import os, sys
seen = []

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("GOMP_SPINCOUNT"))

sys.meta_path.insert(0, Watch())
import stages.pretrain
assert "torch" in sys.modules, "the stage no longer loads torch: this test proves nothing"
print(seen)
'''


@pytest.mark.parametrize(("env", "seen"), [
    ({}, "['1000']"),                               # FluxForge's default (BENCHMARKS.md "Contended CPU")
    ({"GOMP_SPINCOUNT": "5"}, "['5']"),             # the user's spin count wins
    ({"OMP_WAIT_POLICY": "PASSIVE"}, "[None]"),     # a chosen wait policy: libgomp derives its own spin count
])
def test_a_stage_process_sets_the_openmp_spin_count_before_torch_loads(env, seen):
    clean = {k: v for k, v in os.environ.items() if k not in {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"}}
    done = subprocess.run([sys.executable, "-c", _WATCH], cwd=ROOT, env={**clean, **env, "PYTHONPATH": str(ROOT / "src")},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == seen
