"""engine.hardware.cores.usable_cores: affinity and a cgroup v2 quota, each forced (the same on any machine)."""
import os

import pytest

from engine.hardware.cores import usable_cores


@pytest.fixture
def cgroup(tmp_path):
    """A cgroup v2 mount point of our own and this process's cgroup file, with no quota set:
    write(path, cpu_max) puts a cpu.max under the mount; own(path) names the process's cgroup."""
    root, own_file = tmp_path / "cgroup", tmp_path / "self-cgroup"
    root.mkdir()
    own_file.write_text("0::/\n")

    def write(path, cpu_max):
        folder = root / path
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cpu.max").write_text(cpu_max + "\n")

    def own(path):
        own_file.write_text(f"1:cpu:/elsewhere\n0::{path}\n")  # a cgroup v1 line is not ours to read

    def cores():
        return usable_cores(str(root), str(own_file))

    return write, own, cores


def _affinity(monkeypatch, n):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)


def test_affinity_without_a_quota(cgroup, monkeypatch):
    write, _, cores = cgroup
    _affinity(monkeypatch, 3)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the machine's count: not this process's
    assert cores() == 3  # no cpu.max at all
    write("", "max 100000")  # "max": no quota
    assert cores() == 3


def test_no_affinity_falls_back_to_the_machines_count(cgroup, monkeypatch):
    *_, cores = cgroup
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 5)
    assert cores() == 5
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one
    assert cores() == 1


@pytest.mark.parametrize("cpu_max, expected", [
    ("200000 100000", 2),   # 2 cores
    ("150000 100000", 1),   # 1.5 cores: rounded down
    ("50000 100000", 1),    # half a core: never below 1
    ("350000 100000", 3),   # 3.5 cores
    ("900000 100000", 4),   # more than the affinity: the affinity
    ("max 100000", 4),      # no quota
    ("garbage", 4),         # unreadable: no quota
])
def test_a_quota_limits_the_affinity(cgroup, monkeypatch, cpu_max, expected):
    write, _, cores = cgroup
    _affinity(monkeypatch, 4)
    write("", cpu_max)
    assert cores() == expected


def test_the_smallest_quota_of_the_processs_cgroup_and_those_above_it(cgroup, monkeypatch):
    write, own, cores = cgroup
    _affinity(monkeypatch, 8)
    own("/a/b")
    write("", "max 100000")
    write("a", "300000 100000")
    write("a/b", "max 100000")
    assert cores() == 3  # the parent's quota holds the child
    write("a/b", "250000 100000")
    assert cores() == 2
    write("c", "100000 100000")  # another cgroup's quota: not ours
    assert cores() == 2
