"""The gRPC load generator: closed loop (`concurrency` callers, each sending its next request as
soon as the previous one answers, like perf_analyzer's concurrency mode) or open loop (requests
sent at scheduled times, constant or Poisson, like its request-rate mode, with latency measured
from each request's scheduled time).

Every process agrees on one measurement window in `time.monotonic_ns()` (CLOCK_MONOTONIC is
system-wide on Linux), so the load can be spread over several client processes when one client
core saturates, and the parent can read the server's statistics at the window's edges. Closed
loop: requests that start and finish inside the window count. Open loop: requests scheduled
inside the window count, however late they finish (leaving the slow ones out would hide the
queueing the open loop is there to show); throughput is the answers received inside the window.
The warm-up before the window lets connections, the server's batcher and its threads settle.

Each process opens its share of `channels` channels, each its own TCP connection, and spreads
its callers (or its scheduled requests) over them in turn, so every worker of a server behind
one port gets load. It also measures its own CPU time over the window: its event-loop thread's
(a Python client whose loop is busy nearly all the time is measuring itself, not the server) and
the whole process's, gRPC's threads included (what the client takes from a server on the same
machine), and its protobuf encode/decode time (perf_analyzer's Client Send and Client Recv).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from cnnserve.bench import protocol_adapter
from cnnserve.bench.arrivals import schedule_ns
from cnnserve.bench.load_options import DEFAULT_MAX_IN_FLIGHT
from cnnserve.bench.senders import RequestFailed, make_sender


@dataclass(frozen=True)
class LoadSpec:
    target: str
    protocol: str
    model: str
    input_shape: tuple[int, ...]  # one image, without the batch dimension
    images_per_request: int
    timeout_s: float = 30.0
    channels: int = 1  # in this process
    streaming: bool = False  # V2 ModelStreamInfer instead of unary ModelInfer


@dataclass(frozen=True)
class Level:
    """One load level: `concurrency` closed-loop callers, or open-loop arrivals at `rate_per_s`."""

    concurrency: int | None = None
    rate_per_s: float | None = None
    arrivals: str = "constant"
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate_per_s is None):
            raise ValueError("a level has either a concurrency or a request rate")

    @property
    def open_loop(self) -> bool:
        return self.rate_per_s is not None

    @property
    def label(self) -> str:
        if self.rate_per_s is not None:
            return f"{self.arrivals} rate {self.rate_per_s:g}/s"
        return f"concurrency {self.concurrency}"

    def share(self, parts: int) -> list[Level]:
        """This level spread over `parts` processes (fewer when there are fewer callers)."""
        if self.concurrency is not None:
            return [Level(concurrency=c) for c in split(self.concurrency, parts)]
        assert self.rate_per_s is not None
        return [Level(rate_per_s=self.rate_per_s / parts, arrivals=self.arrivals,
                      max_in_flight=self.max_in_flight)] * parts  # fmt: skip


@dataclass(frozen=True)
class Window:
    start_ns: int
    end_ns: int

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True)
class LoadResult:
    latencies_ns: np.ndarray  # one per counted request (see the module docstring)
    errors: int  # failed counted requests
    first_error: str
    late_start_ns: int  # closed loop: how long after the window start the slowest caller got going
    # CPU time of the busiest client process's event-loop thread over the window, in % of the
    # window (100: that thread never waited, so the client, not the server, set the pace).
    loop_busy_pct: float | None = None
    cpu_pct: float | None = None  # all client processes' CPU time over the window, % of one core
    answered_in_window: int = 0  # successful answers received inside the window
    send_ns: int = 0  # request serialization inside the window, summed, and how many
    sends: int = 0
    recv_ns: int = 0  # response parsing inside the window, summed, and how many
    recvs: int = 0
    send_lag_ns: np.ndarray | None = None  # open loop: actual send − scheduled time, per request
    max_in_flight: int = 0  # open loop: the most requests outstanding at once (summed over processes)
    channels: int = 1  # summed over processes

    @staticmethod
    def merge(parts: list[LoadResult]) -> LoadResult:
        errors = [p.first_error for p in parts if p.first_error]
        busy = [p.loop_busy_pct for p in parts if p.loop_busy_pct is not None]
        cpu = [p.cpu_pct for p in parts if p.cpu_pct is not None]
        lags = [p.send_lag_ns for p in parts if p.send_lag_ns is not None]
        return LoadResult(
            np.concatenate([p.latencies_ns for p in parts]) if parts else np.empty(0, np.int64),
            sum(p.errors for p in parts),
            errors[0] if errors else "",
            max((p.late_start_ns for p in parts), default=0),
            max(busy, default=None),
            sum(cpu) if cpu else None,
            answered_in_window=sum(p.answered_in_window for p in parts),
            send_ns=sum(p.send_ns for p in parts),
            sends=sum(p.sends for p in parts),
            recv_ns=sum(p.recv_ns for p in parts),
            recvs=sum(p.recvs for p in parts),
            send_lag_ns=np.concatenate(lags) if lags else None,
            max_in_flight=sum(p.max_in_flight for p in parts),
            channels=sum(p.channels for p in parts),
        )


def describe(error) -> str:
    """'CODE: details' for a grpc.aio.AioRpcError."""
    return f"{error.code().name}: {error.details()}"


@dataclass
class _Tally:
    """What one process counted; merged into a LoadResult at the end."""

    latencies: list[int]
    lags: list[int]
    errors: int = 0
    first_error: str = ""
    answered_in_window: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    def failed(self, error: RequestFailed) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = str(error)


async def run_level(spec: LoadSpec, level: Level, window: Window, seed: int = 0, phase: float = 0.0
                    ) -> LoadResult:  # fmt: skip
    """Runs one level in this process until the window closes; returns what happened inside it."""
    images = np.random.default_rng(0).integers(
        0, 256, (spec.images_per_request, *spec.input_shape), dtype=np.uint8
    )
    request = protocol_adapter.infer_request(spec.protocol, spec.model, images)
    clock = protocol_adapter.CodecClock()
    tally = _Tally([], [])
    channel_count = spec.channels if level.open_loop else min(spec.channels, level.concurrency or 1)
    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(protocol_adapter.open_channel(spec.target))
            for _ in range(channel_count)
        ]
        senders = [
            make_sender(c, spec.protocol, request, spec.timeout_s, spec.streaming, clock) for c in channels
        ]
        cpu = asyncio.ensure_future(_cpu_over(window, clock))
        try:
            if level.open_loop:
                late = await _open_loop(senders, level, window, tally, seed, phase)
            else:
                late = await _closed_loop(senders, level.concurrency or 1, window, tally)
            await asyncio.gather(*(s.close() for s in senders))
        except BaseException:  # cancelled, or a caller failed: the CPU reading is not wanted
            cpu.cancel()
            raise
        loop_busy_pct, cpu_pct, codec = await cpu
    return LoadResult(
        np.asarray(tally.latencies, np.int64), tally.errors, tally.first_error, late, loop_busy_pct, cpu_pct,
        answered_in_window=tally.answered_in_window, send_ns=codec[0], sends=codec[1], recv_ns=codec[2],
        recvs=codec[3], send_lag_ns=np.asarray(tally.lags, np.int64) if level.open_loop else None,
        max_in_flight=tally.max_in_flight, channels=channel_count,
    )  # fmt: skip


async def _closed_loop(senders: list, concurrency: int, window: Window, tally: _Tally) -> int:
    first_start = [window.end_ns]

    async def caller(sender) -> None:
        while True:
            started = time.monotonic_ns()
            if started >= window.end_ns:
                return
            failure = None
            try:
                await sender.send()
            except RequestFailed as error:
                failure = error
            finished = time.monotonic_ns()
            if started >= window.start_ns and finished <= window.end_ns:
                first_start[0] = min(first_start[0], started)
                if failure is not None:
                    tally.failed(failure)
                else:
                    tally.latencies.append(finished - started)
                    tally.answered_in_window += 1
            if failure is not None and finished < window.end_ns:
                await asyncio.sleep(0.001)  # a failing server must not be hammered in a spin

    await asyncio.gather(*(caller(senders[i % len(senders)]) for i in range(concurrency)))
    return max(0, first_start[0] - window.start_ns) if tally.latencies or tally.errors else 0


async def _open_loop(senders: list, level: Level, window: Window, tally: _Tally, seed: int, phase: float
                     ) -> int:  # fmt: skip
    assert level.rate_per_s is not None
    slots = asyncio.Semaphore(level.max_in_flight)
    # Strong references: the event loop keeps only weak ones to running tasks.
    tasks: set[asyncio.Task[None]] = set()

    async def one(sender, scheduled_ns: int) -> None:
        sent = time.monotonic_ns()
        tally.in_flight += 1
        tally.max_in_flight = max(tally.max_in_flight, tally.in_flight)
        failure = None
        try:
            await sender.send()
        except RequestFailed as error:
            failure = error
        finally:
            tally.in_flight -= 1
            slots.release()
        finished = time.monotonic_ns()
        if failure is None and window.start_ns <= finished <= window.end_ns:
            tally.answered_in_window += 1
        if window.start_ns <= scheduled_ns < window.end_ns:
            if failure is not None:
                tally.failed(failure)
            else:
                tally.latencies.append(finished - scheduled_ns)
                tally.lags.append(sent - scheduled_ns)

    times = schedule_ns(level.rate_per_s, level.arrivals, time.monotonic_ns(), window.end_ns, seed, phase)
    for index, scheduled_ns in enumerate(times):
        await _sleep_until(scheduled_ns)
        await slots.acquire()
        task = asyncio.create_task(one(senders[index % len(senders)], scheduled_ns))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return 0


async def _sleep_until(deadline_ns: int) -> None:
    delay_ns = deadline_ns - time.monotonic_ns()
    if delay_ns > 0:
        await asyncio.sleep(delay_ns / 1e9)


async def _cpu_over(window: Window, clock: protocol_adapter.CodecClock):
    """Between the window's edges: CPU time in % of the wall time (this event-loop thread, the
    process) and the codec clock's (send_ns, sends, recv_ns, recvs)."""
    await _sleep_until(window.start_ns)
    wall, thread, process = time.monotonic_ns(), time.thread_time_ns(), time.process_time_ns()
    codec_before = clock.snapshot()
    await _sleep_until(window.end_ns)
    elapsed = time.monotonic_ns() - wall
    codec = tuple(b - a for a, b in zip(codec_before, clock.snapshot(), strict=True))
    if elapsed <= 0:
        return None, None, codec
    thread_pct = 100.0 * (time.thread_time_ns() - thread) / elapsed
    process_pct = 100.0 * (time.process_time_ns() - process) / elapsed
    return thread_pct, process_pct, codec


def _level_process(spec: LoadSpec, level: Level, window: Window, seed: int, phase: float) -> LoadResult:
    return asyncio.run(run_level(spec, level, window, seed, phase))


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

    async def run(self, spec: LoadSpec, level: Level, window: Window) -> LoadResult:
        """`level` over the pool's processes, each with its share of `spec.channels` channels."""
        if self._executor is None:
            return await run_level(spec, level, window)
        shares = level.share(self.processes)
        channels = split(max(spec.channels, len(shares)), len(shares))
        loop = asyncio.get_running_loop()
        jobs = [
            (replace(spec, channels=channels[i]), share, window, i, i / len(shares))
            for i, share in enumerate(shares)
        ]
        runs = [loop.run_in_executor(self._executor, _level_process, *job) for job in jobs]
        parts = await asyncio.gather(*runs)
        return LoadResult.merge(list(parts))
