"""Prometheus `/metrics` with Triton's metric names and meanings, rendered from a `ServerReport`.

A custom collector renders each model version's statistics at scrape time from the same
report ModelStatistics is built from, so the two never disagree; with `--workers` the report
is every worker's merged (`server_report.py`). prometheus_client appends `_total` to counter names
(Prometheus convention), so Triton's `nv_inference_count` is `nv_inference_count_total` here.
All durations are cumulative microseconds, as in Triton.
"""

from __future__ import annotations

import json
import logging
import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from cnnserve.contracts.errors import CnnserveError
from cnnserve.serving.registry import ModelState
from cnnserve.serving.server_report import CONTROL_PATH, REPORT_PATH, ServerReport
from cnnserve.serving.stats import FAILURE_REASONS, LATENCY_BUCKETS_US, Histogram, batch_size_buckets

_LOGGER = logging.getLogger(__name__)
LABELS = ["model", "version"]


ReportSource = Callable[[], ServerReport]


class ServingCollector(Collector):
    def __init__(self, report: ReportSource) -> None:
        self._report = report

    def collect(self) -> Iterator[Metric]:
        report = self._report()

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
        inline = counter(
            "cnnserve_inline_execution_count",
            "Model executions run on the event loop's thread, without the hand-over to a worker",
        )
        small_runs = counter(
            "cnnserve_small_run_count",
            "Model executions of a few images run on the one-thread session while the cores were busy "
            "(--small-run-session-us)",
        )
        instances = GaugeMetricFamily(
            "cnnserve_model_instances",
            "ONNX Runtime sessions serving each ready model version (--instances; all workers together)",
            labels=LABELS,
        )
        batch_size = HistogramMetricFamily("cnnserve_batch_size", "Images per model execution", labels=LABELS)
        batch_latency = HistogramMetricFamily(
            "cnnserve_batch_compute_duration_us", "Model execution time per batch", labels=LABELS
        )
        request_histogram = HistogramMetricFamily(
            "cnnserve_request_duration_us", "Time in the server per successful request", labels=LABELS
        )
        queue_histogram = HistogramMetricFamily(
            "cnnserve_queue_duration_us", "Time a successful request waited for its batch", labels=LABELS
        )
        compute_histogram = HistogramMetricFamily(
            "cnnserve_compute_infer_duration_us",
            "Model execution time charged to a successful request",
            labels=[*LABELS, "execution_provider"],
        )
        load_failures = counter(
            "cnnserve_model_load_failures",
            "Failed loads of a model version (version empty: the model's folder or config.json)",
        )
        for name, version, failures in report.load_failures:
            load_failures.add_metric([name, version], failures)
        for served in report.versions:
            labels = [served.name, served.version]
            info.add_metric([*labels, served.provider, served.state], 1)
            if served.state != ModelState.READY:
                continue
            instances.add_metric(labels, served.instances)
            stats = served.stats
            success.add_metric(labels, stats.success.count)
            for reason in FAILURE_REASONS:
                failure.add_metric([*labels, reason], stats.fail[reason].count)
            count.add_metric(labels, stats.inference_count)
            executions.add_metric(labels, stats.execution_count)
            inline.add_metric(labels, stats.inline_count)
            small_runs.add_metric(labels, served.small_runs)
            request_us.add_metric(labels, stats.success.ns / 1000)
            queue_us.add_metric(labels, stats.queue.ns / 1000)
            input_us.add_metric(labels, stats.compute_input.ns / 1000)
            infer_us.add_metric(labels, stats.compute_infer.ns / 1000)
            output_us.add_metric(labels, stats.compute_output.ns / 1000)
            pending.add_metric(labels, served.queued_requests)
            pending_images.add_metric(labels, served.queued_images)
            sizes = batch_size_buckets(served.max_batch_size)
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
            request_histogram.add_metric(labels, *_buckets(stats.request_latency))
            queue_histogram.add_metric(labels, *_buckets(stats.queue_latency))
            compute_histogram.add_metric([*labels, served.provider], *_buckets(stats.compute_latency))
        yield from (success, failure, count, executions, inline, small_runs)
        yield from (request_us, queue_us, input_us, infer_us, output_us)
        yield from (pending, pending_images, info, instances, batch_size, batch_latency, load_failures)
        yield from (request_histogram, queue_histogram, compute_histogram)
        idle_poll = CounterMetricFamily(
            "cnnserve_idle_poll_seconds",
            "Seconds the event loop polled instead of sleeping after the last request in flight "
            "(--idle-poll-us): CPU spent for lower latency at low concurrency",
        )
        idle_poll.add_metric([], report.idle_poll_s)
        yield idle_poll
        if report.processes:
            yield from _worker_processes(report)


def _worker_processes(report: ServerReport) -> Iterator[Metric]:
    rss = GaugeMetricFamily(
        "cnnserve_worker_resident_memory_bytes", "Resident memory of a worker", labels=["worker"]
    )
    cpu = CounterMetricFamily(
        "cnnserve_worker_cpu_seconds", "CPU time of a worker (user + system)", labels=["worker"]
    )
    fds = GaugeMetricFamily(
        "cnnserve_worker_open_fds", "Open file descriptors of a worker", labels=["worker"]
    )
    for process in report.processes:
        rss.add_metric([process.worker], process.resident_memory_bytes)
        cpu.add_metric([process.worker], process.cpu_seconds)
        fds.add_metric([process.worker], process.open_fds)
    yield from (rss, cpu, fds)


def _buckets(histogram: Histogram) -> tuple[list[tuple[str, float]], float]:
    running, buckets = 0, []
    for bound, hits in zip(LATENCY_BUCKETS_US, histogram.counts, strict=False):
        running += hits
        buckets.append((str(bound), running))
    buckets.append(("+Inf", sum(histogram.counts)))
    return buckets, histogram.sum_us


def _json(start_response: Callable, text: str) -> list[bytes]:
    body = text.encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


Control = Callable[[str, str], tuple[str, str]]  # (action, model) → (status code name, message)


class MetricsServer:
    """`/metrics` (and the JSON report behind it, for a supervisor) on its own HTTP thread.

    A worker's private endpoint also takes `POST /control` ({"action": "load"|"unload",
    "model": ...}) from its siblings, so a repository request any worker receives reaches all.
    """

    def __init__(self, report: ReportSource, control: Control | None = None) -> None:
        self._report = report
        self._control = control
        self._prometheus = CollectorRegistry(auto_describe=False)
        self._prometheus.register(ServingCollector(report))
        self._prometheus.register(ProcessCollector(registry=None))  # this process: RSS, CPU, fds
        self._metrics_app = make_wsgi_app(self._prometheus)
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def _app(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == REPORT_PATH:
            return _json(start_response, self._report().to_json())
        if path == CONTROL_PATH and self._control is not None and environ.get("REQUEST_METHOD") == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            request = json.loads(environ["wsgi.input"].read(length) or b"{}")
            code, message = self._control(str(request.get("action")), str(request.get("model")))
            return _json(start_response, json.dumps({"code": code, "message": message}))
        return self._metrics_app(environ, start_response)

    def start(self, host: str, port: int) -> int:
        try:
            self._httpd = make_server(
                host, port, self._app, _ThreadingWSGIServer, handler_class=_QuietHandler
            )
        except OSError as error:
            raise CnnserveError(f"cannot serve metrics on {host}:{port}: {error}") from None
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        return int(self._httpd.server_port)

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
