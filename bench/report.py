"""Results out: rich tables on the terminal, `--json` (a list of records), `--csv` (perf_analyzer's
columns first, so Triton tooling reads it; ours after), and a rich progress bar while running.

The CSV's first column is perf_analyzer's: "Concurrency" for a closed-loop sweep, "Request Rate"
for an open-loop one. Client Send and Client Recv are the client's protobuf encode and decode
per request (timed in the serializers gRPC calls); socket I/O happens on gRPC's own threads
and stays in Network+Server Send/Recv, which is the average latency minus every other column."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cnnserve.bench.records import LocalRecord, ServerRecord
from cnnserve.bench.reference import TUTORIAL_FIGURES, compare, format_speedup

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
)
# Above this share of the window, a client event loop is the bottleneck rather than the server.
CLIENT_SATURATED_PCT = 90.0


WIDE_COLUMNS = 200


def console() -> Console:
    """stdout; as wide as the tables need when it is a file or pipe (rich would assume 80)."""
    import sys

    return Console() if sys.stdout.isatty() else Console(width=WIDE_COLUMNS)


def _opt(value: float | None, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


class RichProgress:
    """A progress bar over measured points, with the current point as its description."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        )  # fmt: skip
        self._task = self._progress.add_task("starting", total=None)

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, total: int) -> None:
        self._progress.update(self._task, total=total, completed=0)

    def step(self, description: str) -> None:
        self._progress.update(self._task, description=description)

    def advance(self) -> None:
        self._progress.advance(self._task)


def local_table(records: Sequence[LocalRecord]) -> Table:
    table = Table(title="In-process latency per batch", title_justify="left")
    for column in ("model", "backend", "device", "batch"):
        table.add_column(column)
    for column in ("p50 ms", "p90 ms", "p99 ms", "images/s", "GFLOP/s", "% peak", "runs"):
        table.add_column(column, justify="right")
    for r in records:
        table.add_row(
            r.model, r.backend, r.device, str(r.batch_size), f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}",
            f"{r.p99_ms:.3f}", f"{r.images_per_s:,.0f}", _opt(r.gflops), _opt(r.pct_of_peak), str(r.runs),
        )  # fmt: skip
    return table


def reference_table(records: Sequence[LocalRecord]) -> Table | None:
    """Batch-64 p50 beside the tutorials' cs231n_complex figures, as speed-ups."""
    rows = compare(list(records))
    if not rows:
        return None
    table = Table(
        title="Batch 64 against the tutorials' cs231n_complex figures (× faster)", title_justify="left"
    )
    for column in ("model", "backend", "device", "p50 ms"):
        table.add_column(column, justify="right" if column == "p50 ms" else "left")
    for figure in TUTORIAL_FIGURES:
        table.add_column(f"{figure.label}\n{figure.low_ms:g}–{figure.high_ms:g} ms", justify="right")
    for row in rows:
        speedups = [format_speedup(*row.speedups[f.key]) for f in TUTORIAL_FIGURES]
        table.add_row(row.model, row.backend, row.device, f"{row.p50_ms:.3f}", *speedups)
    return table


def server_table(records: Sequence[ServerRecord]) -> Table:
    open_loop = any(r.open_loop for r in records)
    title = (
        "Through the server (open loop: latency from each request's scheduled send time)"
        if open_loop
        else "Through the server (closed loop)"
    )
    table = Table(title=title, title_justify="left")
    for column in ("model", "protocol", "device", "rate/s" if open_loop else "conc.", "img/req"):
        table.add_column(column)
    columns = ["req/s", "images/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "queue µs", "infer µs",
               "server µs", "batch", "errors"]  # fmt: skip
    if open_loop:
        columns += ["send lag p99 ms", "in flight"]
    for column in columns:
        table.add_column(column, justify="right")
    for r in records:
        protocol = r.protocol + (" stream" if r.streaming else "")
        level = f"{r.request_rate:,.0f}" if r.request_rate is not None else str(r.concurrency)
        cells = [
            r.model + (" (no-op)" if r.noop else ""), protocol, r.device or "?", level,
            str(r.images_per_request), f"{r.requests_per_s:,.0f}", f"{r.images_per_s:,.0f}",
            f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.p95_ms:.3f}", f"{r.p99_ms:.3f}",
            _opt(r.server_queue_us, ".0f"), _opt(r.server_compute_infer_us, ".0f"),
            _opt(r.server_total_us, ".0f"), _opt(r.server_batch_size), str(r.errors),
        ]  # fmt: skip
        if open_loop:
            cells += [_opt(r.send_lag_p99_ms, ".3f"), _opt(r.max_in_flight, "d")]
        table.add_row(*cells)
    return table


def noop_overhead_lines(records: Sequence[ServerRecord]) -> list[str]:
    """The no-op model's cost per request: client round trip, and server time outside the model."""
    lines = []
    for r in records:
        if r.noop and r.level == min(x.level for x in records if x.noop):
            inside = (
                (r.server_total_us or 0.0) - (r.server_compute_infer_us or 0.0)
                if r.server_total_us is not None
                else None
            )
            lines.append(
                f"no-op model {r.model!r} at {r.level_label}: {r.p50_ms * 1e3:.0f} µs p50 "
                f"per request round trip, {_opt(inside, '.0f')} µs of it inside the server outside the model"
            )
    return lines


def _csv_pct(value: float | None) -> int | str:
    return "" if value is None else round(value)


def client_load_lines(records: Sequence[ServerRecord]) -> list[str]:
    """What the load generator itself cost, and a warning per level where its event loop left no
    time to wait for the server (then the figures measure the client)."""
    measured = [r for r in records if r.client_loop_busy_pct is not None and r.client_cpu_pct is not None]
    lines = []
    if measured:
        lines.append(
            f"client: event loop busy at most {max(r.client_loop_busy_pct for r in measured):.0f}% of a "
            f"window, client processes at most {max(r.client_cpu_pct for r in measured):.0f}% of one core"
        )
    for r in records:
        if r.errors:
            failed = f"{r.errors} failed request(s), the first: {r.first_error}"
            lines.append(f"{r.model} at {r.level_label}: {failed}")
        if r.client_loop_busy_pct is not None and r.client_loop_busy_pct >= CLIENT_SATURATED_PCT:
            more = f"--client-processes {r.client_processes * 2}"
            lines.append(
                f"warning: {r.model} at {r.level_label}: the client's event loop was busy "
                f"{r.client_loop_busy_pct:.0f}% of the window, so these figures may measure the client; "
                f"spread it over more processes ({more}) and compare"
            )
    return lines


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
