"""bench/proc_cpu.py: CPU seconds from /proc stat lines, fake and real."""

from __future__ import annotations

import os
import time

from cnnserve.bench.proc_cpu import TICKS_PER_S, machine_cpu_seconds, stat_cpu_seconds, thread_cpu_seconds


def test_fields_count_from_the_names_closing_parenthesis():
    """A thread may call itself anything, spaces and parentheses included; utime 250, stime 50."""
    stat = "4242 (odd) name :)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 99"
    assert stat_cpu_seconds(stat) == 300 / TICKS_PER_S


def test_this_process_and_the_machine_use_cpu_as_it_spins():
    threads = thread_cpu_seconds(os.getpid())
    assert os.getpid() in threads and threads[os.getpid()][0]  # the main thread, named
    total_before, busy_before = machine_cpu_seconds()
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass
    total_after, busy_after = machine_cpu_seconds()
    assert 0 < busy_after - busy_before <= total_after - total_before
    assert thread_cpu_seconds(os.getpid())[os.getpid()][1] > threads[os.getpid()][1]
