"""Prometheus `/metrics` with Triton's metric names and meanings, read from `ModelStats`.

A custom collector renders each model version's statistics at scrape time, so the numbers are
the same ones ModelStatistics returns. prometheus_client appends `_total` to counter names
(Prometheus convention), so Triton's `nv_inference_count` is `nv_inference_count_total` here.
All durations are cumulative microseconds, as in Triton.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from cnnserve.serving.registry import READY, ModelRegistry
from cnnserve.serving.stats import FAILURE_REASONS, LATENCY_BUCKETS_US, batch_size_buckets

_LOGGER = logging.getLogger(__name__)
LABELS = ["model", "version"]


class ServingCollector(Collector):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        def counter(name: str, doc: str, labels: list[str] = LABELS) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=labels)

        success = counter("nv_inference_request_success", "Successful inference requests")
        failure = counter("nv_inference_request_failure", "Failed inference requests", [*LABELS, "reason"])
        count = counter("nv_inference_count", "Inferences performed (each image of a batch counts)")
        executions = counter("nv_inference_exec_count", "Model executions (batches) performed")
        request_us = counter(
            "nv_inference_request_duration_us", "Cumulative request duration, successful requests"
        )
        queue_us = counter("nv_inference_queue_duration_us", "Cumulative time requests waited in the queue")
        input_us = counter("nv_inference_compute_input_duration_us", "Cumulative time gathering inputs")
        infer_us = counter("nv_inference_compute_infer_duration_us", "Cumulative model execution time")
        output_us = counter("nv_inference_compute_output_duration_us", "Cumulative time scattering outputs")
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count", "Requests waiting in the queue", labels=LABELS
        )
        pending_images = GaugeMetricFamily(
            "cnnserve_queue_images", "Images waiting in the queue", labels=LABELS
        )
        info = GaugeMetricFamily(
            "cnnserve_model_info",
            "1 for each loaded model version; the provider label says where it really runs",
            labels=[*LABELS, "execution_provider", "state"],
        )
        batch_size = HistogramMetricFamily("cnnserve_batch_size", "Images per model execution", labels=LABELS)
        batch_latency = HistogramMetricFamily(
            "cnnserve_batch_compute_duration_us", "Model execution time per batch", labels=LABELS
        )
        load_failures = counter(
            "cnnserve_model_load_failures",
            "Failed loads of a model version (version empty: the model's folder or config.json)",
        )
        for (name, version), failures in sorted(self._registry.load_failures.items()):
            load_failures.add_metric([name, version], failures)
        for served in self._registry.versions():
            labels = [served.name, served.version]
            info.add_metric([*labels, served.provider, served.state], 1)
            if served.state != READY:
                continue
            stats = served.stats.snapshot()
            success.add_metric(labels, stats.success.count)
            for reason in FAILURE_REASONS:
                failure.add_metric([*labels, reason], stats.fail[reason].count)
            count.add_metric(labels, stats.inference_count)
            executions.add_metric(labels, stats.execution_count)
            request_us.add_metric(labels, stats.success.ns / 1000)
            queue_us.add_metric(labels, stats.queue.ns / 1000)
            input_us.add_metric(labels, stats.compute_input.ns / 1000)
            infer_us.add_metric(labels, stats.compute_infer.ns / 1000)
            output_us.add_metric(labels, stats.compute_output.ns / 1000)
            batcher = served.batcher
            pending.add_metric(labels, batcher.queued_requests if batcher else 0)
            pending_images.add_metric(labels, batcher.queued_images if batcher else 0)
            sizes = batch_size_buckets(served.batching.max_batch_size)
            cumulative, size_sum, buckets = 0, 0, []
            for bound in sizes:
                cumulative = sum(s.count for size, s in stats.batch_stats.items() if size <= bound)
                buckets.append((str(bound), cumulative))
            total = sum(s.count for s in stats.batch_stats.values())
            size_sum = sum(size * s.count for size, s in stats.batch_stats.items())
            batch_size.add_metric(labels, [*buckets, ("+Inf", total)], size_sum)
            running, latency_buckets = 0, []
            for bound, hits in zip(LATENCY_BUCKETS_US, stats.batch_latency_us, strict=False):
                running += hits
                latency_buckets.append((str(bound), running))
            latency_buckets.append(("+Inf", sum(stats.batch_latency_us)))
            batch_latency.add_metric(labels, latency_buckets, stats.batch_latency_sum_us)
        yield from (success, failure, count, executions, request_us, queue_us, input_us, infer_us, output_us)
        yield from (pending, pending_images, info, batch_size, batch_latency, load_failures)


class MetricsServer:
    """The `/metrics` HTTP endpoint on its own thread (prometheus_client's WSGI server)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._prometheus = CollectorRegistry(auto_describe=False)
        self._prometheus.register(ServingCollector(registry))
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int) -> int:
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=self._prometheus)
        except OSError as error:
            from cnnserve.errors import CnnserveError

            raise CnnserveError(f"cannot serve metrics on {host}:{port}: {error}") from None
        bound = int(self._httpd.server_port)
        return bound

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
