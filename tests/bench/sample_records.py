"""Hand-made records for the output tests (no measuring needed to check what is written)."""

from __future__ import annotations

from cnnserve.bench.records import LocalRecord, ServerRecord


def local_record(model: str = "cs231n_complex", backend: str = "onnxruntime", batch_size: int = 64,
                 p50_ms: float = 10.0) -> LocalRecord:  # fmt: skip
    return LocalRecord(
        model=model, backend=backend, device="cpu", engine="CPUExecutionProvider", batch_size=batch_size,
        runs=20, p50_ms=p50_ms, p90_ms=p50_ms * 1.1, p95_ms=p50_ms * 1.2, p99_ms=p50_ms * 1.5,
        mean_ms=p50_ms, min_ms=p50_ms * 0.9, images_per_s=batch_size * 1000 / p50_ms, gflops=12.0,
        pct_of_peak=25.0, flops_per_image=1_000_000, peak_gflops=48.0,
    )  # fmt: skip


def server_record(
    model: str = "mnist_cnn", concurrency: int | None = 4, noop: bool = False,
    loop_busy_pct: float | None = 40.0, request_rate: float | None = None,
) -> ServerRecord:  # fmt: skip
    return ServerRecord(
        model=model, backend="server:v2", protocol="v2", device="cpu", target="127.0.0.1:1",
        concurrency=concurrency, images_per_request=1, requests=1000, errors=0, window_s=1.0,
        p50_ms=2.0, p90_ms=3.0, p95_ms=3.5, p99_ms=4.0, mean_ms=2.2, requests_per_s=1000.0,
        images_per_s=1000.0, server_queue_us=300.0, server_compute_input_us=10.0,
        server_compute_infer_us=900.0, server_compute_output_us=5.0, server_total_us=1500.0,
        server_batch_size=3.5, gflops=None, pct_of_peak=None, noop=noop, client_loop_busy_pct=loop_busy_pct,
        client_cpu_pct=None if loop_busy_pct is None else 120.0, client_send_us=12.0, client_recv_us=8.0,
        request_rate=request_rate, arrivals=None if request_rate is None else "poisson",
        send_lag_p99_ms=None if request_rate is None else 0.25,
        max_in_flight=None if request_rate is None else 7, channels=4,
    )  # fmt: skip
