"""Fixtures for the serving tests: a model repository of real ONNX models and real servers.

Servers run as `python -m cnnserve serve` subprocesses on port 0; they publish the ports they
bound in a `--ready-file`, which the fixture waits for (no fixed ports, no log scraping).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from onnx_models import cnn_model, identity_model, write_model

from cnnserve.contracts.model_repository import VersionPolicy
from cnnserve.serving.client import ClassifierClient
from tests.child_processes import module_command

START_TIMEOUT_S = 90


class ServerProcess:
    """A real `cnnserve serve` in a subprocess."""

    def __init__(self, repository: Path, workdir: Path, *args: str, prefix: tuple[str, ...] = ()) -> None:
        self.repository = repository
        self.workdir = workdir
        self.args = args
        self.prefix = prefix  # e.g. setpriv, to run the server with fewer privileges
        self.ready_file = workdir / "ready.json"
        self.log_file = workdir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.grpc_port = 0
        self.metrics_port: int | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_target(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> ServerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        command = [
            *self.prefix,
            *module_command("cnnserve", "serve"),
            "--repository", str(self.repository),
            "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--http-port", "0",
            "--ready-file", str(self.ready_file),
            "--cpu-threads", "1",
            *self.args,
        ]  # fmt: skip
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"server not ready after {START_TIMEOUT_S} s:\n{self.log()}")
            time.sleep(0.05)
        ports = json.loads(self.ready_file.read_text())
        self.grpc_port, self.metrics_port = ports["grpc_port"], ports["metrics_port"]
        self.http_port = ports.get("http_port")
        return self

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def client(self, timeout_s: float = 30) -> ClassifierClient:
        return ClassifierClient(self.channel(), timeout_s=timeout_s)


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cnn (versions 1 and 2), identity, batched (long queue delay), and two broken models."""
    root = tmp_path_factory.mktemp("models")
    write_model(root, "cnn", cnn_model(seed=1), versions=(1,), version_policy=VersionPolicy("all"))
    write_model(root, "cnn", cnn_model(seed=2), versions=(2,), version_policy=VersionPolicy("all"))
    write_model(root, "identity", identity_model())
    write_model(root, "batched", identity_model(), max_batch_size=8, max_queue_delay_ms=300)
    write_model(root, "corrupt", b"this is not an onnx file")
    write_model(root, "future_opset", cnn_model(opset=99))
    return root


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One shared server for the read-only tests: 1 MiB messages, at most 64 images a request."""
    process = ServerProcess(
        repository,
        tmp_path_factory.mktemp("server"),
        "--max-message-mb", "1",
        "--max-request-images", "64",
    )  # fmt: skip
    process.start()
    yield process
    process.kill()


@pytest.fixture
def start_server(repository: Path, tmp_path: Path) -> Iterator:
    """Start a dedicated server with extra flags; killed at the end of the test if still up."""
    started: list[ServerProcess] = []

    def start(*args: str, models_dir: Path | None = None) -> ServerProcess:
        process = ServerProcess(models_dir or repository, tmp_path / f"server{len(started)}", *args)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.kill()


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
