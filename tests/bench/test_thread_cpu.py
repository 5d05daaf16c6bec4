"""scripts/thread_cpu.py: per-thread CPU of a real server under the real load generator."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cnnserve.bench.proc_cpu import thread_cpu_seconds

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import thread_cpu  # noqa: E402

THREAD_LINE = re.compile(
    r"^\s+(\d+) (\S+)\s+([\d.]+)% of a core,\s+(\d+) µs/request, "
    r"waited for a core\s+([\d.]+)% of the window(.*)$",
    re.MULTILINE,
)


def test_a_busy_thread_shows_its_share_of_a_core():
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    busy = threading.Thread(target=spin, name="spinner")
    busy.start()
    try:
        before = thread_cpu_seconds(os.getpid())
        time.sleep(0.5)
        after = thread_cpu_seconds(os.getpid())
    finally:
        stop.set()
        busy.join()
    shares = thread_cpu.core_shares(before, after, 0.5)
    assert shares == sorted(shares, key=lambda item: -item[2])
    assert busy.native_id in {tid for tid, _, _ in shares}
    # One of this process's threads (the spinner, or the one it holds the GIL from) used a real
    # share of a core: more than a sleeping thread's, however busy the neighbours keep the machine.
    assert shares[0][2] > 0.05


@pytest.mark.parametrize("streamed", [False, True])
def test_the_server_threads_of_a_real_server_under_load(server, streamed):
    """Unary calls, or (`--streaming`) ModelStreamInfer streams, which the header says from the
    load generator's own record."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "thread_cpu.py"), "--pid", str(server.process.pid),
         "--target", server.target, "--model", "noop", "--concurrency", "4", "--window", "1",
         *(["--streaming"] if streamed else [])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    head = done.stdout.splitlines()[0]
    over = ", streamed" if streamed else ""
    pattern = rf"noop at concurrency 4{over}: [\d,]+ req/s, p50 [\d.]+ ms; load generator \d+%"
    assert re.match(pattern, head), head
    threads = THREAD_LINE.findall(done.stdout)
    loop = [t for t in threads if t[0] == str(server.process.pid)]
    assert loop and "event loop" in loop[0][5] and float(loop[0][2]) > 5, done.stdout
    # Every thread line carries its run-queue wait, a share of the window.
    assert threads and all(0 <= float(t[4]) <= 100 for t in threads), done.stdout
    assert re.search(r"server: [\d.]+% of a core, \d+ µs CPU per request", done.stdout)


def test_a_pid_that_is_not_running_is_one_line(closed_port):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "thread_cpu.py"), "--pid", "999999999",
         "--target", f"127.0.0.1:{closed_port}", "--model", "noop"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "thread_cpu.py: no process 999999999 to read (Linux /proc)"
