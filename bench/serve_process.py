"""A server under test in a child process: `cnnserve serve` on port 0, or a peer on a free port.

The bench scripts (rollout, workers, protocols, the peers comparison) all need the same three
steps: start the server with its output in a log, wait until it can answer, and stop it with
SIGTERM the way an orchestrator does, keeping its exit code. `cnnserve serve` binds port 0 and
publishes the bound ports in its --ready-file, so no port can be taken between a probe and the
bind; a peer server without a ready file gets a free port and is waited for over its health API.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


def free_port() -> int:
    """A loopback port free now, for servers that cannot bind port 0 and report it."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def cnnserve_command(*args: str) -> list[str]:
    """`cnnserve ARGS` run by this interpreter, so the scripts need no installed console script."""
    return [sys.executable, "-m", "cnnserve", *args]


@dataclass(frozen=True)
class ReadyPorts:
    """What `cnnserve serve --ready-file` publishes once every model is ready."""

    grpc_port: int
    http_port: int | None
    metrics_port: int | None

    @property
    def grpc_target(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def http_base(self) -> str:
        if self.http_port is None:
            raise ValueError("the server was started with --http-port off")
        return f"http://{LOOPBACK}:{self.http_port}"


class ServerProcess:
    """One server process with its output in `log`.

    With `own_session`, the server runs in a session of its own and SIGTERM goes to its whole
    process group (a peer's workers are its children and may not forward the signal); without it,
    SIGTERM goes to the server alone, which stops its own workers as `cnnserve serve` does.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log: Path,
        cwd: Path | None = None,
        own_session: bool = False,
    ) -> None:
        self.name, self.command, self.log, self.cwd = name, list(command), log, cwd
        self.own_session = own_session
        self.process: subprocess.Popen | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        with self.log.open("wb") as handle:
            self.process = subprocess.Popen(
                self.command, stdout=handle, stderr=subprocess.STDOUT, cwd=self.cwd,
                env={**os.environ, **(env or {})}, start_new_session=self.own_session,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def failed_to_start(self, why: str) -> SystemExit:
        return SystemExit(f"{self.name} {why}; its log ({self.log}):\n{self.log_tail()}")

    def _signal(self, signum: int) -> None:
        assert self.process is not None
        if self.own_session:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then its exit code; SIGKILL only if it outlives `timeout_s`. None if never started."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def wait_for_ready_file(
    server: ServerProcess, ready: Path, timeout_s: float = START_TIMEOUT_S, poll_s: float = 0.05
) -> ReadyPorts:
    """Until `ready` exists (the server writes it atomically); a server that exits or takes longer
    than `timeout_s` is a one-line failure with the tail of its log."""
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if not server.alive():
            raise server.failed_to_start("exited before it was ready")
        if time.monotonic() > deadline:
            raise server.failed_to_start(f"was not ready after {timeout_s:g} s")
        time.sleep(poll_s)
    ports = json.loads(ready.read_text())
    return ReadyPorts(ports["grpc_port"], ports.get("http_port"), ports.get("metrics_port"))


def start_cnnserve(
    serve_args: Sequence[str],
    workdir: Path,
    name: str = "cnnserve",
    cwd: Path | None = None,
    own_session: bool = False,
    timeout_s: float = START_TIMEOUT_S,
    poll_s: float = 0.05,
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> tuple[ServerProcess, ReadyPorts]:
    """`cnnserve serve SERVE_ARGS --ready-file WORKDIR/NAME.ready.json`, its log in WORKDIR/NAME.log;
    returns once it is ready. `serve_args` should bind port 0 (`--port 0`) so runs never collide.
    `prefix` runs before the command (e.g. cpu_cgroup's, to start it inside a cgroup)."""
    ready = workdir / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    command = [*prefix, *cnnserve_command("serve", *serve_args, "--ready-file", str(ready))]
    server = ServerProcess(name, command, workdir / f"{name}.log", cwd=cwd, own_session=own_session)
    server.start(env)
    try:
        return server, wait_for_ready_file(server, ready, timeout_s, poll_s)
    except BaseException:
        server.stop()
        raise
