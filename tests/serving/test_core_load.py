"""serving/core_load.py: idle cores of this process's CPUs, from /proc/stat readings."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cnnserve.contracts.cpu_limits import CpuQuota
from cnnserve.serving.core_load import REFRESH_S, SpareCores, _idle_and_total


def _stat(idle: tuple[int, ...], busy: tuple[int, ...]) -> str:
    """A /proc/stat: the all-CPU line, then one line per CPU (user nice system idle iowait ...)."""
    lines = [f"cpu  {sum(busy)} 0 0 {sum(idle)} 0 0 0 0 0 0"]
    lines += [f"cpu{n} {b} 0 0 {i} 0 0 0 0 0 0" for n, (i, b) in enumerate(zip(idle, busy, strict=True))]
    return "\n".join([*lines, "intr 12345", "ctxt 678"]) + "\n"


def test_only_the_cpus_asked_for_count_and_iowait_is_idle():
    text = "cpu  9 9 9 9 9 9 9 9\ncpu0 1 0 0 10 5 0 0 0\ncpu1 2 0 0 20 0 0 0 0\ncpu2 100 0 0 0 0 0 0 0\n"
    assert _idle_and_total(text, {0, 1}) == (35, 38)
    assert _idle_and_total(text, {2}) == (0, 100)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_spare_cores_are_the_idle_share_of_this_processes_cpus(tmp_path: Path):
    cpus = sorted(os.sched_getaffinity(0))
    count = max(cpus) + 1
    path, clock = tmp_path / "stat", _Clock()
    path.write_text(_stat((0,) * count, (0,) * count))
    spare = SpareCores(path, clock)
    assert spare.spare() is None  # one reading: no interval yet
    # Over the next interval every CPU of ours was idle a quarter of the time.
    path.write_text(_stat((25,) * count, (75,) * count))
    clock.now += 1.5 * REFRESH_S
    assert spare.spare() == pytest.approx(0.25 * len(cpus))
    # Within REFRESH_S the last figure stands, whatever the file says now.
    path.write_text(_stat((125,) * count, (75,) * count))
    clock.now += REFRESH_S / 2
    assert spare.spare() == pytest.approx(0.25 * len(cpus))
    clock.now += 1.5 * REFRESH_S
    assert spare.spare() == pytest.approx(len(cpus))  # all idle since the last reading


def test_spare_cores_under_a_quota_are_what_the_cgroup_left_unused(tmp_path: Path):
    """Idle host cores count only up to the quota less the cgroup's own use over the interval."""
    cpus = len(os.sched_getaffinity(0))
    count = max(os.sched_getaffinity(0)) + 1
    stat, usage, clock = tmp_path / "stat", tmp_path / "cpuacct.usage", _Clock()
    stat.write_text(_stat((0,) * count, (0,) * count))
    usage.write_text("0\n")
    spare = SpareCores(stat, clock, quota=CpuQuota(1.0, tmp_path, usage))
    assert spare.spare() is None
    clock.now += 2 * REFRESH_S
    stat.write_text(_stat((100,) * count, (0,) * count))  # every host core idle
    usage.write_text(f"{int(0.9 * 2 * REFRESH_S * 1e9)}\n")  # yet the cgroup used 0.9 of its 1 CPU
    assert spare.spare() == pytest.approx(0.1)
    clock.now += 2 * REFRESH_S
    usage.write_text(f"{int(3 * 2 * REFRESH_S * 1e9)}\n")  # over its quota (a burst): nothing spare
    stat.write_text(_stat((200,) * count, (0,) * count))
    assert spare.spare() == 0.0
    clock.now += 2 * REFRESH_S
    stat.write_text(
        _stat((250,) * count, (50,) * count)
    )  # half the host busy, the cgroup idle: the host decides
    assert spare.spare() == pytest.approx(min(0.5 * cpus, 1.0))


def test_no_proc_stat_means_unknown_and_is_not_looked_for_again(tmp_path: Path):
    path, clock = tmp_path / "missing", _Clock()
    spare = SpareCores(path, clock)
    assert spare.spare() is None
    path.write_text(_stat((0,) * 2, (0,) * 2))  # appears later: the batcher's runs never reread it
    clock.now += 10 * REFRESH_S
    assert spare.spare() is None and spare._last is None


def test_this_machine_reports_between_none_and_all_of_its_cores():
    spare = SpareCores()
    spare.spare()
    time.sleep(3 * REFRESH_S)  # a few clock ticks of /proc/stat
    assert 0 <= spare.spare() <= len(os.sched_getaffinity(0))
