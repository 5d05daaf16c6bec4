"""A closed-loop gRPC load generator: `concurrency` callers, each sending its next request as soon
as the previous one answers, like perf_analyzer's concurrency mode.

Every process agrees on one measurement window in `time.monotonic_ns()` (CLOCK_MONOTONIC is
system-wide on Linux), so the load can be spread over several client processes when one client
core saturates, and the parent can read the server's statistics at the window's edges. Only
requests that start and finish inside the window count; the warm-up before it lets
connections, the server's batcher and its thread pools settle.

Each process also measures its own CPU time over the window: its event-loop thread's (a Python
client whose loop is busy nearly all the time is measuring itself, not the server) and the whole
process's, gRPC's threads included (what the client takes from a server on the same machine).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np

from cnnserve.bench import protocol_adapter


@dataclass(frozen=True)
class LoadSpec:
    target: str
    protocol: str
    model: str
    input_shape: tuple[int, ...]  # one image, without the batch dimension
    images_per_request: int
    timeout_s: float = 30.0


@dataclass(frozen=True)
class Window:
    start_ns: int
    end_ns: int

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True)
class LoadResult:
    latencies_ns: np.ndarray  # one per request completed inside the window
    errors: int  # failed requests inside the window
    first_error: str
    late_start_ns: int  # how long after the window start the slowest caller got going
    # CPU time of the busiest client process's event-loop thread over the window, in % of the
    # window (100: that thread never waited, so the client, not the server, set the pace).
    loop_busy_pct: float | None = None
    cpu_pct: float | None = None  # all client processes' CPU time over the window, % of one core

    @staticmethod
    def merge(parts: list[LoadResult]) -> LoadResult:
        errors = [p.first_error for p in parts if p.first_error]
        busy = [p.loop_busy_pct for p in parts if p.loop_busy_pct is not None]
        cpu = [p.cpu_pct for p in parts if p.cpu_pct is not None]
        return LoadResult(
            np.concatenate([p.latencies_ns for p in parts]) if parts else np.empty(0, np.int64),
            sum(p.errors for p in parts),
            errors[0] if errors else "",
            max((p.late_start_ns for p in parts), default=0),
            max(busy, default=None),
            sum(cpu) if cpu else None,
        )


def describe(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code().name}: {error.details()}"


async def closed_loop(spec: LoadSpec, concurrency: int, window: Window) -> LoadResult:
    """Runs `concurrency` callers until the window closes; returns what happened inside it."""
    images = np.random.default_rng(0).integers(
        0, 256, (spec.images_per_request, *spec.input_shape), dtype=np.uint8
    )
    latencies: list[int] = []
    errors = [0]
    first_error: list[str] = []
    first_start = [window.end_ns]
    async with protocol_adapter.open_channel(spec.target) as channel:
        call = protocol_adapter.infer_call(channel, spec.protocol, spec.model, images, spec.timeout_s)

        async def caller() -> None:
            while True:
                started = time.monotonic_ns()
                if started >= window.end_ns:
                    return
                try:
                    await call()
                    failed = False
                except grpc.aio.AioRpcError as error:
                    failed = True
                    if not first_error:
                        first_error.append(describe(error))
                finished = time.monotonic_ns()
                if started >= window.start_ns and finished <= window.end_ns:
                    first_start[0] = min(first_start[0], started)
                    if failed:
                        errors[0] += 1
                    else:
                        latencies.append(finished - started)
                if failed and finished < window.end_ns:
                    await asyncio.sleep(0.001)  # a failing server must not be hammered in a spin

        cpu = asyncio.ensure_future(_cpu_over(window))
        try:
            await asyncio.gather(*(caller() for _ in range(concurrency)))
        except BaseException:  # cancelled, or a caller failed: the CPU reading is not wanted
            cpu.cancel()
            raise
    late = max(0, first_start[0] - window.start_ns) if latencies or errors[0] else 0
    loop_busy_pct, cpu_pct = await cpu
    return LoadResult(
        np.asarray(latencies, np.int64), errors[0], first_error[0] if first_error else "", late,
        loop_busy_pct, cpu_pct,
    )  # fmt: skip


async def _cpu_over(window: Window) -> tuple[float | None, float | None]:
    """CPU time between the window's edges, in % of the wall time: (this event-loop thread, process)."""
    await asyncio.sleep(max(0.0, (window.start_ns - time.monotonic_ns()) / 1e9))
    wall, thread, process = time.monotonic_ns(), time.thread_time_ns(), time.process_time_ns()
    await asyncio.sleep(max(0.0, (window.end_ns - wall) / 1e9))
    elapsed = time.monotonic_ns() - wall
    if elapsed <= 0:
        return None, None
    thread_pct = 100.0 * (time.thread_time_ns() - thread) / elapsed
    process_pct = 100.0 * (time.process_time_ns() - process) / elapsed
    return thread_pct, process_pct


def _closed_loop_process(spec: LoadSpec, concurrency: int, window: Window) -> LoadResult:
    return asyncio.run(closed_loop(spec, concurrency, window))


def _ready() -> int:
    time.sleep(0.2)  # long enough that every worker of the pool takes one of these
    return 0


def split(concurrency: int, processes: int) -> list[int]:
    """Callers per process, as even as possible, no empty process: split(10, 3) == [4, 3, 3]."""
    processes = max(1, min(processes, concurrency))
    base, extra = divmod(concurrency, processes)
    return [base + (1 if i < extra else 0) for i in range(processes)]


class ClientPool:
    """Client processes, started once per sweep (spawned: gRPC does not survive fork)."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._executor: ProcessPoolExecutor | None = None

    async def __aenter__(self) -> ClientPool:
        if self.processes > 1:
            context = multiprocessing.get_context("spawn")
            self._executor = ProcessPoolExecutor(self.processes, mp_context=context)
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                *(loop.run_in_executor(self._executor, _ready) for _ in range(self.processes))
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    async def run(self, spec: LoadSpec, concurrency: int, window: Window) -> LoadResult:
        if self._executor is None:
            return await closed_loop(spec, concurrency, window)
        loop = asyncio.get_running_loop()
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(self._executor, _closed_loop_process, spec, share, window)
                for share in split(concurrency, self.processes)
            )
        )
        return LoadResult.merge(list(parts))
