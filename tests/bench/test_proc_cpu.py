"""bench/proc_cpu.py: CPU seconds from /proc stat lines, fake and real, of a thread, a process tree
and the machine."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cnnserve.bench.proc_cpu import (
    TICKS_PER_S,
    TreeReading,
    cpu_sample,
    machine_cpu_seconds,
    stat_cpu_seconds,
    thread_cpu_seconds,
    thread_wait_seconds,
    tree_use,
)


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
    # Busy time is part of the total; both are tick counts turned into float seconds, so on a
    # machine busy for the whole window the two differences match up to rounding (CI: 0.6 s each).
    assert 0 < busy_after - busy_before <= total_after - total_before + 1e-6
    assert thread_cpu_seconds(os.getpid())[os.getpid()][1] > threads[os.getpid()][1]


def test_two_spinners_on_one_core_each_wait_for_it():
    """schedstat's run-queue wait: two processes that never sleep, pinned to the same CPU, each
    spend much of the window ready to run while the other has the core."""
    cpu = min(os.sched_getaffinity(0))
    spin = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nprint(flush=True)\nwhile True:\n    pass\n"
    spinners = [subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE) for _ in range(2)]
    try:
        for spinner in spinners:
            spinner.stdout.readline()  # pinned, and spinning from here on
        first = spinners[0].pid
        before, start = thread_wait_seconds(first), time.monotonic()
        time.sleep(0.6)
        waited = (thread_wait_seconds(first)[first] - before[first]) / (time.monotonic() - start)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    # About half the window each; the machine's other work moves it, never down to a sleeper's 0.
    assert 0.2 < waited < 1.0


def test_a_thread_without_schedstat_is_left_out(tmp_path):
    """A kernel without schedstats has no such file: that thread has no wait, the others theirs."""
    task = tmp_path / "4242" / "task"
    (task / "4242").mkdir(parents=True)
    (task / "4243").mkdir()
    (task / "4243" / "schedstat").write_text("1000 2500000000 7\n")
    assert thread_wait_seconds(4242, tmp_path) == {4243: 2.5}


def test_cpu_sample_covers_the_whole_tree_and_each_main_thread(tmp_path):
    # A parent that sleeps and a child that burns a fixed amount of CPU: the tree's time is the child's.
    burner = (
        "import sys\nx = 0\nfor i in range(10_000_000):\n    x += i\nprint(x, flush=True)\nsys.stdin.read()"
    )
    parent = textwrap.dedent(f"""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", {burner!r}], stdin=subprocess.PIPE, stdout=sys.stdout)
        print(child.pid, flush=True)
        child.wait()
    """)
    process = subprocess.Popen(
        [sys.executable, "-c", parent], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True
    )
    try:
        child_pid = int(process.stdout.readline())
        process.stdout.readline()  # the child finished its loop
        sample = cpu_sample(process.pid)
    finally:
        process.kill()
        process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child_pid, signal.SIGKILL)
    assert set(sample.by_pid) == {process.pid, child_pid}
    assert sample.by_pid[child_pid] > 0.1  # 10 M Python additions are well over 0.1 CPU s anywhere
    assert sample.by_pid[process.pid] < sample.by_pid[child_pid] / 5
    assert sample.main_thread_by_pid[child_pid] == pytest.approx(sample.by_pid[child_pid], abs=0.05)
    assert sample.total_s == pytest.approx(sum(sample.by_pid.values()))


def test_tree_use_is_cores_of_the_wall_time_and_the_machines_idle_share():
    # 2 s apart: the tree used 1.5 CPU s (75% of a core); the machine's 4 CPU s had 3 busy.
    before, after = TreeReading(10.0, 5.0, 100.0, 60.0), TreeReading(12.0, 6.5, 104.0, 63.0)
    assert tree_use(before, after) == pytest.approx((75.0, 25.0))
    assert tree_use(before, before) == (0.0, 0.0)  # no time passed: nothing to divide by
    # Fully busy, the float seconds can put busy a rounding error above all (CI read this pair).
    busy_all = TreeReading(10.0, 5.0, 8108.38, 4533.78), TreeReading(12.0, 6.5, 8108.98, 4534.38)
    assert (
        busy_all[1].machine_busy_s - busy_all[0].machine_busy_s
        > busy_all[1].machine_all_s - busy_all[0].machine_all_s
    )
    assert tree_use(*busy_all)[1] == 0.0


def test_machine_cpu_seconds_reads_the_all_cpu_line(tmp_path):
    """user 100, nice 0, system 50, idle 700, iowait 50, irq to steal 100: all 1,000 ticks, busy 250;
    guest (the ninth number on) is inside user already and left out."""
    (tmp_path / "stat").write_text("cpu  100 0 50 700 50 40 30 30 999 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    assert machine_cpu_seconds(tmp_path) == (1000 / TICKS_PER_S, 250 / TICKS_PER_S)
