"""Keep the event loop's thread polling for a moment after the server goes idle, not asleep.

Why: at low concurrency every request reaches a server that has just gone idle. The loop's
thread sleeps in epoll, its core halts (a vCPU is descheduled), and the next request then wakes
a cold core: on the 2-vCPU test VM, ONNX Runtime's batch-1 run of mnist_cnn took 319 µs after a
1 ms sleep against 183 µs after a 1 ms busy wait (scripts/ort_idle_gap.py). Linux's socket busy
polling and ONNX Runtime's own thread spinning trade CPU for that latency the same way.

The poll is bounded both ways: it runs only while no inference is in flight, so it never takes a
core from a model's run or from a batch being computed, and for at most `window_us` after the
last inference ended, so an idle server uses no CPU. Polling is the loop's own iteration (a
callback that reschedules itself makes uvloop and asyncio poll with a zero timeout), so a
request that arrives meanwhile is handled as promptly as ever. `polled_s` is what it cost.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable


class IdlePoll:
    """Counts inferences in flight on one event loop and polls for `window_us` after the last."""

    def __init__(self, window_us: float, clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        if window_us <= 0:
            raise ValueError(f"the polling window must be > 0 µs, received {window_us:g}")
        self.window_ns = int(window_us * 1000)
        self._clock_ns = clock_ns
        self._in_flight = 0
        self._idle_since_ns = 0
        self._polling_since_ns: int | None = None  # None: not polling
        self._polled_ns = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def begin(self) -> None:
        """An inference starts (called on the loop's thread)."""
        self._in_flight += 1

    def end(self) -> None:
        """An inference ended, answered or failed; the last one in flight starts the window."""
        self._in_flight -= 1
        if self._in_flight:
            return
        self._idle_since_ns = self._clock_ns()
        if self._polling_since_ns is None:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._polling_since_ns = self._idle_since_ns
            self._loop.call_soon(self._poll)

    def _poll(self) -> None:
        now_ns = self._clock_ns()
        if self._in_flight == 0 and now_ns - self._idle_since_ns < self.window_ns:
            assert self._loop is not None
            # Hand over the GIL and the core to any thread ready to run (gRPC's poller thread,
            # which brings the next request to the loop): a poll must delay nobody.
            os.sched_yield()
            self._loop.call_soon(self._poll)
            return
        # Busy again (the loop sleeps while a worker runs the model) or the window is over.
        assert self._polling_since_ns is not None
        self._polled_ns += now_ns - self._polling_since_ns
        self._polling_since_ns = None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def polling(self) -> bool:
        return self._polling_since_ns is not None

    @property
    def polled_s(self) -> float:
        """Seconds the loop spent polling, the current poll included: CPU it used instead of sleeping."""
        ongoing = 0 if self._polling_since_ns is None else self._clock_ns() - self._polling_since_ns
        return (self._polled_ns + ongoing) / 1e9
