"""`cnnserve serve --workers N`: N server processes on one gRPC port, and the supervisor that runs them.

One Python process decodes and answers every request of its connections on one event loop,
so past a point that loop, not the model, sets the pace. Each worker here is a whole server
(its own sessions, batchers and event loop) listening on the same port with SO_REUSEPORT: the
kernel spreads *connections* over the workers, and each connection stays with one (HTTP/2).

The supervisor (the process the operator runs and signals):
- reserves the port (a bound SO_REUSEPORT socket, so `--port 0` names one port for all);
- starts the workers with the cores divided (each worker's sessions share cores / N intra-op
  threads, one model's instances among them, unless `--cpu-threads` is set);
- restarts a worker that dies, with a log line (the others keep serving their connections);
- forwards SIGTERM/SIGINT, so every worker drains as one server does, and exits 0;
- writes `--ready-file` and serves the public `/metrics` once every worker is ready, merging
  every worker's report (`server_report.py`), as each worker's V2 ModelStatistics does.
Workers share two small arrays: a ready flag each (health and ServerReady are true only when all
are set) and the port of each worker's private report endpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from cnnserve.contracts.cpu_limits import available_cores, core_budget
from cnnserve.contracts.errors import CnnserveError
from cnnserve.serving.config import ServerOptions

_LOGGER = logging.getLogger(__name__)
RESTART_BACKOFF_S = (0.5, 1, 2, 5, 10, 30)
PR_SET_PDEATHSIG = 1


def parse_workers(text: str) -> int:
    """`--workers N` or `auto` (one per available core)."""
    if text == "auto":
        return available_cores()
    try:
        count = int(text)
    except ValueError:
        raise CnnserveError(f"--workers: expected a number or 'auto', received {text!r}") from None
    if not 1 <= count <= 256:
        raise CnnserveError(f"--workers must be between 1 and 256, received {count}")
    return count


@dataclass(frozen=True)
class WorkerSlot:
    """What one worker knows of the others (shared memory, inherited by spawned processes)."""

    index: int
    count: int
    ready: Any  # multiprocessing RawArray of bytes: 1 = that worker is ready
    report_ports: Any  # multiprocessing RawArray of ints: each worker's private report port

    def set_ready(self, ready: bool) -> None:
        self.ready[self.index] = 1 if ready else 0

    def all_ready(self) -> bool:
        return all(self.ready[i] for i in range(self.count))

    def publish_report_port(self, port: int) -> None:
        self.report_ports[self.index] = port

    def sibling_report_ports(self) -> list[int]:
        return [port for i, port in enumerate(self.report_ports[: self.count]) if i != self.index and port]


def worker_main(options: ServerOptions, slot: WorkerSlot, log_level: int) -> None:
    """The body of a worker process (spawned: a fresh interpreter, no state from the supervisor)."""
    if sys.platform == "linux":  # a supervisor killed outright must not leave workers behind
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    from cnnserve.serving.access_log import configure_logging

    logging.basicConfig(level=log_level)
    configure_logging(options.log_format, slot.index)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    from cnnserve.serving import server

    try:
        code = server.run(options, slot)
    except CnnserveError as error:
        print(f"cnnserve serve: error: worker {slot.index}: {error}", file=sys.stderr)
        code = 2
    sys.exit(code)


class Supervisor:
    """Starts, watches, restarts and stops the workers; see the module docstring."""

    def __init__(self, options: ServerOptions) -> None:
        self._options = options
        self._count = options.workers
        self._context = multiprocessing.get_context("spawn")
        self._ready = self._context.RawArray("b", self._count)
        self._ports = self._context.RawArray("i", self._count)
        self._processes: list[Any] = [None] * self._count
        self._restarts = [0] * self._count
        self._stopping = threading.Event()
        self._metrics: Any = None  # the public /metrics, once every worker is ready

    def run(self) -> int:
        reservation, port = _reserve_port(self._options.host, self._options.port)
        http_reservation, http_port = (
            _reserve_port(self._options.host, self._options.http_port)
            if self._options.http_port is not None
            else (None, None)
        )
        budget = core_budget()
        share = max(1, budget.cores // self._count)
        threads = (
            f"{self._options.cpu_threads} intra-op thread(s) per model instance"
            if self._options.cpu_threads
            else f"{share} core(s) each, shared by a model's instances"
        )
        worker_options = replace(
            self._options,
            port=port,
            http_port=http_port,
            metrics_port=None,
            ready_file=None,
            core_share=share,  # divided again between a model's instances
            workers=1,
        )
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        _LOGGER.info(
            "starting %d workers on %s:%d (%s; %s)",
            self._count,
            self._options.host,
            port,
            threads,
            budget.describe(),
        )
        try:
            for index in range(self._count):
                self._start(index, worker_options)
            code = self._watch(worker_options, port, http_port)
            return code if code is not None else self._stop()
        finally:
            if self._metrics is not None:
                self._metrics.stop()
            reservation.close()
            if http_reservation is not None:
                http_reservation.close()

    def _on_signal(self, signum: int, _frame: object) -> None:
        for other in (signal.SIGTERM, signal.SIGINT):
            signal.signal(other, signal.SIG_IGN)
        _LOGGER.info("%s received: draining every worker", signal.Signals(signum).name)
        self._stopping.set()

    def _start(self, index: int, options: ServerOptions) -> None:
        self._ready[index] = 0
        self._ports[index] = 0
        slot = WorkerSlot(index, self._count, self._ready, self._ports)
        process = self._context.Process(
            target=worker_main,
            args=(options, slot, logging.getLogger().getEffectiveLevel()),
            name=f"cnnserve-worker-{index}",
        )
        process.start()
        self._processes[index] = process

    def _watch(self, options: ServerOptions, port: int, http_port: int | None) -> int | None:
        """Until a signal: restart dead workers; once all are ready, publish. A start-up failure
        (a worker exits before the server was ever ready) stops everything: its exit code."""
        published = False
        while not self._stopping.wait(0.1):
            for index, process in enumerate(self._processes):
                if process.exitcode is None:
                    continue
                if not published:
                    _LOGGER.error(
                        "worker %d exited with %s before the server was ready", index, process.exitcode
                    )
                    self._stop()
                    return process.exitcode or 1
                delay = RESTART_BACKOFF_S[min(self._restarts[index], len(RESTART_BACKOFF_S) - 1)]
                _LOGGER.error(
                    "worker %d (pid %d) exited with %s; restarting it in %.1f s (the others keep serving)",
                    index,
                    process.pid,
                    process.exitcode,
                    delay,
                )
                self._restarts[index] += 1
                if self._stopping.wait(delay):
                    break
                self._start(index, options)
            if not published and all(self._ready[:]):
                published = True
                self._publish(port, http_port)
        return None

    def _publish(self, port: int, http_port: int | None) -> None:
        from cnnserve.serving.metrics import MetricsServer

        metrics_port = None
        if self._options.metrics_port is not None:
            self._metrics = MetricsServer(self._merged_report)
            metrics_port = self._metrics.start(self._options.host, self._options.metrics_port)
        if self._options.ready_file is not None:
            path = self._options.ready_file
            temporary = path.with_name(f".{path.name}.tmp")
            temporary.write_text(
                json.dumps(
                    {
                        "grpc_port": port,
                        "metrics_port": metrics_port,
                        "http_port": http_port,
                        "pid": os.getpid(),
                        "workers": self._count,
                    }
                )
            )
            temporary.replace(path)
        _LOGGER.info(
            "ready: %d workers on %s:%d; metrics %s",
            self._count,
            self._options.host,
            port,
            f"http://{self._options.host}:{metrics_port}/metrics" if metrics_port is not None else "off",
        )

    def _merged_report(self) -> Any:
        from cnnserve.serving.server_report import ServerReport, fetch_all

        return ServerReport.merged(fetch_all(list(self._ports[: self._count])))

    def _stop(self) -> int:
        """SIGTERM every worker; each drains within --grace-s; stragglers are killed after."""
        for process in self._processes:
            if process is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._options.grace_s + 15
        codes = []
        for process in self._processes:
            if process is None:
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                _LOGGER.error("worker %s did not stop within the grace period: killing it", process.name)
                process.kill()
                process.join()
            codes.append(process.exitcode)
        _LOGGER.info("stopped: %d workers (exit codes %s)", len(codes), codes)
        return 0 if all(code == 0 for code in codes) else 1


def _reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A bound, non-listening SO_REUSEPORT socket: holds the port every worker then binds."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise CnnserveError(f"--host {host!r}: {error.strerror}") from None
    reservation = socket.socket(family, kind, proto)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reservation.bind(address)
    except OSError as error:
        reservation.close()
        raise CnnserveError(
            f"cannot listen on {host}:{port}: {error.strerror}; is the port in use?"
        ) from None
    return reservation, reservation.getsockname()[1]
