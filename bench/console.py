"""What the `cnnserve bench` commands show on the terminal: rich tables and
summary lines on stdout, a progress bar on stderr (so piping stdout keeps only the results).
The files they write (--json, --csv, --plot) are bench/report.py's and bench/plots.py's."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cnnserve.bench.records import LocalRecord, ServerRecord
from cnnserve.bench.reference import TUTORIAL_FIGURES, compare, format_speedup

if TYPE_CHECKING:
    from cnnserve.bench.local import LocalResult
    from cnnserve.bench.train_bench import TrainPoint

# Above this share of the window, a client event loop is the bottleneck rather than the server.
CLIENT_SATURATED_PCT = 90.0


WIDE_COLUMNS = 200


def console() -> Console:
    """stdout; as wide as the tables need when it is a file or pipe (rich would assume 80)."""
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


def server_cpu_lines(records: Sequence[ServerRecord]) -> list[str]:
    """The server's own CPU per level (`--server-pid`): a server's cost apart from its speed, which
    on a shared machine also depends on what the load generator leaves it."""
    return [
        f"server CPU: {r.model} at {r.level_label}: {r.server_cpu_pct:.0f}% of one core, "
        f"{r.server_cpu_us_per_request:,.0f} µs per request; machine idle {r.machine_idle_pct:.0f}%"
        for r in records
        if r.server_cpu_pct is not None and r.server_cpu_us_per_request is not None
    ]


def progress() -> RichProgress:
    """The progress bar, on stderr."""
    return RichProgress(Console(stderr=True))


def show_local(result: LocalResult) -> None:
    """`bench local`'s tables, what was skipped and why, and the matmul peak the % peak is of."""
    out = console()
    out.print(local_table(result.records))
    reference = reference_table(result.records)
    if reference is not None:
        out.print(reference)
    out.print("% peak: of the float32 matmul peak; int8 runs can exceed 100 %.", style="dim")
    for skipped in result.skipped:
        out.print(f"skipped {skipped.model}/{skipped.backend}: {skipped.reason}", style="yellow")
    assert result.peak is not None and result.system is not None
    peak, system = result.peak, result.system
    out.print(
        f"matmul peak {peak.gflops:.1f} GFLOP/s (float32, squares up to {peak.size}², best of "
        f"{peak.repeats}, {peak.threads} threads; numpy {peak.numpy_gflops:.1f}, "
        f"ONNX Runtime {peak.onnxruntime_gflops:.1f}) on {system.cpu_model}, "
        f"{system.usable_cores} usable of {system.logical_cores} cores"
    )


def show_server(records: Sequence[ServerRecord]) -> None:
    """`bench server`'s table (when a level was measured), the no-op overhead, the server's CPU and
    the client's load."""
    out = console()
    if records:
        out.print(server_table(records))
    for line in [*noop_overhead_lines(records), *server_cpu_lines(records), *client_load_lines(records)]:
        out.print(line)


def show_stopped(measured: int, reason: str) -> None:
    print(f"cnnserve: stopped early, {measured} level(s) measured: {reason}", file=sys.stderr)


def train_table(peak_gflops: float, threads: int, points: Sequence[TrainPoint]) -> Table:
    table = Table(
        title=f"training steps; float32 matmul peak {peak_gflops:.1f} GFLOP/s on {threads} thread(s)"
    )
    for column in ("model", "batch", "XLA", "oneDNN", "BN", "examples/s", "ms/step", "GFLOP/s", "% of peak"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for p in points:
        onednn = "?" if p.onednn is None else "on" if p.onednn else "off"
        table.add_row(
            p.model, str(p.batch_size), "on" if p.xla else "off", onednn, p.batchnorm,
            f"{p.examples_per_s:,.0f}", f"{p.step_ms:.1f}", f"{p.gflops:.1f}", f"{p.peak_percent:.0f}%",
        )  # fmt: skip
    return table


def show_train(peak_gflops: float, threads: int, points: Sequence[TrainPoint]) -> None:
    """`bench train`'s table, at rich's own width."""
    Console().print(train_table(peak_gflops, threads, points))
