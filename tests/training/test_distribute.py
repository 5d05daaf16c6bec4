"""`--distribute multiworker`: two real worker processes on 127.0.0.1, one killed and restarted."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cnnserve.cli import main
from tests.child_processes import module_command
from tests.training.small_run import SMALL_RUN, TOTAL_STEPS, needs_fashion_mnist

WAIT_S = 300


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Workers:
    """The same `cnnserve train --distribute multiworker` command on every worker, as a Job runs it."""

    def __init__(self, out: Path, logs: Path) -> None:
        self.out = out
        self.logs = logs
        self.ports = _free_ports(2)
        self.processes: dict[int, subprocess.Popen] = {}
        self.starts = {0: 0, 1: 0}

    def start(self, index: int) -> None:
        cluster = {"worker": [f"127.0.0.1:{port}" for port in self.ports]}
        task = {"type": "worker", "index": index}
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}
        self.starts[index] += 1
        log = open(self.logs / f"worker{index}-{self.starts[index]}.log", "wb")  # noqa: SIM115
        command = module_command("cnnserve", "train", *SMALL_RUN, "--distribute", "multiworker",
                                 "--out", str(self.out), "--no-fold", "--overwrite")  # fmt: skip
        self.processes[index] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def wait(self, index: int) -> int:
        return self.processes[index].wait(timeout=WAIT_S)

    def log(self, index: int, start: int) -> str:
        return (self.logs / f"worker{index}-{start}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.kill()
            process.wait()


@needs_fashion_mnist
@pytest.mark.slow
def test_two_workers_survive_a_killed_worker_and_match_one_process(tmp_path: Path, small_reference_run: Path):
    out = tmp_path / "run"
    workers = Workers(out, tmp_path)
    try:
        workers.start(0)
        workers.start(1)
        metadata = out / "backup" / "training_metadata.json"
        deadline = time.monotonic() + WAIT_S
        while not metadata.is_file():  # the chief backed up the first epoch
            assert all(p.poll() is None for p in workers.processes.values()), workers.log(1, 1)[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert json.loads(metadata.read_text())["epoch"] == 1
        os.kill(workers.processes[1].pid, signal.SIGKILL)
        assert workers.wait(1) == -signal.SIGKILL
        # As a Job's restart policy would: the killed worker comes back; the chief, whose
        # collectives lost their peer, exits with a one-line error and comes back too.
        workers.start(1)
        assert workers.wait(0) == 2
        assert "training stopped because a worker was lost" in workers.log(0, 1)
        workers.start(0)
        assert workers.wait(0) == 0, workers.log(0, 2)[-3000:]
        assert workers.wait(1) == 0, workers.log(1, 2)[-3000:]
    finally:
        workers.stop_all()

    for index in (0, 1):
        assert "resuming at epoch 2 from the backup" in workers.log(index, 2)
        assert "epoch   1/3" not in workers.log(index, 2)  # not retrained
    assert not (out / "backup").exists()  # the chief removes it when training is done
    distributed = json.loads((out / "metrics.json").read_text())
    single = json.loads((small_reference_run / "metrics.json").read_text())
    assert distributed["steps"] == single["steps"] == TOTAL_STEPS
    assert distributed["epochs"] == 3 and len(distributed["history"]["val_accuracy"]) == 3
    assert distributed["distribute"] == "multiworker"
    assert abs(distributed["test_accuracy"] - single["test_accuracy"]) <= 0.01


def test_multiworker_without_tf_config_is_a_one_line_error(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    args = ["train", "--model", "mnist_cnn", "--distribute", "multiworker", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    assert "--distribute multiworker needs TF_CONFIG" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("tf_config", "message"),
    [
        ("{not json", "TF_CONFIG is not valid"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "is not one of the 1"),
        ('{"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}}',
         "'chief' task is not supported"),
    ],
)  # fmt: skip
def test_bad_tf_config_is_a_one_line_error(tmp_path: Path, capsys, monkeypatch, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    args = ["train", "--model", "mnist_cnn", "--distribute", "multiworker", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_mirrored_trains_and_writes_the_run(tmp_path: Path):
    """One process, every local device (here the CPU alone): the same run files as without it."""
    out = tmp_path / "mirrored"
    args = ["train", "--model", "mnist_cnn", "--dataset", "synthetic", "--synthetic-size", "256",
            "--steps", "12", "--batch-size", "32", "--distribute", "mirrored", "--out", str(out),
            "--no-fold", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distribute"] == "mirrored" and metrics["steps"] == 12
    assert metrics["history"]["loss"][-1] < metrics["history"]["loss"][0]
    assert (out / "model.keras").is_file() and (out / "checkpoints").is_dir()
