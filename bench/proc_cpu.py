"""CPU time from Linux's /proc: a process's or a thread's utime + stime, and the whole machine's.

`bench server --server-pid` and `bench/workers.py` sample a server's process tree with it (a
supervisor, its workers, a peer's worker processes), `scripts/thread_cpu.py` each thread of one
server process; all difference two samples taken around a load.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cnnserve.serving.core_load import idle_and_total

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def stat_cpu_seconds(stat: str) -> float:
    """utime + stime of a `/proc/PID[/task/TID]/stat` line, in seconds (the name in parentheses
    may hold spaces, so fields count from its closing one)."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def cpu_seconds(stat_path: Path) -> float:
    return stat_cpu_seconds(stat_path.read_text())


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds of a process tree at one moment: every process, and each one's main thread."""

    total_s: float
    by_pid: dict[int, float]
    main_thread_by_pid: dict[int, float]


def _children(pid: int, proc: Path) -> list[int]:
    found = []
    for task in (proc / str(pid) / "task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def process_tree(pid: int, proc: Path = PROC) -> list[int]:
    """`pid` and every process below it, parents first."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            todo += _children(current, proc)
        except OSError:
            continue
    return pids


def cpu_sample(root_pid: int, proc: Path = PROC) -> CpuSample:
    """The CPU seconds so far of `root_pid`'s tree; a process that exits while read is left out."""
    by_pid, main = {}, {}
    for pid in process_tree(root_pid, proc):
        try:
            by_pid[pid] = cpu_seconds(proc / str(pid) / "stat")
            main[pid] = cpu_seconds(proc / str(pid) / "task" / str(pid) / "stat")
        except OSError:
            continue
    return CpuSample(sum(by_pid.values()), by_pid, main)


def _thread_files(pid: int, name: str, proc: Path) -> Iterator[tuple[int, str]]:
    """(tid, text) of `/proc/PID/task/TID/NAME` for every thread of `pid` whose file could be read
    (a thread that ends while read, or a file this kernel does not keep, is skipped)."""
    for task in (proc / str(pid) / "task").iterdir():
        try:
            yield int(task.name), (task / name).read_text()
        except OSError:
            continue


def thread_cpu_seconds(pid: int, proc: Path = PROC) -> dict[int, tuple[str, float]]:
    """Every thread of `pid`: its name and CPU seconds so far; one that ends while read is skipped."""
    return {
        tid: (stat[stat.index("(") + 1 : stat.rindex(")")], stat_cpu_seconds(stat))
        for tid, stat in _thread_files(pid, "stat", proc)
    }


def thread_wait_seconds(pid: int, proc: Path = PROC) -> dict[int, float]:
    """Every thread of `pid`: seconds so far it was ready to run but waited for a core (the second
    field of `/proc/PID/task/TID/schedstat`); empty where the kernel keeps no schedstats.

    Beside its CPU time this says whether a thread was slow because it ran or because it queued:
    on a machine with more runnable threads than cores, a run's wall time grows by the wait."""
    waits = {}
    for tid, schedstat in _thread_files(pid, "schedstat", proc):
        fields = schedstat.split()
        if len(fields) >= 2:
            waits[tid] = int(fields[1]) / 1e9
    return waits


def machine_cpu_seconds(proc: Path = PROC) -> tuple[float, float]:
    """(all, busy) CPU seconds of every core so far, from /proc/stat's first line, busy being all
    but idle and iowait (the server's own reading, core_load.idle_and_total)."""
    idle, total = idle_and_total((proc / "stat").read_text().split("\n", 1)[0].split()[1:])
    return total / TICKS_PER_S, (total - idle) / TICKS_PER_S


@dataclass(frozen=True)
class TreeReading:
    """One moment's CPU seconds of a process tree and of the machine, and its monotonic time."""

    wall_s: float
    tree_s: float
    machine_all_s: float
    machine_busy_s: float


def read_tree(pid: int, proc: Path = PROC) -> TreeReading:
    machine_all, machine_busy = machine_cpu_seconds(proc)
    return TreeReading(time.monotonic(), cpu_sample(pid, proc).total_s, machine_all, machine_busy)


def tree_use(before: TreeReading, after: TreeReading) -> tuple[float, float]:
    """(the tree's CPU as % of one core, the machine's idle %) between two readings."""
    wall = after.wall_s - before.wall_s
    every = after.machine_all_s - before.machine_all_s
    busy = after.machine_busy_s - before.machine_busy_s
    tree_pct = 100 * (after.tree_s - before.tree_s) / wall if wall > 0 else 0.0
    # Seconds are tick counts over TICKS_PER_S: a machine busy for the whole window can read a
    # busy share a rounding error above its total, which is still no idle time, not negative.
    idle_pct = max(0.0, 100 * (every - busy) / every) if every > 0 else 0.0
    return tree_pct, idle_pct
