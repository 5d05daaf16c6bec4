"""Results out: rich tables on the terminal, `--json` (a list of records), `--csv` (perf_analyzer's
columns first, so Triton tooling reads it; ours after), and a rich progress bar while running."""

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
    table = Table(title="Through the server (closed loop)", title_justify="left")
    for column in ("model", "protocol", "device", "conc.", "img/req"):
        table.add_column(column)
    for column in ("req/s", "images/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "queue µs", "infer µs",
                   "server µs", "batch", "errors"):  # fmt: skip
        table.add_column(column, justify="right")
    for r in records:
        table.add_row(
            r.model + (" (no-op)" if r.noop else ""), r.protocol, r.device or "?", str(r.concurrency),
            str(r.images_per_request), f"{r.requests_per_s:,.0f}", f"{r.images_per_s:,.0f}",
            f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.p95_ms:.3f}", f"{r.p99_ms:.3f}",
            _opt(r.server_queue_us, ".0f"), _opt(r.server_compute_infer_us, ".0f"),
            _opt(r.server_total_us, ".0f"), _opt(r.server_batch_size), str(r.errors),
        )  # fmt: skip
    return table


def noop_overhead_lines(records: Sequence[ServerRecord]) -> list[str]:
    """The no-op model's cost per request: client round trip, and server time outside the model."""
    lines = []
    for r in records:
        if r.noop and r.concurrency == min(x.concurrency for x in records if x.noop):
            inside = (
                (r.server_total_us or 0.0) - (r.server_compute_infer_us or 0.0)
                if r.server_total_us is not None
                else None
            )
            lines.append(
                f"no-op model {r.model!r} at concurrency {r.concurrency}: {r.p50_ms * 1e3:.0f} µs p50 "
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
        if r.client_loop_busy_pct is not None and r.client_loop_busy_pct >= CLIENT_SATURATED_PCT:
            more = f"--client-processes {r.client_processes * 2}"
            lines.append(
                f"warning: {r.model} at concurrency {r.concurrency}: the client's event loop was busy "
                f"{r.client_loop_busy_pct:.0f}% of the window, so these figures may measure the client; "
                f"spread it over more processes ({more}) and compare"
            )
    return lines


def write_json(records: Sequence[LocalRecord | ServerRecord], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_dict() for r in records], indent=2) + "\n")


def perf_analyzer_row(r: ServerRecord) -> dict[str, object]:
    """One CSV row. grpc-python cannot split the client's send/receive from the wire, so those
    are 0 and everything outside the server's own time is in Network+Server Send/Recv."""
    avg_us = r.mean_ms * 1e3
    server = [
        r.server_queue_us,
        r.server_compute_input_us,
        r.server_compute_infer_us,
        r.server_compute_output_us,
    ]
    server_us = sum(v or 0.0 for v in server)
    values = [
        r.concurrency, round(r.images_per_s, 1), 0, round(max(0.0, avg_us - server_us)),
        *(round(v or 0.0) for v in server), 0,
        round(r.p50_ms * 1e3), round(r.p90_ms * 1e3), round(r.p95_ms * 1e3), round(r.p99_ms * 1e3),
        round(avg_us), r.model, r.protocol, r.images_per_request, round(r.requests_per_s, 1), r.errors,
        r.device, int(r.noop), _csv_pct(r.client_loop_busy_pct), _csv_pct(r.client_cpu_pct),
    ]  # fmt: skip
    return dict(zip((*PERF_ANALYZER_COLUMNS, *EXTRA_COLUMNS), values, strict=True))


def write_csv(records: Sequence[ServerRecord], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=(*PERF_ANALYZER_COLUMNS, *EXTRA_COLUMNS))
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
