"""`--log-format json` and the access log: one line per inference request, with its request id.

The access log is off unless `--access-log` is given: at thousands of requests a second a line
each costs CPU and disk that most deployments spend on metrics instead (Triton and TF Serving
log no requests by default). When on, every inference request — both protocols, success or
not — gets one line: protocol, model, version, images, status, queue/compute/total µs and the
request id (the V2 `id` when the client sent one, else a generated one), which the client
also gets back (gRPC trailing metadata / HTTP header `x-request-id`). Failures a client can
repeat at will (bad input, unknown models) are rate-limited per status and model.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

from cnnserve.serving.log_limit import RateLimitedLog

_ACCESS = logging.getLogger("cnnserve.access")
_FLOODS = RateLimitedLog(_ACCESS, interval_s=1.0)
REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 64  # a client's own id is cut to this before it is logged and echoed
CLIENT_ERRORS = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION"})


def new_request_id() -> str:
    return os.urandom(8).hex()


@dataclass
class AccessRecord:
    """Filled in by the handler as the request goes; written once it is answered."""

    protocol: str
    model: str
    version: str
    request_id: str
    started_ns: int
    images: int = 0
    queue_us: int = 0
    compute_us: int = 0


class AccessLog:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def write(self, record: AccessRecord, status: str, error: str = "") -> None:
        total_us = (time.monotonic_ns() - record.started_ns) // 1000
        fields = {
            "protocol": record.protocol,
            "model": record.model,
            "version": record.version,
            "images": record.images,
            "status": status,
            "queue_us": record.queue_us,
            "compute_us": record.compute_us,
            "total_us": total_us,
            "request_id": record.request_id,
        }
        if error:
            fields["error"] = error
        text = " ".join(f"{key}={value}" for key, value in fields.items() if key != "error")
        if status in CLIENT_ERRORS:
            _FLOODS.warning(f"{status} {record.model}", "%s error=%r", text, error, extra={"access": fields})
        else:
            _ACCESS.info("%s", text, extra={"access": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and an access line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        worker = getattr(record, "worker", None)
        if worker is not None:
            entry["worker"] = worker
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_format: str, worker: int | None = None) -> None:
    """The root handler's format for the server (and its workers)."""
    prefix = f"worker-{worker} " if worker is not None else ""
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    for handler in root.handlers:
        handler.setFormatter(formatter)
        if worker is not None:
            handler.addFilter(_WorkerFilter(worker))


class _WorkerFilter(logging.Filter):
    def __init__(self, worker: int) -> None:
        super().__init__()
        self._worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self._worker
        return True
