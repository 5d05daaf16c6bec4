"""Latency statistics over raw per-run samples (nanoseconds), computed one documented way.

Percentiles use numpy's default linear interpolation between order statistics (the same
definition as `numpy.percentile` and pandas), so a summary can be recomputed from the samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LatencySummary:
    """Per-call latency in milliseconds over `count` timed calls."""

    count: int
    mean_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    total_s: float  # sum of the timed calls: the denominator of throughput

    def per_second(self, items_per_call: int) -> float:
        """Items per second over the timed calls (mean throughput, not 1/p50)."""
        return items_per_call * self.count / self.total_s if self.total_s > 0 else 0.0


def summarize_ns(samples_ns: Sequence[int] | np.ndarray) -> LatencySummary:
    """Summary of latency samples given in nanoseconds; raises ValueError on an empty list."""
    values = np.asarray(samples_ns, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no latency samples to summarize")
    p50, p90, p95, p99 = np.percentile(values, PERCENTILES) / 1e6
    return LatencySummary(
        count=int(values.size),
        mean_ms=float(values.mean() / 1e6),
        min_ms=float(values.min() / 1e6),
        max_ms=float(values.max() / 1e6),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
        total_s=float(values.sum() / 1e9),
    )
