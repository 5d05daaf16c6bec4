"""Open-loop load, streaming and several connections, against a real `cnnserve serve` on port 0.

The open-loop checks rest on what the server guarantees, not on how fast this machine is: the
`delayed` model holds a batch that is not full for DELAYED_QUEUE_MS, so a request alone in the
server takes at least that long, and only gets slower on a busy machine.
"""

import asyncio
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from cnnserve.bench import protocol_adapter
from cnnserve.bench.arrivals import schedule_ns
from cnnserve.bench.load_generator import Level, LoadSpec, Window, run_level
from cnnserve.bench.server_bench import ServerPlan, run_server_bench
from cnnserve.contracts.errors import CnnserveError
from tests.bench.conftest import DELAYED_QUEUE_MS, IMAGE_SHAPE


def _plan(target: str, **overrides) -> ServerPlan:
    settings = dict(target=target, model="tiny", protocol="v2", duration_s=0.6, warmup_s=0.2, noop_model=None)
    return ServerPlan(**{**settings, **overrides})


def test_constant_schedule_is_exact_and_phases_interleave():
    one = list(schedule_ns(1000.0, "constant", 0, 10_000_000))
    assert one == [i * 1_000_000 for i in range(10)]
    # Two processes at half the rate with phases 0 and 1/2 make the same even stream.
    halves = sorted([*schedule_ns(500.0, "constant", 0, 10_000_000, phase=0.0),
                     *schedule_ns(500.0, "constant", 0, 10_000_000, phase=0.5)])  # fmt: skip
    assert halves == one


def test_poisson_schedule_has_the_rate_and_exponential_gaps():
    times = np.fromiter(schedule_ns(1000.0, "poisson", 0, 20_000_000_000, seed=3), np.int64)
    assert len(times) == pytest.approx(20_000, rel=0.03)
    gaps = np.diff(times) / 1e6
    assert gaps.mean() == pytest.approx(1.0, rel=0.03)
    assert gaps.std() == pytest.approx(1.0, rel=0.05)  # exponential: std == mean; constant: 0
    seeded = [list(schedule_ns(1000.0, "poisson", 0, 10**9, seed=seed)) for seed in (3, 4)]
    assert seeded[0] != seeded[1]  # each client process draws its own arrivals


def test_open_loop_latency_counts_the_queueing_a_closed_loop_hides(server):
    """One request in flight at a time (--max-in-flight 1) against a server that takes at least
    DELAYED_QUEUE_MS per lone request, offered 2.5 times faster than that: the sender falls
    further behind with every request, and each latency counts its wait from the schedule."""
    gap_ms = DELAYED_QUEUE_MS / 2.5
    rate = 1000.0 / gap_ms
    (closed,) = asyncio.run(run_server_bench(_plan(server.target, model="delayed", concurrency=(1,)))).records
    (opened,) = asyncio.run(
        run_server_bench(_plan(server.target, model="delayed", request_rates=(rate,), max_in_flight=1))
    ).records
    assert closed.p50_ms >= DELAYED_QUEUE_MS  # the closed loop sees the server's time, nothing more
    # Every request scheduled inside the window is counted, the late ones too (none is omitted).
    scheduled = opened.window_s * rate
    assert opened.errors == 0 and abs(opened.requests - scheduled) <= 1
    assert opened.open_loop and opened.request_rate == rate and opened.arrivals == "constant"
    assert opened.concurrency is None and opened.max_in_flight == 1
    # Request k of the level (from its start) cannot leave before k earlier ones took
    # DELAYED_QUEUE_MS each, and was due at k·gap: it waited at least k·(DELAYED_QUEUE_MS − gap).
    first_counted = int(0.2 * 1000 / gap_ms)  # the warm-up's requests come first
    min_wait_ms = first_counted * (DELAYED_QUEUE_MS - gap_ms)
    assert opened.send_lag_p99_ms >= min_wait_ms
    assert opened.p50_ms >= min_wait_ms + DELAYED_QUEUE_MS
    assert opened.p50_ms > 2 * closed.p50_ms  # ≥ 4.8× by the bound above; 2× leaves room


def test_open_loop_below_capacity_sends_on_time_and_the_server_saw_every_answer(server):
    (record,) = asyncio.run(
        run_server_bench(_plan(server.target, request_rates=(100.0,), arrivals="poisson", channels=3))
    ).records
    assert record.errors == 0 and record.requests > 0 and record.arrivals == "poisson"
    assert record.channels == 3  # an open loop uses every channel it is given
    assert record.server_total_us is not None and record.server_compute_infer_us is not None
    assert record.client_send_us is not None and record.client_send_us > 0
    assert record.client_recv_us is not None and record.client_recv_us > 0


@pytest.mark.parametrize("open_loop", [False, True])
def test_streaming_requests_are_answered_and_matched(server, open_loop):
    level = {"request_rates": (200.0,)} if open_loop else {"concurrency": (4,)}
    (record,) = asyncio.run(
        run_server_bench(_plan(server.target, streaming=True, channels=2, **level))
    ).records
    assert record.streaming and record.errors == 0 and record.requests > 0
    assert record.channels == 2
    assert record.server_total_us is not None  # the server counted the stream's requests


def test_streaming_needs_v2():
    with pytest.raises(CnnserveError, match="--streaming is V2's ModelStreamInfer"):
        _plan("127.0.0.1:1", protocol="cnnserve", streaming=True, concurrency=(1,))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"concurrency": (1,), "request_rates": (10.0,)}, "not both"),
        ({"request_rates": (0.0,)}, "--request-rate takes requests per second > 0"),
        ({"request_rates": (5.0,), "arrivals": "bursty"}, "unknown --arrivals 'bursty'"),
        ({"concurrency": (1,), "channels": 0}, "--channels must be >= 1"),
        ({"request_rates": (5.0,), "max_in_flight": 0}, "--max-in-flight must be >= 1"),
    ],
)
def test_invalid_open_loop_plans(overrides, message):
    with pytest.raises(CnnserveError, match=message):
        _plan("127.0.0.1:1", **overrides)


def _connections_to(port: int) -> int:
    """ESTABLISHED TCP connections from this process to `port` (/proc/net/tcp and tcp6)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # gRPC may use v4-mapped IPv6 sockets
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


@pytest.mark.parametrize(("own_connection", "expected"), [(True, 3), (False, 1)])
def test_each_channel_is_its_own_connection(server, own_connection, expected):
    """gRPC's global subchannel pool puts channels to one target on one connection, which a
    multi-worker server behind one port would see as one client on one worker."""

    async def open_and_call() -> int:
        channels = [protocol_adapter.open_channel(server.target, own_connection) for _ in range(3)]
        try:
            for channel in channels:
                await protocol_adapter.model_info(channel, "tiny", 10.0)
            return _connections_to(server.port)
        finally:
            for channel in channels:
                await channel.close()

    assert asyncio.run(open_and_call()) == expected


def test_closed_loop_spreads_callers_over_channels(server):
    spec = LoadSpec(server.target, "v2", "tiny", IMAGE_SHAPE, 1, channels=4)

    async def run(concurrency: int):
        now = time.monotonic_ns()
        window = Window(now + 200_000_000, now + 600_000_000)
        return await run_level(spec, Level(concurrency=concurrency), window)

    assert asyncio.run(run(6)).channels == 4
    assert asyncio.run(run(2)).channels == 2  # never more connections than callers


def test_a_server_that_goes_away_mid_sweep_ends_it_with_what_was_measured(noop_repository, tmp_path):
    from tests.serving.conftest import ServerProcess

    server = ServerProcess(noop_repository, tmp_path, "--grace-s", "2").start()

    class SignalAfterFirstLevel:
        def start(self, total: int) -> None: ...

        def step(self, description: str) -> None: ...

        def advance(self) -> None:
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)

    try:
        plan = _plan(server.target, concurrency=(2, 2, 2), duration_s=0.4, request_timeout_s=10.0)
        sweep = asyncio.run(run_server_bench(plan, progress=SignalAfterFirstLevel()))
        assert server.stop() == 0
    finally:
        server.kill()
    assert len(sweep.records) == 1 and sweep.records[0].errors == 0
    assert sweep.stopped.startswith("the server went away at tiny concurrency 2 (UNAVAILABLE")
