"""`cnnserve bench server`: a sweep of load levels (closed-loop concurrencies or open-loop request
rates) against one running server, then the no-op model.

Per level: warm-up, one measurement window, the server's ModelStatistics read at the window's
edges (their difference is the server's own queue/compute split for the window's requests; a
server without the statistics extension leaves those fields empty) and, given the server's pid
on this machine, its process tree's CPU time there too (what each request costs the server,
whichever server it is). The sweep has a fixed
length — levels × models × (warm-up + duration), plus an open loop's stragglers — and talks
only to `--target`. A server that answers UNAVAILABLE between levels is going away (draining):
the sweep stops there and returns what it measured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import grpc
import numpy as np

from cnnserve.bench import protocol_adapter
from cnnserve.bench.load_generator import (
    ClientPool,
    Level,
    LoadResult,
    LoadSpec,
    Window,
    describe,
)
from cnnserve.bench.load_options import ARRIVALS, DEFAULT_CHANNELS, DEFAULT_MAX_IN_FLIGHT
from cnnserve.bench.proc_cpu import PROC, read_tree, tree_use
from cnnserve.bench.records import ServerRecord, cpu_us_per_request, latency_fields, throughput_fields
from cnnserve.bench.stats import summarize_ns
from cnnserve.contracts.errors import CnnserveError

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")


@dataclass(frozen=True)
class ServerPlan:
    target: str
    model: str
    protocol: str
    concurrency: tuple[int, ...] = ()
    images_per_request: int = 1
    duration_s: float = 10.0
    warmup_s: float = 2.0
    noop_model: str | None = None
    client_processes: int = 1
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 30.0
    request_rates: tuple[float, ...] = ()  # open loop instead of `concurrency`
    arrivals: str = "constant"
    streaming: bool = False
    channels: int = DEFAULT_CHANNELS
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    # The server's process on this machine: its tree's CPU is read at each window's edges.
    server_pid: int | None = None

    def __post_init__(self) -> None:
        if self.protocol not in protocol_adapter.PROTOCOLS:
            raise CnnserveError(
                f"unknown --protocol {self.protocol!r}; choose one of {', '.join(protocol_adapter.PROTOCOLS)}"
            )
        if self.concurrency and self.request_rates:
            raise CnnserveError("give --concurrency (closed loop) or --request-rate (open loop), not both")
        if self.request_rates:
            if min(self.request_rates) <= 0:
                raise CnnserveError(
                    f"--request-rate takes requests per second > 0, received {list(self.request_rates)}"
                )
        elif not self.concurrency or min(self.concurrency) < 1:
            raise CnnserveError(f"--concurrency takes positive integers, received {list(self.concurrency)}")
        if self.arrivals not in ARRIVALS:
            raise CnnserveError(f"unknown --arrivals {self.arrivals!r}; choose one of {', '.join(ARRIVALS)}")
        if self.streaming and self.protocol != "v2":
            raise CnnserveError("--streaming is V2's ModelStreamInfer: use it with --protocol v2")
        if self.channels < 1:
            raise CnnserveError(f"--channels must be >= 1, received {self.channels}")
        if self.max_in_flight < 1:
            raise CnnserveError(f"--max-in-flight must be >= 1, received {self.max_in_flight}")
        if self.images_per_request < 1:
            raise CnnserveError(f"--images-per-request must be >= 1, received {self.images_per_request}")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise CnnserveError(
                f"--duration must be > 0 and --warmup >= 0, received {self.duration_s} and {self.warmup_s}"
            )
        if self.client_processes < 1:
            raise CnnserveError(f"--client-processes must be >= 1, received {self.client_processes}")
        if not self.target or ":" not in self.target:
            raise CnnserveError(f"--target must be HOST:PORT, received {self.target!r}")
        if self.server_pid is not None and not (PROC / str(self.server_pid) / "stat").is_file():
            raise CnnserveError(
                f"--server-pid {self.server_pid}: no such process on this machine; give the pid of the "
                "server --target reaches (its CPU is read from /proc), or leave the flag out"
            )

    @property
    def levels(self) -> tuple[Level, ...]:
        if self.request_rates:
            return tuple(Level(rate_per_s=r, arrivals=self.arrivals, max_in_flight=self.max_in_flight)
                         for r in self.request_rates)  # fmt: skip
        return tuple(Level(concurrency=c) for c in self.concurrency)

    @property
    def models(self) -> tuple[str, ...]:
        return (self.model, self.noop_model) if self.noop_model else (self.model,)

    @property
    def is_loopback(self) -> bool:
        return self.target.rsplit(":", 1)[0] in LOOPBACK_HOSTS


def device_of(provider: str) -> str:
    if not provider:
        return ""
    return "cuda" if provider.startswith(("CUDA", "Tensorrt")) else "cpu"


async def _connect(plan: ServerPlan) -> grpc.aio.Channel:
    channel = protocol_adapter.open_channel(plan.target, own_connection=False)
    try:
        await asyncio.wait_for(channel.channel_ready(), plan.connect_timeout_s)
    except TimeoutError:
        await channel.close()
        raise CnnserveError(
            f"cannot reach {plan.target} within {plan.connect_timeout_s:g} s; "
            "is 'cnnserve serve' running there?"
        ) from None
    return channel


async def _model_info(channel, plan: ServerPlan, model: str) -> protocol_adapter.ModelInfo:
    try:
        return await protocol_adapter.model_info(channel, model, plan.request_timeout_s)
    except grpc.aio.AioRpcError as error:
        raise CnnserveError(f"{plan.target}: model {model!r}: {describe(error)}") from None


async def served_flops(plan: ServerPlan) -> int | None:
    """What the server says `plan.model` costs per image (None if it does not say)."""
    channel = await _connect(plan)
    try:
        await _model_info(channel, plan, plan.model)  # an unknown model fails here, clearly
        return await protocol_adapter.reported_flops(channel, plan.model, plan.request_timeout_s)
    except grpc.aio.AioRpcError:
        return None  # a V2 server without the model-configuration extension
    finally:
        await channel.close()


class ServerWentAway(Exception):
    """The server answered UNAVAILABLE to a control call: it is draining or gone."""


async def _statistics(channel, model: str, timeout_s: float) -> protocol_adapter.StatsSnapshot | None:
    """None from a server without the V2 statistics extension (MLServer, KServe's ModelServer)."""
    try:
        return await protocol_adapter.statistics(channel, model, timeout_s)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            return None
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            raise ServerWentAway(describe(error)) from None
        raise CnnserveError(f"ModelStatistics for {model!r}: {describe(error)}") from None


async def _sleep_until(deadline_ns: int) -> None:
    await asyncio.sleep(max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9))


async def _measure_level(channel, pool: ClientPool, spec: LoadSpec, level: Level, plan: ServerPlan):
    start = time.monotonic_ns() + int(plan.warmup_s * 1e9)
    window = Window(start, start + int(plan.duration_s * 1e9))
    load = asyncio.ensure_future(pool.run(spec, level, window))
    pid = plan.server_pid
    try:
        await _sleep_until(window.start_ns)
        cpu_before = read_tree(pid) if pid is not None else None
        before = await _statistics(channel, spec.model, plan.request_timeout_s)
        await _sleep_until(window.end_ns)
        cpu_after = read_tree(pid) if pid is not None else None
        after = await _statistics(channel, spec.model, plan.request_timeout_s)
    except BaseException:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
        raise
    delta = after - before if before is not None and after is not None else None
    cpu = tree_use(cpu_before, cpu_after) if cpu_before and cpu_after else None
    return await load, window, delta, cpu


def _record(plan, spec, info, level: Level, result: LoadResult, window: Window, delta, cpu, flops, peak,
            system):  # fmt: skip
    if result.latencies_ns.size == 0:
        raise CnnserveError(
            f"{plan.target}: no request to {spec.model!r} succeeded at {level.label}"
            + (f" ({result.first_error})" if result.first_error else "")
        )
    summary = summarize_ns(result.latencies_ns)
    requests_per_s = result.answered_in_window / window.seconds
    images_per_s = requests_per_s * spec.images_per_request
    counted = delta is not None and delta.requests > 0
    per_request = (lambda ns: ns / delta.requests / 1e3) if counted else (lambda ns: None)
    device = device_of(info.execution_provider)
    lag = result.send_lag_ns
    return ServerRecord(
        model=spec.model,
        backend=f"server:{plan.protocol}",
        protocol=plan.protocol,
        device=device,
        target=plan.target,
        concurrency=level.concurrency,
        images_per_request=spec.images_per_request,
        requests=summary.count,
        errors=result.errors,
        window_s=window.seconds,
        requests_per_s=requests_per_s,
        images_per_s=images_per_s,
        server_queue_us=per_request(delta.queue_ns) if counted else None,
        server_compute_input_us=per_request(delta.compute_input_ns) if counted else None,
        server_compute_infer_us=per_request(delta.compute_infer_ns) if counted else None,
        server_compute_output_us=per_request(delta.compute_output_ns) if counted else None,
        server_total_us=per_request(delta.success_ns) if counted else None,
        server_batch_size=delta.inferences / delta.executions if counted and delta.executions else None,
        noop=spec.model == plan.noop_model,
        client_processes=plan.client_processes,
        client_loop_busy_pct=result.loop_busy_pct,
        client_cpu_pct=result.cpu_pct,
        server_cpu_pct=cpu[0] if cpu else None,
        server_cpu_us_per_request=cpu_us_per_request(cpu[0], requests_per_s) if cpu else None,
        machine_idle_pct=cpu[1] if cpu else None,
        request_rate=level.rate_per_s,
        arrivals=level.arrivals if level.open_loop else None,
        send_lag_p99_ms=float(np.percentile(lag, 99) / 1e6) if lag is not None and lag.size else None,
        max_in_flight=result.max_in_flight if level.open_loop else None,
        streaming=plan.streaming,
        channels=result.channels,
        client_send_us=result.send_ns / result.sends / 1e3 if result.sends else None,
        client_recv_us=result.recv_ns / result.recvs / 1e3 if result.recvs else None,
        first_error=result.first_error,
        system=system,
        **latency_fields(summary),
        **throughput_fields(images_per_s, flops, peak, plan.is_loopback and device == "cpu"),
    )


@dataclass(frozen=True)
class SweepResult:
    records: list[ServerRecord]
    stopped: str = ""  # why the sweep ended early ("" when every level ran)


async def run_server_bench(
    plan: ServerPlan,
    flops_for: Callable[[str], int | None] = lambda model: None,
    peak_gflops: float | None = None,
    system: dict | None = None,
    progress=None,
) -> SweepResult:
    channel = await _connect(plan)
    records: list[ServerRecord] = []
    try:
        infos = {model: await _model_info(channel, plan, model) for model in plan.models}
        if progress:
            progress.start(len(plan.models) * len(plan.levels))
        record_system = dict(system or {}, plan=asdict(plan))
        async with ClientPool(plan.client_processes) as pool:
            for model in plan.models:
                info = infos[model]
                spec = LoadSpec(plan.target, plan.protocol, model, info.input_shape, plan.images_per_request,
                                plan.request_timeout_s, plan.channels, plan.streaming)  # fmt: skip
                flops = None if model == plan.noop_model else flops_for(model)
                for level in plan.levels:
                    label = level.label
                    if progress:
                        progress.step(f"{model} · {plan.protocol} · {label}")
                    try:
                        result, window, delta, cpu = await _measure_level(channel, pool, spec, level, plan)
                    except ServerWentAway as gone:
                        return SweepResult(records, f"the server went away at {model} {label} ({gone})")
                    if result.latencies_ns.size == 0 and result.first_error.startswith("UNAVAILABLE"):
                        gone_at = f"the server went away at {model} {label} ({result.first_error})"
                        return SweepResult(records, gone_at)
                    point = (result, window, delta, cpu, flops, peak_gflops, record_system)
                    records.append(_record(plan, spec, info, level, *point))
                    if progress:
                        progress.advance()
    finally:
        await channel.close()
    return SweepResult(records)
