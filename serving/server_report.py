"""What one server process knows about its model versions, in one record that processes can merge.

`/metrics` and V2 `ModelStatistics` are both rendered from a `ServerReport`. With one process it
is read straight from the registry; with `--workers N` every worker serves its own report as
JSON on a private loopback port, and the supervisor's `/metrics` and each worker's
`ModelStatistics` merge all of them, so both describe the whole server, not the worker that a
connection happened to reach.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.request import Request, urlopen

from cnnserve.serving.registry import ModelRegistry, ModelState
from cnnserve.serving.stats import Snapshot

REPORT_PATH = "/report.json"
CONTROL_PATH = "/control"


@dataclass(frozen=True)
class VersionReport:
    name: str
    version: str
    state: ModelState
    provider: str
    max_batch_size: int
    queued_requests: int
    queued_images: int
    stats: Snapshot
    instances: int = 0  # ONNX Runtime sessions serving the version (0 until it is loaded)
    small_runs: int = 0  # worker runs that took the one-thread session (session.py), all instances


@dataclass(frozen=True)
class ProcessReport:
    """One worker process's resources, for the supervisor's /metrics (Linux /proc)."""

    worker: str
    resident_memory_bytes: int
    cpu_seconds: float
    open_fds: int

    @classmethod
    def of_this_process(cls, worker: str) -> ProcessReport | None:
        try:
            status = Path("/proc/self/status").read_text()
            rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
            ticks = os.sysconf("SC_CLK_TCK")
            open_fds = len(os.listdir("/proc/self/fd"))
        except (OSError, StopIteration, ValueError):
            return None
        return cls(worker, rss_kb * 1024, (int(fields[11]) + int(fields[12])) / ticks, open_fds)


@dataclass(frozen=True)
class ServerReport:
    versions: tuple[VersionReport, ...] = ()
    load_failures: tuple[tuple[str, str, int], ...] = ()  # (model, version, failed loads)
    processes: tuple[ProcessReport, ...] = ()  # per worker, under --workers
    idle_poll_s: float = 0.0  # the event loops' polling after going idle (--idle-poll-us)

    @classmethod
    def of(cls, registry: ModelRegistry, worker: int | None = None, idle_poll_s: float = 0.0) -> ServerReport:
        versions = []
        for served in registry.versions():
            batcher = served.batcher
            versions.append(
                VersionReport(
                    served.name,
                    served.version,
                    served.state,
                    served.provider,
                    served.batching.max_batch_size,
                    batcher.queued_requests if batcher else 0,
                    batcher.queued_images if batcher else 0,
                    served.stats.snapshot(),
                    len(served.sessions),
                    sum(session.small_runs for session in served.sessions),
                )
            )
        failures = tuple((name, version, n) for (name, version), n in sorted(registry.load_failures.items()))
        process = ProcessReport.of_this_process(str(worker)) if worker is not None else None
        return cls(tuple(versions), failures, (process,) if process else (), idle_poll_s)

    @classmethod
    def merged(cls, reports: list[ServerReport]) -> ServerReport:
        """Counts and durations add up; a version is READY if any process serves it; load
        failures are the most any one process saw (every worker loads the same files)."""
        by_version: dict[tuple[str, str], list[VersionReport]] = {}
        for report in reports:
            for version in report.versions:
                by_version.setdefault((version.name, version.version), []).append(version)
        versions = []
        for (name, number), parts in sorted(
            by_version.items(), key=lambda item: (item[0][0], int(item[0][1]))
        ):
            state = ModelState.READY if any(p.state == ModelState.READY for p in parts) else parts[0].state
            versions.append(
                VersionReport(
                    name,
                    number,
                    state,
                    next((p.provider for p in parts if p.provider), ""),
                    max(p.max_batch_size for p in parts),
                    sum(p.queued_requests for p in parts),
                    sum(p.queued_images for p in parts),
                    Snapshot.merged([p.stats for p in parts]),
                    sum(p.instances for p in parts),
                    sum(p.small_runs for p in parts),
                )
            )
        failures: dict[tuple[str, str], int] = {}
        for report in reports:
            for name, version, count in report.load_failures:
                failures[(name, version)] = max(failures.get((name, version), 0), count)
        processes = tuple(sorted((p for r in reports for p in r.processes), key=lambda p: p.worker))
        return cls(
            tuple(versions),
            tuple((n, v, c) for (n, v), c in sorted(failures.items())),
            processes,
            sum(r.idle_poll_s for r in reports),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "versions": [{**v.__dict__, "stats": v.stats.to_json()} for v in self.versions],
                "load_failures": [list(f) for f in self.load_failures],
                "processes": [p.__dict__ for p in self.processes],
                "idle_poll_s": self.idle_poll_s,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ServerReport:
        raw = json.loads(text)
        versions = tuple(
            VersionReport(**{**v, "state": ModelState(v["state"]), "stats": Snapshot.from_json(v["stats"])})
            for v in raw["versions"]
        )
        failures = tuple((str(n), str(v), int(c)) for n, v, c in raw["load_failures"])
        processes = tuple(ProcessReport(**p) for p in raw.get("processes", []))
        return cls(versions, failures, processes, float(raw.get("idle_poll_s", 0.0)))


def send_control(port: int, action: str, model: str, timeout_s: float = 600.0) -> tuple[str, str]:
    """Ask one sibling worker to load or unload `model` here only; its (status code, message)."""
    body = json.dumps({"action": action, "model": model}).encode()
    request = Request(f"http://127.0.0.1:{port}{CONTROL_PATH}", data=body, method="POST")
    with urlopen(request, timeout=timeout_s) as response:
        answer = json.loads(response.read().decode())
    return str(answer["code"]), str(answer["message"])


def fetch_all(ports: list[int]) -> list[ServerReport]:
    """The reports of the workers on `ports` (0: not started yet); one restarting is skipped."""
    reports = []
    for port in ports:
        if port:
            with contextlib.suppress(OSError, ValueError):
                reports.append(fetch(port))
    return reports


def fetch(port: int, timeout_s: float = 5.0) -> ServerReport:
    """One worker's report from its private loopback endpoint."""
    with urlopen(f"http://127.0.0.1:{port}{REPORT_PATH}", timeout=timeout_s) as response:
        return ServerReport.from_json(response.read().decode())
