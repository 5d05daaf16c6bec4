"""Renders the markdown tables of BENCHMARKS.md from the JSON that `make bench` writes.

    .venv/bin/python scripts/render_benchmarks.py bench_results > bench_results/tables.md

Reads OUT/local_cpu.json (`cnnserve bench local --json`), OUT/server_*.json (`cnnserve bench
server --json`) and, when present, OUT/peers.json (bench/peers/compare.py). Every cell is a
value of one record, formatted; nothing is computed that the records do not hold, except the
ratios named in the headers.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

LOCAL_BACKENDS = ("onnxruntime", "tensorflow_folded", "tensorflow_unfolded", "tflite_float32", "tflite_int8")
LOCAL_HEADERS = ("ONNX Runtime", "TF folded", "TF unfolded", "TFLite f32", "TFLite int8")
# The server sweeps scripts/bench_server.sh writes, in the order BENCHMARKS.md shows them.
SERVER_RUNS = (
    ("mnist_v2", "`mnist_cnn`, V2 ModelInfer, 1 image/request (and the no-op model)"),
    ("mnist_cnnserve", "`mnist_cnn`, cnnserve Predict, 1 image/request (and the no-op model)"),
    ("mnist_64", "`mnist_cnn`, V2, 64 images/request"),
    ("cs231n_complex_v2", "`cs231n_complex`, V2, 1 image/request (and its no-op model)"),
    ("mnist_stream", "`mnist_cnn`, V2 ModelStreamInfer (`--streaming`), 1 image/request"),
    ("mnist_delay2", "`mnist_cnn`, V2, server started with `--max-queue-delay-ms 2`"),
    ("opt_spinning", "`mnist_cnn`, V2, server started with `--cpu-spinning`"),
    ("opt_spinning_64", "`mnist_cnn`, V2, 64 images/request, `--cpu-spinning`"),
    ("opt_threads1", "`mnist_cnn`, V2, server started with `--cpu-threads 1`"),
    ("opt_threads1_64", "`mnist_cnn`, V2, 64 images/request, `--cpu-threads 1`"),
    ("opt_asyncio", "`mnist_cnn`, V2, server started with `--event-loop asyncio` (the default is uvloop)"),
    ("opt_asyncio_64", "`mnist_cnn`, V2, 64 images/request, `--event-loop asyncio`"),
    ("opt_instances2", "`mnist_cnn`, V2, server started with `--instances 2`"),
    ("opt_instances2_64", "`mnist_cnn`, V2, 64 images/request, `--instances 2`"),
)
OPEN_RUNS = (("mnist_open", "`mnist_cnn`, V2, open loop (Poisson arrivals)"),)


def _f(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _header(columns: Sequence[str]) -> list[str]:
    return [_row(columns), _row(["---"] * len(columns))]


def local_table(records: Sequence[dict]) -> str:
    cells = {(r["model"], r["batch_size"], r["backend"]): r for r in records}
    models = list(dict.fromkeys(r["model"] for r in records))
    sizes = sorted({r["batch_size"] for r in records})
    lines = _header(["model", "batch", *LOCAL_HEADERS, "ORT images/s", "ORT % of peak", "TF folded / ORT"])
    for model in models:
        for size in sizes:
            row = [cells.get((model, size, backend)) for backend in LOCAL_BACKENDS]
            if not any(row):
                continue
            ort, tf = row[0], row[1]
            ratio = f"{tf['p50_ms'] / ort['p50_ms']:.2f}×" if ort and tf else "–"
            p50s = [_f(r["p50_ms"] if r else None, ".3f") for r in row]
            throughput = _f(ort["images_per_s"] if ort else None, ",.0f")
            share = _f(ort["pct_of_peak"] if ort else None, ".0f") + "%"
            lines.append(_row([model, size, *p50s, throughput, share, ratio]))
    peaks = {r["peak_gflops"] for r in records if r.get("peak_gflops")}
    if peaks:
        lines.append("")
        lines.append(f"p50 ms per batch; matmul peak {', '.join(f'{p:.1f}' for p in sorted(peaks))} GFLOP/s.")
    return "\n".join(lines)


def server_table(records: Sequence[dict]) -> str:
    lines = _header([
        "model", "conc.", "img/req", "req/s", "images/s", "p50 ms", "p90 ms", "p99 ms", "queue µs",
        "infer µs", "server µs", "batch", "client send/recv µs", "channels", "errors",
    ])  # fmt: skip
    for r in records:
        codec = f"{_f(r.get('client_send_us'), '.0f')}/{_f(r.get('client_recv_us'), '.0f')}"
        lines.append(_row([
            r["model"] + (" (no-op)" if r["noop"] else ""), r["concurrency"], r["images_per_request"],
            f"{r['requests_per_s']:,.0f}", f"{r['images_per_s']:,.0f}", f"{r['p50_ms']:.3f}",
            f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}", _f(r["server_queue_us"], ".0f"),
            _f(r["server_compute_infer_us"], ".0f"), _f(r["server_total_us"], ".0f"),
            _f(r["server_batch_size"], ".1f"), codec, r.get("channels", 1), r["errors"],
        ]))  # fmt: skip
    return "\n".join(lines)


def open_loop_table(records: Sequence[dict]) -> str:
    lines = _header([
        "model", "offered req/s", "answered req/s", "p50 ms", "p90 ms", "p99 ms", "send lag p99 ms",
        "most in flight", "queue µs", "batch", "errors",
    ])  # fmt: skip
    for r in records:
        lines.append(_row([
            r["model"], f"{r['request_rate']:,.0f}", f"{r['requests_per_s']:,.0f}", f"{r['p50_ms']:.3f}",
            f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}", _f(r["send_lag_p99_ms"], ".3f"), r["max_in_flight"],
            _f(r["server_queue_us"], ".0f"), _f(r["server_batch_size"], ".1f"), r["errors"],
        ]))  # fmt: skip
    return "\n".join(lines)


def client_line(records: Sequence[dict]) -> str:
    busy = [r["client_loop_busy_pct"] for r in records if r.get("client_loop_busy_pct") is not None]
    cpu = [r["client_cpu_pct"] for r in records if r.get("client_cpu_pct") is not None]
    if not busy or not cpu:
        return ""
    return (
        f"Client: event loop busy at most {max(busy):.0f}% of a window; client process at most "
        f"{max(cpu):.0f}% of one core."
    )


def render(out: Path) -> str:
    sections = []
    local = out / "local_cpu.json"
    if local.exists():
        sections += ["## In-process (`local_cpu.json`)", "", local_table(json.loads(local.read_text())), ""]
    for name, title in SERVER_RUNS:
        path = out / f"server_{name}.json"
        if path.exists():
            records = json.loads(path.read_text())
            sections += [f"### {title} (`server_{name}.json`)", "", server_table(records)]
            sections += ["", client_line(records), ""]
    for name, title in OPEN_RUNS:
        path = out / f"server_{name}.json"
        if path.exists():
            records = json.loads(path.read_text())
            sections += [f"### {title} (`server_{name}.json`)", "", open_loop_table(records), ""]
    peers = out / "peers.json"
    if peers.exists():
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench" / "peers"))
        import compare

        result = json.loads(peers.read_text())
        low, high = min(result["load"]["concurrency"]), max(result["load"]["concurrency"])
        sections += ["## Peers (`peers.json`)", "", compare.table(result, low, high), ""]
    return "\n".join(sections)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: render_benchmarks.py OUT   (the folder `make bench` wrote)", file=sys.stderr)
        return 2
    print(render(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
