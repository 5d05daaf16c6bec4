"""bench/serve_process.py, the one way the bench scripts start and stop a server, and
bench/protocols.py run through it on a no-op model (its real figures are in BENCHMARKS.md)."""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from cnnserve.bench.serve_process import ServerProcess, free_port, start_cnnserve
from cnnserve.protos import classifier_pb2 as pb

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import protocols  # noqa: E402


def test_cnnserve_on_port_0_answers_on_both_published_ports_and_stops_cleanly(noop_repository, tmp_path):
    server, ports = start_cnnserve(
        ["--repository", str(noop_repository), "--models", "noop", "--host", "127.0.0.1", "--port", "0",
         "--http-port", "0", "--metrics-port", "off", "--cpu-threads", "1"],
        tmp_path,
    )  # fmt: skip
    try:
        assert ports.grpc_port > 0 and ports.http_port and ports.metrics_port is None
        with urllib.request.urlopen(f"{ports.http_base}/v2/health/ready", timeout=10) as response:
            assert response.status == 200
        with grpc.insecure_channel(ports.grpc_target) as channel:
            listed = channel.unary_unary(
                "/cnnserve.v1.Classifier/ListModels",
                request_serializer=pb.ListModelsRequest.SerializeToString,
                response_deserializer=pb.ListModelsResponse.FromString,
            )(pb.ListModelsRequest(), timeout=10)
        assert [model.name for model in listed.models] == ["noop"]
    finally:
        code = server.stop()
    assert code == 0, server.log_tail()
    assert not server.alive() and server.stop() == 0  # stopping again only reports the code


def test_a_server_that_exits_before_ready_is_one_error_with_its_log(tmp_path):
    missing = tmp_path / "no-such-repository"
    with pytest.raises(SystemExit) as failure:
        start_cnnserve(["--repository", str(missing), "--port", "0", "--metrics-port", "off"], tmp_path)
    message = str(failure.value)
    assert message.startswith("cnnserve exited before it was ready; its log")
    assert str(missing) in message  # the server's own one-line error, from the log tail


def _gone(pid: int) -> bool:
    """No such process, or a zombie no one has reaped yet (it has stopped running either way)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_a_peer_in_its_own_session_is_stopped_with_its_children(tmp_path):
    # A child that does not hear its parent's death: only SIGTERM to the group stops it too.
    child = "import time; time.sleep(600)"
    parent = (
        "import subprocess, sys, time; "
        f"print(subprocess.Popen([sys.executable, '-c', {child!r}]).pid, flush=True); time.sleep(600)"
    )
    peer = ServerProcess("peer", [sys.executable, "-c", parent], tmp_path / "peer.log", own_session=True)
    peer.start()
    deadline = time.monotonic() + 30
    while not peer.log_tail().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    child_pid = int(peer.log_tail())
    assert peer.alive() and not _gone(child_pid)
    assert peer.stop(timeout_s=30) == -signal.SIGTERM
    while not _gone(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child_pid)


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def test_protocols_measures_grpc_http_and_decoding_on_a_noop_model(noop_repository, tmp_path):
    out = tmp_path / "protocols.json"
    model = noop_repository / "noop" / "1" / "model.onnx"
    assert protocols.main(["--model-file", str(model), "--seconds", "0.3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["protocols"]) == {"grpc_c1", "http_c1", "grpc_c16", "http_c16"}
    assert set(result["decoding"]) == {"alone", "beside_4_png_clients", "png_1024x1024_requests"}
    for section in (*result["protocols"].values(), *result["decoding"].values()):
        assert section["requests"] > 0
