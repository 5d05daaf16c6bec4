"""Warm-up, then timed calls until both a minimum time and a minimum count are reached.

A fixed count is too few for fast models and too slow for big batches; a fixed time gives
slow points too few samples for a p99. Requiring both, with caps, gives every point a
stable median within a bounded wall time. Each call is timed on its own with
`time.perf_counter_ns`, so percentiles come from real per-call samples, not averages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cnnserve.contracts.errors import CnnserveError


@dataclass(frozen=True)
class RepeatPolicy:
    warmup_runs: int = 5
    min_runs: int = 20
    min_time_s: float = 2.0
    max_runs: int = 100_000
    max_time_s: float = 60.0  # a cap per measured point, so one slow point cannot stall a sweep

    def __post_init__(self) -> None:
        if self.warmup_runs < 0:
            raise CnnserveError(f"--warmup-runs must be >= 0, received {self.warmup_runs}")
        if self.min_runs < 1:
            raise CnnserveError(f"--min-runs must be >= 1, received {self.min_runs}")
        if self.min_time_s < 0:
            raise CnnserveError(f"--min-time-s must be >= 0, received {self.min_time_s}")
        if self.max_runs < self.min_runs:
            raise CnnserveError(f"max_runs ({self.max_runs}) must be >= min_runs ({self.min_runs})")
        if self.max_time_s < self.min_time_s:
            raise CnnserveError(
                f"--max-time-s ({self.max_time_s}) must be >= --min-time-s ({self.min_time_s})"
            )

    def for_round(self, rounds: int, first: bool) -> RepeatPolicy:
        """This policy split over `rounds` interleaved rounds: each round takes its share of the
        runs and time, and rounds after the first warm up with one call (caches and threads may
        have gone cold while the other backends ran)."""
        return RepeatPolicy(
            warmup_runs=self.warmup_runs if first else min(self.warmup_runs, 1),
            min_runs=-(-self.min_runs // rounds),
            min_time_s=self.min_time_s / rounds,
            max_runs=max(-(-self.max_runs // rounds), -(-self.min_runs // rounds)),
            max_time_s=self.max_time_s / rounds,
        )

    def done(self, runs: int, elapsed_ns: int) -> bool:
        """True once enough runs and time are in, or a cap is hit (after at least one run)."""
        if runs >= self.max_runs or (runs >= 1 and elapsed_ns >= self.max_time_s * 1e9):
            return True
        return runs >= self.min_runs and elapsed_ns >= self.min_time_s * 1e9


def measure(
    call: Callable[[], object],
    policy: RepeatPolicy,
    clock_ns: Callable[[], int] = time.perf_counter_ns,
) -> np.ndarray:
    """Per-call durations in ns of the timed (post-warm-up) calls of `call`."""
    for _ in range(policy.warmup_runs):
        call()
    samples: list[int] = []
    started = clock_ns()
    while not policy.done(len(samples), clock_ns() - started):
        before = clock_ns()
        call()
        samples.append(clock_ns() - before)
    return np.asarray(samples, dtype=np.int64)
