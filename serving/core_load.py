"""How many of this process's cores sat idle lately, from /proc/stat (Linux; elsewhere: unknown).

A batch-1 run split over two ONNX Runtime threads is faster only while the second core is free.
On a busy machine the second thread waits to be scheduled, and the first waits for it, so small
runs cost more CPU per image and finish later than on one thread (BENCHMARKS.md, "Small runs on
one thread"). OpenMP's dynamic adjustment makes the same choice from the system's load. Under a
cgroup CPU quota (contracts/cpu_limits.py) idle host cores are not this process's to use: what is
spare is at most the quota less what the cgroup used over the same interval.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from cnnserve.contracts.cpu_limits import CpuQuota

PROC_STAT = Path("/proc/stat")
REFRESH_S = 0.1  # readings this far apart: a tenth of a second of history per decision


def idle_and_total(fields: Sequence[str]) -> tuple[int, int]:
    """Idle (idle + iowait) and all (user to steal) jiffies of one /proc/stat `cpu` line's
    numbers; guest time is already inside user."""
    values = [int(v) for v in fields[:8]]
    return values[3] + values[4], sum(values)


def _idle_and_total(text: str, cpus: set[int]) -> tuple[int, int]:
    """`idle_and_total` summed over the `cpuN` lines of `cpus`."""
    idle = total = 0
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *fields = line.split()
        if int(name[3:]) in cpus:
            cpu_idle, cpu_total = idle_and_total(fields)
            idle += cpu_idle
            total += cpu_total
    return idle, total


class SpareCores:
    """Idle cores among this process's (its CPU affinity) over the last ~`REFRESH_S`, no more than
    `quota` left unused; None until two readings exist or where /proc/stat is missing. Cheap to
    ask often: it rereads /proc/stat at most every `REFRESH_S`, on whichever thread asks first."""

    def __init__(
        self, proc_stat: Path = PROC_STAT, clock=time.monotonic, quota: CpuQuota | None = None
    ) -> None:
        self._path = proc_stat
        self._clock = clock
        self._quota = quota
        self._cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
        self._lock = threading.Lock()
        self._last: tuple[float, int, int, int | None] | None = None  # when, idle, total, cgroup ns
        self._spare: float | None = None
        self._unreadable = False  # no /proc/stat here: never try again

    def spare(self) -> float | None:
        if self._unreadable:
            return None
        now = self._clock()
        last = self._last
        if last is not None and now - last[0] < REFRESH_S:
            return self._spare
        if not self._lock.acquire(blocking=False):
            return self._spare  # another thread is reading
        try:
            try:
                idle, total = _idle_and_total(self._path.read_text(), self._cpus)
            except (OSError, ValueError):
                self._unreadable = True
                return None
            quota = self._quota
            used_ns = quota.usage_ns() if quota is not None else None
            if last is not None and total > last[2]:
                spare = len(self._cpus) * (idle - last[1]) / (total - last[2])
                if quota is not None and used_ns is not None and last[3] is not None and now > last[0]:
                    used = (used_ns - last[3]) / 1e9 / (now - last[0])  # cores the cgroup used
                    spare = min(spare, max(0.0, quota.cores - used))
                self._spare = spare
            self._last = (now, idle, total, used_ns)
            return self._spare
        finally:
            self._lock.release()
