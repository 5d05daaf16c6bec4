"""Signals under real load: 32 closed-loop clients, each on its own connection, and open streams.

Every call a client sent must end OK or UNAVAILABLE — never CANCELLED — and the server must exit
0 before its grace period, however many signals arrive. These are the scenarios that a queue of
calls on one channel (test_shutdown.py) cannot reproduce: calls in flight on many connections at
the moment the server stops.
"""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc.service_pb2 as triton_pb
from conftest import ServerProcess
from load_loops import OWN_CONNECTION, ClosedLoops, raw_unary
from onnx_models import images

from cnnserve.protos import classifier_pb2 as pb
from cnnserve.serving.converters import encode_tensor
from tests.child_processes import module_command

LOOPS = 32
SERVED = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}


def predict_bytes() -> bytes:
    return pb.PredictRequest(model_name="cnn", images=encode_tensor(images(1, seed=3))).SerializeToString()


def v2_request(batch_seed: int = 4) -> triton_pb.ModelInferRequest:
    batch = images(1, seed=batch_seed)
    request = triton_pb.ModelInferRequest(model_name="cnn")
    tensor = request.inputs.add(name="images", datatype="UINT8", shape=list(batch.shape))
    assert tensor is not None
    request.raw_input_contents.append(batch.tobytes())
    return request


def wait_for_load(loops: ClosedLoops, each: int = 3, timeout_s: float = 60) -> None:
    """Until every loop has been served a few times: all 32 connections are open and busy."""
    deadline = time.monotonic() + timeout_s
    while min(loops.ok_per_loop) < each:
        assert time.monotonic() < deadline, f"load never reached every loop: {loops.ok_per_loop}"
        time.sleep(0.02)


def signal_until_exit(server: ServerProcess, signum: int, repeat: bool, timeout_s: float = 30) -> int:
    """Send `signum` (again every 20 ms if `repeat`) until the server exits; its exit code."""
    assert server.process is not None
    server.process.send_signal(signum)
    deadline = time.monotonic() + timeout_s
    while server.process.poll() is None:
        assert time.monotonic() < deadline, "server did not exit"
        if repeat:
            server.process.send_signal(signum)
        time.sleep(0.02)
    return server.process.returncode


@pytest.mark.parametrize(
    ("method", "request_bytes", "signum", "repeat"),
    [
        ("/cnnserve.v1.Classifier/Predict", predict_bytes, signal.SIGTERM, True),
        (
            "/inference.GRPCInferenceService/ModelInfer",
            lambda: v2_request().SerializeToString(),
            signal.SIGINT,
            False,
        ),
    ],
    ids=["classifier-sigterm-repeated", "v2-sigint"],
)
def test_no_call_is_cancelled_when_the_server_stops_under_load(
    start_server, method: str, request_bytes, signum: int, repeat: bool
) -> None:
    server = start_server("--models", "cnn", "--grace-s", "60")
    loops = ClosedLoops(server.target, raw_unary(method, request_bytes()), LOOPS).start()
    try:
        wait_for_load(loops)
        served_before = sum(loops.ok_per_loop)
        assert signal_until_exit(server, signum, repeat) == 0, server.log()
    finally:
        loops.stop()
    assert set(loops.codes) <= SERVED, (loops.codes, loops.details.most_common(5))
    assert loops.codes[grpc.StatusCode.OK] + loops.codes[grpc.StatusCode.UNAVAILABLE] == loops.sent
    assert loops.codes[grpc.StatusCode.OK] >= served_before > 0
    log = server.log()
    assert "Traceback" not in log, log
    assert "stopped" in log


class StreamClient:
    """One ModelStreamInfer stream on gRPC's threaded client (as tritonclient's streams are):
    sends the next request after each answer, or idles."""

    def __init__(self, target: str, idle: bool) -> None:
        self.target = target
        self.idle = idle
        self.sent = 0
        self.answered = 0
        self.errors: list[str] = []
        self.status: grpc.StatusCode | None = None
        self.details = ""
        self.started = threading.Event()
        self._requests: queue.Queue[triton_pb.ModelInferRequest | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> StreamClient:
        self._thread.start()
        return self

    def join(self, timeout_s: float) -> None:
        self._requests.put(None)
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "stream client did not finish"

    def _send(self) -> None:
        self._requests.put(v2_request(self.sent))
        self.sent += 1

    def _outgoing(self) -> Iterator[triton_pb.ModelInferRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def _run(self) -> None:
        with grpc.insecure_channel(self.target, options=OWN_CONNECTION) as channel:
            call = channel.stream_stream(
                "/inference.GRPCInferenceService/ModelStreamInfer",
                request_serializer=triton_pb.ModelInferRequest.SerializeToString,
                response_deserializer=triton_pb.ModelStreamInferResponse.FromString,
            )
            if self.idle:
                self.started.set()
            else:
                self._send()
            try:
                for response in call(self._outgoing()):
                    if response.error_message:
                        self.errors.append(response.error_message)
                    self.answered += 1
                    self.started.set()
                    self._send()
                self.status = grpc.StatusCode.OK
            except grpc.RpcError as error:
                self.status, self.details = error.code(), error.details() or ""


def test_streams_are_told_to_finish_and_idle_streams_do_not_hold_the_exit(start_server) -> None:
    server = start_server("--models", "cnn", "--grace-s", "120")
    streams = [StreamClient(server.target, idle=i == 0).start() for i in range(5)]
    for stream in streams:
        assert stream.started.wait(60)
    time.sleep(0.2)  # a few hundred answers on each busy stream
    # Exits long before the 120 s grace: the idle stream does not hold it open.
    assert signal_until_exit(server, signal.SIGTERM, repeat=False, timeout_s=40) == 0, server.log()
    for stream in streams:
        stream.join(30)
        assert stream.status in SERVED, (stream.status, stream.details)
        assert not stream.errors, stream.errors
        # Every request the server read was answered; at most the one sent after it stopped
        # reading goes unanswered, and then the stream's status is UNAVAILABLE.
        unanswered = stream.sent - stream.answered
        assert unanswered in (0, 1), (stream.sent, stream.answered)
        if unanswered:
            assert stream.status == grpc.StatusCode.UNAVAILABLE
    assert all(stream.answered > 1 for stream in streams[1:])
    assert "Traceback" not in server.log()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_signal_during_loading_exits_zero_without_ever_reporting_ready(
    repository: Path, tmp_path: Path
) -> None:

    port = _free_port()
    ready_file = tmp_path / "ready.json"
    command = [
        *module_command("cnnserve", "serve"),
        "--repository", str(repository), "--models", "cnn",
        "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "off", "--http-port", "off",
        "--max-batch-size", "1024",  # warming 1024 batch sizes takes long enough to interrupt
        "--ready-file", str(ready_file), "--cpu-threads", "1",
    ]  # fmt: skip
    log_file = tmp_path / "server.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
            deadline = time.monotonic() + 60
            while True:  # listening (ServerLive answers) but still warming
                try:
                    live(triton_pb.ServerLiveRequest().SerializeToString(), timeout=1)
                    break
                except grpc.RpcError:
                    assert process.poll() is None, log_file.read_text()
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_file.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    assert not ready_file.exists()
    log = log_file.read_text()
    assert "stopped before any model was served" in log and "Traceback" not in log
