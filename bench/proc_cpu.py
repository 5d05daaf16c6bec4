"""CPU time from Linux's /proc: a process's or a thread's utime + stime, and the whole machine's.

`bench/workers.py` samples a server's process tree with it and `scripts/thread_cpu.py` each
thread of one server process; both difference two samples taken around a load.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def stat_cpu_seconds(stat: str) -> float:
    """utime + stime of a `/proc/PID[/task/TID]/stat` line, in seconds (the name in parentheses
    may hold spaces, so fields count from its closing one)."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def cpu_seconds(stat_path: Path) -> float:
    return stat_cpu_seconds(stat_path.read_text())


def thread_cpu_seconds(pid: int, proc: Path = PROC) -> dict[int, tuple[str, float]]:
    """Every thread of `pid`: its name and CPU seconds so far; one that ends while read is skipped."""
    threads = {}
    for task in (proc / str(pid) / "task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        threads[int(task.name)] = (stat[stat.index("(") + 1 : stat.rindex(")")], stat_cpu_seconds(stat))
    return threads


def machine_cpu_seconds(proc: Path = PROC) -> tuple[float, float]:
    """(all, busy) CPU seconds of every core so far, from /proc/stat's first line: user to steal,
    busy being all but idle and iowait."""
    fields = [int(x) for x in (proc / "stat").read_text().split("\n", 1)[0].split()[1:9]]
    total = sum(fields)
    return total / TICKS_PER_S, (total - fields[3] - fields[4]) / TICKS_PER_S
