"""Cumulative per-model-version statistics with Triton's meanings.

One object feeds both the V2 `ModelStatistics` RPC and the Prometheus `/metrics` endpoint, so
the two can never disagree. Updates come from the event loop; the metrics thread reads a
snapshot under the lock.

Triton's definitions: `inference_count` counts images (each image of a batched request is one
inference), `execution_count` counts model executions (batches); per-request queue and compute
durations are summed over successful requests, and a request that rode in a batch is charged
that batch's full compute time.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from dataclasses import asdict, dataclass, field, replace

from cnnserve.serving.batcher import BatchedResult, BatchRecord

FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
# Per-batch compute latency buckets, microseconds.
LATENCY_BUCKETS_US = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000)


def latency_bucket(us: float) -> int:
    """The first bucket whose bound `us` does not exceed; len(LATENCY_BUCKETS_US): +Inf."""
    return bisect_left(LATENCY_BUCKETS_US, us)


def batch_size_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two up to the max batch size, and the max itself."""
    buckets = []
    size = 1
    while size < max_batch_size:
        buckets.append(size)
        size *= 2
    return (*buckets, max_batch_size)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class Histogram:
    """Counts per latency bucket (`LATENCY_BUCKETS_US`, then +Inf) and their sum, in µs."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_US) + 1))
    sum_us: float = 0.0

    def add(self, us: float) -> None:
        self.counts[latency_bucket(us)] += 1
        self.sum_us += us

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum_us += other.sum_us

    def copy(self) -> Histogram:
        return Histogram(list(self.counts), self.sum_us)


@dataclass
class BatchSizeStats:
    count: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


@dataclass
class Snapshot:
    """A consistent copy of a `ModelStats`, safe to read from another thread."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    inline_count: int = 0  # executions run on the event loop's thread (batcher.py)
    success: Duration = field(default_factory=Duration)
    fail: dict[str, Duration] = field(default_factory=lambda: {r: Duration() for r in FAILURE_REASONS})
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batch_stats: dict[int, BatchSizeStats] = field(default_factory=dict)
    batch_latency_us: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_US) + 1))
    batch_latency_sum_us: float = 0.0
    # Per successful request, so Prometheus can give quantiles (histogram_quantile).
    request_latency: Histogram = field(default_factory=Histogram)
    queue_latency: Histogram = field(default_factory=Histogram)
    compute_latency: Histogram = field(default_factory=Histogram)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> Snapshot:
        return cls(
            last_inference_ms=int(raw["last_inference_ms"]),
            inference_count=int(raw["inference_count"]),
            execution_count=int(raw["execution_count"]),
            inline_count=int(raw.get("inline_count", 0)),
            success=Duration(**raw["success"]),
            fail={reason: Duration(**value) for reason, value in raw["fail"].items()},
            queue=Duration(**raw["queue"]),
            compute_input=Duration(**raw["compute_input"]),
            compute_infer=Duration(**raw["compute_infer"]),
            compute_output=Duration(**raw["compute_output"]),
            batch_stats={int(size): BatchSizeStats(**value) for size, value in raw["batch_stats"].items()},
            batch_latency_us=[int(v) for v in raw["batch_latency_us"]],
            batch_latency_sum_us=float(raw["batch_latency_sum_us"]),
            request_latency=Histogram(**raw["request_latency"]),
            queue_latency=Histogram(**raw["queue_latency"]),
            compute_latency=Histogram(**raw["compute_latency"]),
        )

    @classmethod
    def merged(cls, snapshots: list[Snapshot]) -> Snapshot:
        """The sum of several processes' statistics of one model version (counts and durations
        add up; the last inference is the latest of them)."""
        total = cls()
        for part in snapshots:
            total.last_inference_ms = max(total.last_inference_ms, part.last_inference_ms)
            total.inference_count += part.inference_count
            total.execution_count += part.execution_count
            total.inline_count += part.inline_count
            for mine, theirs in (
                (total.success, part.success),
                (total.queue, part.queue),
                (total.compute_input, part.compute_input),
                (total.compute_infer, part.compute_infer),
                (total.compute_output, part.compute_output),
            ):
                mine.add(theirs.ns, theirs.count)
            for reason, duration in part.fail.items():
                total.fail.setdefault(reason, Duration()).add(duration.ns, duration.count)
            for size, batch in part.batch_stats.items():
                into = total.batch_stats.setdefault(size, BatchSizeStats())
                into.count += batch.count
                into.input_ns += batch.input_ns
                into.infer_ns += batch.infer_ns
                into.output_ns += batch.output_ns
            total.batch_latency_us = [
                a + b for a, b in zip(total.batch_latency_us, part.batch_latency_us, strict=True)
            ]
            total.batch_latency_sum_us += part.batch_latency_sum_us
            total.request_latency.merge(part.request_latency)
            total.queue_latency.merge(part.queue_latency)
            total.compute_latency.merge(part.compute_latency)
        return total


class ModelStats:
    """Statistics of one model version."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = Snapshot()

    def record_batch(self, batch: BatchRecord) -> None:
        latency_us = batch.infer_ns / 1000
        with self._lock:
            data = self._data
            data.execution_count += 1
            data.inline_count += batch.inline
            data.inference_count += batch.size
            data.last_inference_ms = time.time_ns() // 1_000_000
            stats = data.batch_stats.setdefault(batch.size, BatchSizeStats())
            stats.count += 1
            stats.input_ns += batch.input_ns
            stats.infer_ns += batch.infer_ns
            stats.output_ns += batch.output_ns
            data.batch_latency_us[latency_bucket(latency_us)] += 1
            data.batch_latency_sum_us += latency_us

    def record_success(self, result: BatchedResult, request_ns: int) -> None:
        with self._lock:
            data = self._data
            data.success.add(request_ns)
            data.queue.add(result.queue_ns)
            data.compute_input.add(result.compute_input_ns)
            data.compute_infer.add(result.compute_infer_ns)
            data.compute_output.add(result.compute_output_ns)
            data.request_latency.add(request_ns / 1000)
            data.queue_latency.add(result.queue_ns / 1000)
            data.compute_latency.add(result.compute_infer_ns / 1000)

    def record_failure(self, reason: str, request_ns: int) -> None:
        with self._lock:
            self._data.fail[reason if reason in FAILURE_REASONS else "OTHER"].add(request_ns)

    def snapshot(self) -> Snapshot:
        with self._lock:
            data = self._data
            return replace(
                data,
                success=replace(data.success),
                fail={k: replace(v) for k, v in data.fail.items()},
                queue=replace(data.queue),
                compute_input=replace(data.compute_input),
                compute_infer=replace(data.compute_infer),
                compute_output=replace(data.compute_output),
                batch_stats={k: replace(v) for k, v in data.batch_stats.items()},
                batch_latency_us=list(data.batch_latency_us),
                request_latency=data.request_latency.copy(),
                queue_latency=data.queue_latency.copy(),
                compute_latency=data.compute_latency.copy(),
            )
