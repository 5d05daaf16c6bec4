"""Fixtures for the benchmark tests: a repository of no-op models and a real server on port 0.

The server is a real `python -m cnnserve serve` subprocess; it publishes the port it bound in a
`--ready-file`, which the fixture waits for (no fixed ports, no log scraping).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cnnserve.bench.noop_model import write_noop
from cnnserve.contracts.model_repository import ModelConfig
from tests.child_processes import module_command

START_TIMEOUT_S = 90
IMAGE_SHAPE = (28, 28, 1)
PRICED_FLOPS = 6_726_144  # mnist_cnn's
# `delayed`: a batch that is not full waits this long for company, so one request at a time
# takes at least this long in the server, however fast the machine.
DELAYED_QUEUE_MS = 40.0


@dataclass
class RunningServer:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def noop_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`noop` (the overhead model), and `tiny`, `priced` and `delayed`, no-ops standing in for
    real models."""
    root = tmp_path_factory.mktemp("bench_models")
    write_noop(root, IMAGE_SHAPE, "noop")
    write_noop(root, IMAGE_SHAPE, "tiny", max_batch_size=8)
    write_noop(root, IMAGE_SHAPE, "delayed", max_batch_size=8, max_queue_delay_ms=DELAYED_QUEUE_MS)
    # `priced`: a no-op whose config.json carries FLOPs, as `cnnserve export` records them.
    write_noop(root, IMAGE_SHAPE, "priced")
    config = ModelConfig.load(root / "priced")
    replace(config, provenance=replace(config.provenance, flops_per_image=PRICED_FLOPS)).save(root / "priced")
    return root


@pytest.fixture(scope="session")
def server(noop_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    workdir = tmp_path_factory.mktemp("bench_server")
    ready, log = workdir / "ready.json", workdir / "server.log"
    command = [
        *module_command("cnnserve", "serve"), "--repository", str(noop_repository),
        "--host", "127.0.0.1", "--port", "0", "--metrics-port", "off", "--http-port", "off",
        "--ready-file", str(ready), "--cpu-threads", "1",
    ]  # fmt: skip
    with log.open("wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while not ready.exists():
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {START_TIMEOUT_S} s:\n{log.read_text()}")
            time.sleep(0.05)
        yield RunningServer(process, json.loads(ready.read_text())["grpc_port"], log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on: bound by the OS, then released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
