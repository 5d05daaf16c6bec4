"""Which session runs one image sooner after an idle gap: the one an inline run should take.

An inline run (batcher.py) happens only on an idle model, after at least the run's own length
of quiet, so it always follows a gap. Over a gap ONNX Runtime's other intra-op threads go to
sleep (the server does not let them spin), and a run split over them first waits for them to be
woken; a one-thread session has nothing to wake. For a small model that wait is more than the
split saves (`scripts/ort_idle_gap.py`: mnist_cnn 260 µs on one thread after a 1 ms gap against
309 µs on two, 148 and 164 back to back); for a larger one the split wins. So each instance
times both, alternately, as it loads, and its inline runs take the faster.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

GAP_S = 0.001  # about what a client's round trip leaves between two requests at concurrency 1
RUNS = 15  # per session; alternated, so a noisy moment costs both sides alike
CLEAR_WIN = 0.95  # one thread must take at most this share of the time all threads take


@dataclass(frozen=True)
class GapProbe:
    """Median single-image run after an idle gap, on every intra-op thread and on one."""

    all_threads_us: float
    one_thread_us: float
    threads: int  # the main session's intra-op threads

    @property
    def one_thread_wins(self) -> bool:
        """By a clear margin only: the win keeps a second copy of the weights."""
        return self.one_thread_us < CLEAR_WIN * self.all_threads_us

    def describe(self) -> str:
        chosen = "one intra-op thread" if self.one_thread_wins else f"{self.threads} intra-op threads"
        return (
            f"inline runs on {chosen} (after a {GAP_S * 1e3:g} ms idle gap: {self.one_thread_us:.0f} µs "
            f"on one, {self.all_threads_us:.0f} µs on {self.threads})"
        )


def probe_after_gap(
    run_all_threads: Callable[[], object],
    run_one_thread: Callable[[], object],
    threads: int,
    runs: int = RUNS,
    gap_s: float = GAP_S,
    sleep: Callable[[float], None] = time.sleep,
) -> GapProbe:
    """Time each run after sleeping `gap_s`, the two sessions taking turns `runs` times each."""
    all_threads: list[float] = []
    one_thread: list[float] = []
    for _ in range(runs):
        for run, samples in ((run_all_threads, all_threads), (run_one_thread, one_thread)):
            sleep(gap_s)
            started = time.perf_counter()
            run()
            samples.append(1e6 * (time.perf_counter() - started))
    return GapProbe(statistics.median(all_threads), statistics.median(one_thread), threads)
