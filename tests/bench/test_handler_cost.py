"""scripts/handler_cost.py: the server's own cost per ModelInfer request, measured in-process on a
real session, with ONNX Runtime's share no larger than the whole."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.serving.onnx_models import cnn_model, write_model

ROOT = Path(__file__).resolve().parents[2]
ROUND = re.compile(r"round (\d+): ([\d.]+) µs per request, ONNX Runtime ([\d.]+), the rest ([\d.]+)")


def test_handler_cost_reports_each_round_and_onnx_runtimes_share(tmp_path) -> None:
    write_model(tmp_path, "tiny", cnn_model(seed=3), max_queue_delay_ms=0)
    # Its own process: the script imports cnnserve's V2 protos, which tritonclient's would clash with.
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "handler_cost.py"),
            str(tmp_path),
            "tiny",
            "--requests",
            "200",
            "--rounds",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    rounds = [m.groups() for m in ROUND.finditer(done.stdout)]
    assert [int(r[0]) for r in rounds] == [1, 2, 3]
    for _, total, run, rest in rounds:
        assert 0 < float(run) < float(total)
        assert abs(float(total) - float(run) - float(rest)) < 0.2
    assert re.search(
        r"tiny: median [\d.]+ µs per request, one at a time, [\d.]+ µs outside ONNX Runtime", done.stdout
    )


def test_handler_cost_names_a_missing_model(tmp_path) -> None:
    write_model(tmp_path, "tiny", cnn_model(seed=3))
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "handler_cost.py"), str(tmp_path), "absent", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "absent" in done.stderr and "Traceback" not in done.stderr


def test_the_stream_mode_answers_every_message_and_reports_wall_and_cpu(tmp_path) -> None:
    """`--stream N`: one real ModelStreamInfer call, N messages in flight; the script fails unless
    every message sent was answered without an error."""
    write_model(tmp_path, "tiny", cnn_model(seed=3), max_queue_delay_ms=0)
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "handler_cost.py"), str(tmp_path), "tiny",
         "--requests", "300", "--rounds", "2", "--stream", "8"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rounds = re.findall(r"round (\d+): ([\d.]+) µs per message, ([\d.]+) µs of CPU", done.stdout)
    assert [int(r[0]) for r in rounds] == [1, 2]
    assert all(float(wall) > 0 and float(cpu) > 0 for _, wall, cpu in rounds)
    assert re.search(
        r"tiny: median [\d.]+ µs per message, [\d.]+ µs of CPU, one stream, 8 in flight", done.stdout
    )


def test_a_negative_stream_is_refused(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "handler_cost.py"), str(tmp_path), "tiny", "--stream", "-1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and "--stream >= 0" in done.stderr
