"""How many cores this process may use: its CPU affinity (a cpuset), capped by its cgroup's CPU
quota (`docker run --cpus`, a pod's CPU limit, systemd's CPUQuota=).

ONNX Runtime sizes its default intra-op pool from the host's physical cores and never reads the
cgroup (microsoft/onnxruntime#29510): a pod limited to 2 CPUs on a 64-core node would get 32
threads, which the kernel then throttles together for the rest of each period. The quota is
found as the JDK and Go's automaxprocs find it: the process's cgroup from /proc/self/cgroup,
mapped through /proc/self/mountinfo to a directory (cgroup v2 `cpu.max`, else v1
`cpu.cfs_quota_us`), and the tightest limit from there up to the mount point, since a parent's
limit binds its children. Without a cgroup quota, or off Linux, only the affinity counts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROC_SELF = Path("/proc/self")


@dataclass(frozen=True)
class CpuQuota:
    """The tightest cgroup CPU limit over this process, and where its cgroup counts CPU time."""

    cores: float  # CPU seconds per second the cgroup may use
    directory: Path  # the cgroup that sets the limit
    usage_file: Path | None  # v2 cpu.stat (usage_usec), v1 cpuacct.usage (ns); None: not found

    def usage_ns(self) -> int | None:
        """CPU time the limited cgroup (every process in it) has used so far, or None."""
        if self.usage_file is None:
            return None
        try:
            text = self.usage_file.read_text()
            if self.usage_file.name == "cpu.stat":
                for line in text.splitlines():
                    key, _, value = line.partition(" ")
                    if key == "usage_usec":
                        return int(value) * 1000
                return None
            return int(text.split()[0])
        except (OSError, ValueError, IndexError):
            return None


@dataclass(frozen=True)
class CgroupMount:
    root: str  # the cgroup path mounted here ("/" unless the mount shows a sub-tree)
    point: Path
    fstype: str
    options: frozenset[str]  # v1: the controllers of this hierarchy


def cgroup_mounts(mountinfo: str) -> list[CgroupMount]:
    """The cgroup mounts of a /proc/self/mountinfo ("id parent dev root point opts ... - fs src super")."""
    mounts = []
    for line in mountinfo.splitlines():
        before, sep, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        point = Path(fields[4].replace("\\040", " "))
        mounts.append(CgroupMount(fields[3], point, tail[0], frozenset(tail[2].split(","))))
    return mounts


def _cgroups(text: str) -> dict[str, str]:
    """Controller → this process's cgroup path ("" for the v2 hierarchy), from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths.setdefault(controller, path)
    return paths


def _levels(mount: CgroupMount, path: str) -> list[Path]:
    """The process's cgroup directory under `mount`, then each parent up to the mount point."""
    root = mount.root.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        return [mount.point]  # the cgroup is not under this mount's sub-tree: only the top counts
    relative = path[len(root) :].strip("/")
    directory = mount.point / relative if relative else mount.point
    if not directory.is_dir():  # a namespace that renamed the path: only the top is known
        return [mount.point]
    levels = [directory]
    while levels[-1] != mount.point:
        levels.append(levels[-1].parent)
    return levels


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota_us = int((directory / "cpu.cfs_quota_us").read_text())
        period_us = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _tightest(levels: list[Path], read: Callable[[Path], float | None]) -> tuple[float, Path] | None:
    limits = [(quota, level) for level in levels if (quota := read(level)) is not None]
    return min(limits, key=lambda limit: limit[0]) if limits else None


def cpu_quota(proc_self: Path = PROC_SELF) -> CpuQuota | None:
    """This process's tightest cgroup CPU limit, v2 before v1; None where there is none."""
    try:
        cgroups = _cgroups((proc_self / "cgroup").read_text())
        mounts = cgroup_mounts((proc_self / "mountinfo").read_text())
    except OSError:
        return None
    for mount in mounts:
        if mount.fstype == "cgroup2" and "" in cgroups:
            found = _tightest(_levels(mount, cgroups[""]), _v2_quota)
            if found is not None:
                return CpuQuota(found[0], found[1], found[1] / "cpu.stat")
    for mount in mounts:
        if mount.fstype == "cgroup" and "cpu" in mount.options and "cpu" in cgroups:
            found = _tightest(_levels(mount, cgroups["cpu"]), _v1_quota)
            if found is not None:
                return CpuQuota(found[0], found[1], _v1_usage_file(mounts, cgroups, found[1], mount))
    return None


def _v1_usage_file(
    mounts: list[CgroupMount], cgroups: dict[str, str], limited: Path, cpu: CgroupMount
) -> Path | None:
    """cpuacct.usage of the limiting cgroup: the same directory where cpu and cpuacct share a
    hierarchy (the usual "cpu,cpuacct"), else the same relative path in cpuacct's."""
    if "cpuacct" in cpu.options:
        return limited / "cpuacct.usage"
    relative = limited.relative_to(cpu.point)
    for mount in mounts:
        if mount.fstype == "cgroup" and "cpuacct" in mount.options and "cpuacct" in cgroups:
            candidate = mount.point / relative / "cpuacct.usage"
            return candidate if candidate.exists() else None
    return None


def affinity_cores() -> int:
    """Cores this process may be scheduled on (its CPU affinity; elsewhere, the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class CoreBudget:
    """What this process may use: the cores it may run on and the cgroup's quota over them."""

    affinity: int
    quota: CpuQuota | None

    @property
    def cores(self) -> int:
        """Whole cores to plan threads and workers for: the affinity, capped by the quota."""
        if self.quota is None:
            return self.affinity
        return max(1, min(self.affinity, math.ceil(self.quota.cores)))

    @property
    def quota_limited(self) -> bool:
        """True when the quota, not the affinity, sets `cores`: ONNX Runtime's default is wrong."""
        return self.cores < self.affinity

    def describe(self) -> str:
        if self.quota is None:
            return f"{self.affinity} core(s) by CPU affinity"
        return (
            f"{self.cores} core(s): cgroup CPU quota {self.quota.cores:g} ({self.quota.directory}), "
            f"{self.affinity} by CPU affinity"
        )


def core_budget(proc_self: Path = PROC_SELF) -> CoreBudget:
    return CoreBudget(affinity_cores(), cpu_quota(proc_self))


def available_cores(proc_self: Path = PROC_SELF) -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (containers)."""
    return core_budget(proc_self).cores
