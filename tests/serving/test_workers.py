"""`cnnserve serve --workers 2`: one port, two server processes, one supervisor, one set of statistics.

Load comes from 32 closed-loop clients, each on its own TCP connection (a local subchannel
pool), so SO_REUSEPORT spreads the connections over both workers as it would for real clients.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from urllib.request import urlopen

import grpc
import pytest
import tritonclient.grpc as triton
from conftest import ServerProcess
from grpc_health.v1 import health_pb2
from load_loops import OWN_CONNECTION, ClosedLoops, raw_unary
from onnx_models import cnn_model, images, write_model
from prometheus_client.parser import text_string_to_metric_families
from test_shutdown_under_load import SERVED, signal_until_exit, wait_for_load

from cnnserve.protos import classifier_pb2 as pb
from cnnserve.serving.converters import encode_tensor

LOOPS = 32
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def one_model(tmp_path: Path) -> Path:
    repository = tmp_path / "models"
    write_model(repository, "cnn", cnn_model(seed=1), max_batch_size=8)
    return repository


def predict(model: str = "cnn") -> bytes:
    return pb.PredictRequest(model_name=model, images=encode_tensor(images(1, seed=3))).SerializeToString()


def workers_of(server: ServerProcess) -> list[int]:
    assert server.process is not None
    pid = server.process.pid
    children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    # multiprocessing also starts a resource tracker; the workers are the spawned interpreters
    return sorted(c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes())


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def metric_total(server: ServerProcess, name: str) -> float:
    """The sum of metric `name` over its samples in the supervisor's /metrics."""
    with urlopen(server.metrics_url, timeout=10) as response:
        families = text_string_to_metric_families(response.read().decode())
    return sum(s.value for f in families for s in f.samples if s.name == name)


def test_two_workers_share_the_load_and_report_one_server(one_model: Path, start_server) -> None:
    server = start_server("--workers", "2", models_dir=one_model)
    workers = workers_of(server)
    assert len(workers) == 2
    ticks_before = [cpu_ticks(pid) for pid in workers]
    loops = ClosedLoops(server.target, raw_unary("/cnnserve.v1.Classifier/Predict", predict()), LOOPS).start()
    try:
        wait_for_load(loops, each=20)
    finally:
        loops.stop()
    assert set(loops.codes) == {grpc.StatusCode.OK}
    ticks = [cpu_ticks(pid) - before for pid, before in zip(workers, ticks_before, strict=True)]
    assert min(ticks) > 0.2 * max(ticks), ticks  # both processes did a real share of the work

    served = loops.codes[grpc.StatusCode.OK]
    client = triton.InferenceServerClient(server.target)
    stats = client.get_inference_statistics("cnn", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) == served  # both workers' counts, not one worker's
    assert int(stats["inference_stats"]["success"]["count"]) == served
    assert metric_total(server, "nv_inference_count_total") == served  # the supervisor's: the same sum
    assert metric_total(server, "cnnserve_model_instances") == 2  # one session in each worker
    started = f"starting 2 workers on {server.target} (1 intra-op thread(s) per model instance;"
    assert started in server.log()  # the test servers' --cpu-threads 1
    assert client.is_server_ready()


def health_statuses_until_ready_again(server: ServerProcess, timeout_s: float = 60) -> list[int]:
    """Health checks (each on a new connection, so any worker may answer) until the server has
    been seen NOT_SERVING and then SERVING again."""
    check = health_pb2.HealthCheckRequest().SerializeToString()
    statuses: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with grpc.insecure_channel(server.target, options=OWN_CONNECTION) as channel:
            try:
                answer = channel.unary_unary("/grpc.health.v1.Health/Check")(check, timeout=5)
            except grpc.RpcError:  # reached the dying worker's connection
                continue
        statuses.append(health_pb2.HealthCheckResponse.FromString(answer).status)
        if NOT_SERVING in statuses and statuses[-1] == SERVING:
            break
        time.sleep(0.02)
    return statuses


def test_a_dead_worker_is_restarted_while_the_other_keeps_serving(one_model: Path, start_server) -> None:
    server = start_server("--workers", "2", models_dir=one_model)
    victim, survivor = workers_of(server)
    loops = ClosedLoops(server.target, raw_unary("/cnnserve.v1.Classifier/Predict", predict()), LOOPS).start()
    try:
        wait_for_load(loops)
        os.kill(victim, signal.SIGKILL)
        statuses = health_statuses_until_ready_again(server)
        served_during = sum(loops.ok_per_loop)
        time.sleep(0.5)
        assert sum(loops.ok_per_loop) > served_during  # traffic flows again
    finally:
        loops.stop()
    assert NOT_SERVING in statuses  # not ready while one was down
    assert statuses[-1] == SERVING  # ready again once restarted
    assert set(loops.codes) <= SERVED, loops.details.most_common(3)
    new_workers = workers_of(server)
    assert survivor in new_workers and victim not in new_workers and len(new_workers) == 2
    assert "worker 0" in server.log() or "worker 1" in server.log()
    assert "restarting it" in server.log()


def test_sigterm_drains_every_worker_without_a_cancelled_call(one_model: Path, start_server) -> None:
    server = start_server("--workers", "2", "--grace-s", "60", models_dir=one_model)
    workers = workers_of(server)
    loops = ClosedLoops(server.target, raw_unary("/cnnserve.v1.Classifier/Predict", predict()), LOOPS).start()
    try:
        wait_for_load(loops)
        assert signal_until_exit(server, signal.SIGTERM, repeat=True) == 0, server.log()
    finally:
        loops.stop()
    assert set(loops.codes) <= SERVED, (loops.codes, loops.details.most_common(3))
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    assert "Traceback" not in server.log()


def ready_on_every_connection(
    server: ServerProcess, model: str, connections: int = 16, version: str = ""
) -> set[bool]:
    """ModelReady asked over many connections, so every worker answers some of them."""
    answers = set()
    for _ in range(connections):
        client = triton.InferenceServerClient(server.target, channel_args=OWN_CONNECTION)
        answers.add(client.is_model_ready(model, version))
        client.close()
    return answers


def test_explicit_load_and_unload_reach_every_worker(one_model: Path, start_server) -> None:
    server = start_server("--workers", "2", "--model-control", "explicit", models_dir=one_model)
    assert ready_on_every_connection(server, "cnn") == {False}
    triton.InferenceServerClient(server.target).load_model("cnn")
    assert ready_on_every_connection(server, "cnn") == {True}
    triton.InferenceServerClient(server.target).unload_model("cnn")
    assert ready_on_every_connection(server, "cnn") == {False}


@pytest.mark.parametrize("interval_s", [2.0, 0.3])
def test_workers_polling_the_repository_wake_on_the_same_wall_clock_tick(interval_s: float) -> None:
    """Workers that started, scanned or were restarted at different moments wake for their next
    rescan at the same instant: the next multiple of the interval, never more than one away."""
    from cnnserve.serving.lifecycle import until_next_tick

    tick = 1_780_000_000 * interval_s  # a wall-clock moment on the interval's grid
    wakes = set()
    for offset in (0.0, 0.001, interval_s / 3, interval_s * 0.999):  # where each process is now
        now = tick + offset
        wait = until_next_tick(now, interval_s)
        assert 0 < wait <= interval_s
        wakes.add(round(now + wait, 6))
    assert wakes == {round(tick + interval_s, 6)}


def test_a_polled_new_version_goes_live_in_every_worker(one_model: Path, start_server) -> None:
    """A version committed into the polled repository is loaded by each worker (one start-up line
    each) and then ready on every connection."""
    from test_lifecycle import commit_version

    server = start_server("--workers", "2", "--poll-interval-s", "0.3", models_dir=one_model)
    assert ready_on_every_connection(server, "cnn", version="2") == {False}
    commit_version(one_model, "cnn", 2, cnn_model(seed=2).SerializeToString())
    deadline = time.monotonic() + 60
    while server.log().count("loaded cnn version 2 ") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.log().count("loaded cnn version 2 ") == 2, server.log()
    assert ready_on_every_connection(server, "cnn", version="2") == {True}
