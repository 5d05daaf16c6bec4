"""The load generator and sweep against a real `cnnserve serve` on port 0 (short windows)."""

import asyncio
import os

import numpy as np
import pytest

from cnnserve.bench.load_generator import LoadResult, split
from cnnserve.bench.server_bench import ServerPlan, run_server_bench, served_flops
from cnnserve.contracts.errors import CnnserveError
from tests.bench.conftest import PRICED_FLOPS


def _plan(target: str, **overrides) -> ServerPlan:
    settings = dict(target=target, model="tiny", protocol="v2", concurrency=(1, 3), duration_s=0.6,
                    warmup_s=0.3, noop_model="noop")  # fmt: skip
    return ServerPlan(**{**settings, **overrides})


@pytest.mark.parametrize("protocol", ["v2", "cnnserve"])
def test_sweep_measures_model_and_noop_with_server_split(server, protocol):
    records = asyncio.run(run_server_bench(_plan(server.target, protocol=protocol))).records
    assert [(r.model, r.concurrency, r.noop) for r in records] == [
        ("tiny", 1, False), ("tiny", 3, False), ("noop", 1, True), ("noop", 3, True),
    ]  # fmt: skip
    for record in records:
        assert record.protocol == protocol and record.backend == f"server:{protocol}"
        assert record.requests > 0 and record.errors == 0
        assert record.device == "cpu"
        assert record.requests_per_s == pytest.approx(record.requests / record.window_s)
        assert record.p50_ms <= record.p95_ms <= record.p99_ms
        # The server saw (about) the requests the client counted, and split their time.
        assert record.server_queue_us is not None and record.server_compute_infer_us is not None
        assert record.server_total_us >= record.server_compute_infer_us
        # The client loop's own CPU time over the window: measured, and a share of the window.
        assert 0 < record.client_loop_busy_pct <= 105
        assert record.client_loop_busy_pct <= record.client_cpu_pct + 1  # the loop is part of the process


def test_the_servers_cpu_is_read_over_each_window_when_its_pid_is_given(server):
    plan = _plan(server.target, concurrency=(2,), noop_model=None, server_pid=server.process.pid)
    (record,) = asyncio.run(run_server_bench(plan)).records
    assert record.requests > 0 and record.errors == 0
    cores = os.cpu_count() or 1
    assert 0 < record.server_cpu_pct <= 100 * cores + 5
    per_request = 1e4 * record.server_cpu_pct / record.requests_per_s
    assert record.server_cpu_us_per_request == pytest.approx(per_request)
    # A Python gRPC server cannot answer a request for under 20 µs of CPU, nor spend a second on one.
    assert 20 < record.server_cpu_us_per_request < 1e6
    assert 0 <= record.machine_idle_pct <= 100
    (unread,) = asyncio.run(run_server_bench(_plan(server.target, concurrency=(1,), noop_model=None))).records
    assert unread.server_cpu_pct is None and unread.server_cpu_us_per_request is None


def test_several_client_processes(server):
    plan = _plan(server.target, concurrency=(4,), noop_model=None, client_processes=2, images_per_request=3)
    (record,) = asyncio.run(run_server_bench(plan)).records
    assert record.requests > 0 and record.errors == 0 and record.client_processes == 2
    assert record.images_per_s == pytest.approx(3 * record.requests_per_s)
    assert 0 < record.client_loop_busy_pct <= 105  # the busier of the two processes' loops


def test_unknown_model_on_the_server(server):
    with pytest.raises(CnnserveError, match="model 'nope': NOT_FOUND"):
        asyncio.run(run_server_bench(_plan(server.target, model="nope")))


def test_flops_come_from_the_server_when_the_export_recorded_them(server):
    assert asyncio.run(served_flops(_plan(server.target, model="priced"))) == PRICED_FLOPS
    assert asyncio.run(served_flops(_plan(server.target, model="tiny"))) is None
    with pytest.raises(CnnserveError, match="model 'nope': NOT_FOUND"):
        asyncio.run(served_flops(_plan(server.target, model="nope")))
    (record,) = asyncio.run(
        run_server_bench(_plan(server.target, model="priced", concurrency=(1,), noop_model=None),
                         flops_for=lambda model: PRICED_FLOPS)
    ).records  # fmt: skip
    assert record.gflops == pytest.approx(record.images_per_s * PRICED_FLOPS / 1e9)


def test_unreachable_target(closed_port):
    plan = _plan(f"127.0.0.1:{closed_port}", connect_timeout_s=0.5)
    with pytest.raises(CnnserveError, match=f"cannot reach 127.0.0.1:{closed_port} within 0.5 s"):
        asyncio.run(run_server_bench(plan))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"protocol": "http"}, "unknown --protocol 'http'"),
        ({"concurrency": (0, 4)}, "--concurrency takes positive integers"),
        ({"images_per_request": 0}, "--images-per-request must be >= 1"),
        ({"target": "localhost"}, "--target must be HOST:PORT"),
    ],
)
def test_invalid_plans(overrides, message):
    with pytest.raises(CnnserveError, match=message):
        _plan(overrides.pop("target", "127.0.0.1:1"), **overrides)


def test_split_spreads_callers_evenly():
    assert split(10, 3) == [4, 3, 3]
    assert split(2, 4) == [1, 1]
    assert sum(split(64, 5)) == 64


def test_merge_results():
    a = LoadResult(np.array([1, 2], np.int64), 0, "", 5, 30.0, 40.0)
    b = LoadResult(np.array([3], np.int64), 2, "UNAVAILABLE: full", 9, 85.0, 95.0)
    merged = LoadResult.merge([a, b])
    assert merged.latencies_ns.tolist() == [1, 2, 3]
    assert merged.errors == 2 and merged.first_error == "UNAVAILABLE: full" and merged.late_start_ns == 9
    assert merged.loop_busy_pct == 85.0 and merged.cpu_pct == 135.0  # busiest loop; all processes
