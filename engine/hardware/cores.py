"""How many CPU cores this process may use: the count that sizes thread pools and worker counts.

`os.cpu_count()` counts the machine's cores, not this process's: a process pinned to some cores
(taskset, a container's cpuset) or given a CPU quota (a container's `--cpus`, systemd's
CPUQuota, a cgroup v2 `cpu.max`) has fewer, and threads beyond them only wait for each other.
"""
import math
import os

CGROUP = "/sys/fs/cgroup"
SELF_CGROUP = "/proc/self/cgroup"


def usable_cores(cgroup: str = CGROUP, self_cgroup: str = SELF_CGROUP) -> int:
    """The cores this process may use, at least 1: the fewer of its CPU affinity and its cgroup v2
    quota.

    Takes the cgroup v2 mount point (`cgroup`) and the file naming this process's cgroup
    (`self_cgroup`, a line `0::/its/path`); both default to the system's, and are arguments so
    that a test can point them at files of its own. The affinity is `os.sched_getaffinity(0)`
    where the platform has it, else `os.cpu_count()`. The quota is the smallest `cpu.max`
    ("QUOTA PERIOD" in microseconds, "max PERIOD" for none) of this process's cgroup and the
    cgroups above it, up to the mount point's own (inside a container, usually the only one):
    QUOTA / PERIOD cores, rounded down, since a thread beyond the whole cores of a quota is
    throttled for part of each period while the others wait for it, and never below 1.

    Example: affinity {0, 1, 2, 3} and cpu.max "150000 100000" (1.5 cores) -> 1; with
    "200000 100000" -> 2; with "max 100000" (no quota) -> 4.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    quota = _quota(cgroup, self_cgroup)
    if quota is not None:
        cores = min(cores, math.floor(quota))
    return max(1, cores)


def _quota(cgroup: str, self_cgroup: str) -> float | None:
    """The smallest cgroup v2 CPU quota, in cores, of this process's cgroup and those above it
    (None: no quota, or no cgroup v2)."""
    quotas = [q for q in map(_cpu_max, _cgroup_folders(cgroup, self_cgroup)) if q is not None]
    return min(quotas, default=None)


def _cgroup_folders(cgroup: str, self_cgroup: str) -> list[str]:
    """This process's cgroup v2 folder and those above it, up to the mount point (itself included)."""
    path = ""
    try:
        with open(self_cgroup) as f:
            for line in f:
                if line.startswith("0::"):  # cgroup v2: hierarchy 0, no controllers named
                    path = line[3:].strip()
    except OSError:
        pass
    parts = [p for p in path.split("/") if p and p != ".."]
    return [os.path.join(cgroup, *parts[:i]) for i in range(len(parts), -1, -1)]


def _cpu_max(folder: str) -> float | None:
    """The quota in a cgroup folder's cpu.max, in cores ("150000 100000" -> 1.5); None for "max",
    a missing file or one that does not parse."""
    try:
        with open(os.path.join(folder, "cpu.max")) as f:
            fields = f.read().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None
