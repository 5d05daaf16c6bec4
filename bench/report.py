"""Results into files: `--json` (a list of records) and `--csv` (perf_analyzer's columns first, so
Triton tooling reads it; ours after). What the terminal shows is bench/console.py.

The CSV's first column is perf_analyzer's: "Concurrency" for a closed-loop sweep, "Request Rate"
for an open-loop one. Client Send and Client Recv are the client's protobuf encode and decode
per request (timed in the serializers gRPC calls); socket I/O happens on gRPC's own threads
and stays in Network+Server Send/Recv, which is the average latency minus every other column."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from cnnserve.bench.records import LocalRecord, ServerRecord

# perf_analyzer -f: latencies and components in microseconds per request.
PERF_ANALYZER_COLUMNS = (
    "Concurrency", "Inferences/Second", "Client Send", "Network+Server Send/Recv", "Server Queue",
    "Server Compute Input", "Server Compute Infer", "Server Compute Output", "Client Recv",
    "p50 latency", "p90 latency", "p95 latency", "p99 latency",
)  # fmt: skip
EXTRA_COLUMNS = (
    "Avg latency",
    "Model",
    "Protocol",
    "Images/Request",
    "Requests/Second",
    "Errors",
    "Device",
    "No-op",
    "Client Loop Busy %",
    "Client CPU %",
    "Channels",
    "Streaming",
    "Arrivals",
    "Send Lag p99",
    "Max In Flight",
    "Server CPU %",
    "Server CPU usec/req",
    "Machine Idle %",
)


def _csv_pct(value: float | None) -> int | str:
    return "" if value is None else round(value)


def write_run(result: dict, path: Path) -> None:
    """One run of a comparison script (server_ab, compare, export_pass_ab) as JSON at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def write_json(records: Sequence[LocalRecord | ServerRecord], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_dict() for r in records], indent=2) + "\n")


def csv_columns(records: Sequence[ServerRecord]) -> tuple[str, ...]:
    """perf_analyzer's header: its first column names the kind of sweep."""
    first = "Request Rate" if any(r.open_loop for r in records) else "Concurrency"
    return (first, *PERF_ANALYZER_COLUMNS[1:], *EXTRA_COLUMNS)


def perf_analyzer_row(r: ServerRecord) -> dict[str, object]:
    """One CSV row, in microseconds per request. The components add up to the average latency:
    Network+Server Send/Recv is what is left after the client's encode/decode and the server's
    own queue and compute."""
    avg_us = r.mean_ms * 1e3
    server = [
        r.server_queue_us,
        r.server_compute_input_us,
        r.server_compute_infer_us,
        r.server_compute_output_us,
    ]
    send_us, recv_us = r.client_send_us or 0.0, r.client_recv_us or 0.0
    known_us = sum(v or 0.0 for v in server) + send_us + recv_us
    level = r.request_rate if r.request_rate is not None else r.concurrency
    values = [
        level, round(r.images_per_s, 1), round(send_us), round(max(0.0, avg_us - known_us)),
        *(round(v or 0.0) for v in server), round(recv_us),
        round(r.p50_ms * 1e3), round(r.p90_ms * 1e3), round(r.p95_ms * 1e3), round(r.p99_ms * 1e3),
        round(avg_us), r.model, r.protocol, r.images_per_request, round(r.requests_per_s, 1), r.errors,
        r.device, int(r.noop), _csv_pct(r.client_loop_busy_pct), _csv_pct(r.client_cpu_pct),
        r.channels, int(r.streaming), r.arrivals or "",
        "" if r.send_lag_p99_ms is None else round(r.send_lag_p99_ms * 1e3),
        "" if r.max_in_flight is None else r.max_in_flight,
        _csv_pct(r.server_cpu_pct),
        "" if r.server_cpu_us_per_request is None else round(r.server_cpu_us_per_request),
        _csv_pct(r.machine_idle_pct),
    ]  # fmt: skip
    return dict(zip(csv_columns([r]), values, strict=True))


def write_csv(records: Sequence[ServerRecord], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=csv_columns(records))
        writer.writeheader()
        for record in records:
            writer.writerow(perf_analyzer_row(record))


def write_local_csv(records: Sequence[LocalRecord], path: Path) -> None:
    """The in-process records as a flat CSV (the same fields as --json, minus the nested ones)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in r.to_dict().items() if not isinstance(v, dict)} for r in records]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


def write_outputs(
    records: Sequence[LocalRecord] | Sequence[ServerRecord],
    json_path: Path | None,
    csv_path: Path | None,
    plot_path: Path | None,
) -> None:
    """The files a bench command was asked for: --json, --csv (perf_analyzer's for server records,
    flat for local ones) and --plot (matplotlib is imported only then)."""
    local = all(isinstance(r, LocalRecord) for r in records)
    if json_path:
        write_json(records, json_path)
    if csv_path:
        (write_local_csv if local else write_csv)(records, csv_path)  # type: ignore[arg-type]
    if plot_path:
        from cnnserve.bench import plots

        (plots.plot_local if local else plots.plot_server)(records, plot_path)  # type: ignore[arg-type]
