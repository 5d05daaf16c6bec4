"""One record per measured point: what `--json` writes and what the tables and plots read.

Field names carry their units. `device` is the device that really ran (from the runtime, or
from the server's own report), never the one requested.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from cnnserve.bench.stats import LatencySummary


@dataclass(frozen=True)
class LocalRecord:
    model: str
    backend: str  # variant: onnxruntime, tensorflow_folded, tensorflow_unfolded, tflite_float32, ...
    device: str  # cpu | cuda
    engine: str  # e.g. CPUExecutionProvider, XNNPACK, tensorflow-cpu
    batch_size: int
    runs: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    images_per_s: float  # batch_size × runs / total timed seconds
    gflops: float | None  # images_per_s × the zoo's FLOPs per image
    pct_of_peak: float | None  # of the matmul peak measured in the same run (CPU only)
    flops_per_image: int | None
    peak_gflops: float | None
    settings: dict = field(default_factory=dict)
    system: dict = field(default_factory=dict)
    kind: str = "local"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ServerRecord:
    model: str
    backend: str  # "server:cnnserve" or "server:v2"
    protocol: str
    device: str  # from the server's execution provider; "" when it does not say
    target: str
    concurrency: int | None  # closed loop: callers; None in an open loop (see request_rate)
    images_per_request: int
    requests: int  # counted requests that succeeded (closed: inside the window; open: scheduled in it)
    errors: int
    window_s: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    requests_per_s: float  # answers received inside the window, per second
    images_per_s: float
    server_queue_us: float | None  # per request, from ModelStatistics deltas over the window
    server_compute_input_us: float | None
    server_compute_infer_us: float | None
    server_compute_output_us: float | None
    server_total_us: float | None  # request arrival → response, inside the server
    server_batch_size: float | None  # images per model execution over the window
    gflops: float | None
    pct_of_peak: float | None
    noop: bool  # the no-op model: the per-request cost of the path itself
    client_processes: int = 1
    client_loop_busy_pct: float | None = None  # the busiest client event-loop thread, % of the window
    client_cpu_pct: float | None = None  # all client processes together, % of one core
    # The server's process tree (`--server-pid`, on this machine) over the window, % of one core,
    # and what that is per answered request; and how idle the whole machine was meanwhile.
    server_cpu_pct: float | None = None
    server_cpu_us_per_request: float | None = None
    machine_idle_pct: float | None = None
    # Open loop: offered requests per second and their spacing; latency is from the scheduled time.
    request_rate: float | None = None
    arrivals: str | None = None  # constant | poisson
    send_lag_p99_ms: float | None = None  # how late the client sent (99th percentile)
    max_in_flight: int | None = None  # the most requests outstanding at once
    streaming: bool = False  # V2 ModelStreamInfer
    channels: int = 1  # gRPC channels, each its own TCP connection
    client_send_us: float | None = None  # request serialization per request (protobuf encode)
    client_recv_us: float | None = None  # response parsing per request (protobuf decode)
    first_error: str = ""  # "CODE: details" of the first failed counted request
    system: dict = field(default_factory=dict)
    kind: str = "server"

    @property
    def batch_size(self) -> int:
        return self.images_per_request

    @property
    def open_loop(self) -> bool:
        return self.request_rate is not None

    @property
    def level(self) -> float:
        """The load level's number: callers in a closed loop, offered req/s in an open one."""
        return self.request_rate if self.request_rate is not None else float(self.concurrency or 0)

    @property
    def level_label(self) -> str:
        if self.request_rate is not None:
            return f"{self.arrivals or 'constant'} rate {self.request_rate:g}/s"
        return f"concurrency {self.concurrency}"

    def to_dict(self) -> dict:
        return asdict(self)


def latency_fields(summary: LatencySummary) -> dict[str, float]:
    return {
        "p50_ms": summary.p50_ms,
        "p90_ms": summary.p90_ms,
        "p95_ms": summary.p95_ms,
        "p99_ms": summary.p99_ms,
        "mean_ms": summary.mean_ms,
    }


def cpu_us_per_request(cpu_pct: float | None, requests_per_s: float | None) -> float | None:
    """µs of CPU per answered request from a share of one core (%) over the same window."""
    return 1e4 * cpu_pct / requests_per_s if cpu_pct is not None and requests_per_s else None


def throughput_fields(
    images_per_s: float, flops_per_image: int | None, peak_gflops: float | None, on_cpu: bool
) -> dict[str, float | None]:
    """GFLOP/s from the zoo's count, and its share of the CPU matmul peak (CPU runs only:
    a GPU's throughput over a CPU peak would be a meaningless ratio)."""
    gflops = images_per_s * flops_per_image / 1e9 if flops_per_image else None
    pct = 100.0 * gflops / peak_gflops if gflops is not None and peak_gflops and on_cpu else None
    return {"gflops": gflops, "pct_of_peak": pct}
