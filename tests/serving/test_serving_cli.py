"""`cnnserve classify`, `cnnserve health` and `cnnserve serve` start-up errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import ServerProcess
from onnx_models import FASHION_LABELS, images
from PIL import Image

from cnnserve.cli import main


def expected_labels(server: ServerProcess, batch: np.ndarray) -> list[str]:
    session = ort.InferenceSession(
        str(server.repository / "cnn/2/model.onnx"), providers=["CPUExecutionProvider"]
    )
    return [FASHION_LABELS[i] for i in session.run(None, {"images": batch})[1].argmax(axis=1)]


def test_classify_png_and_npy(server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    batch = images(3, seed=9)
    Image.fromarray(batch[0, :, :, 0]).save(tmp_path / "shoe.png")
    Image.fromarray(batch[1, :, :, 0]).convert("RGB").resize((56, 56), Image.Resampling.NEAREST).save(
        tmp_path / "big.jpg", quality=100
    )
    np.save(tmp_path / "more.npy", batch[2:])
    argv = ["classify", "--target", server.target, "--model", "cnn", "--json", "--top-k", "2"]
    files = [str(tmp_path / name) for name in ("shoe.png", "big.jpg", "more.npy")]
    assert main([*argv, *files]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in report["results"]] == ["shoe.png", "big.jpg", "more.npy"]
    labels = [r["top"][0]["label"] for r in report["results"]]
    assert labels[0] == expected_labels(server, batch[:1])[0]  # PNG: lossless
    assert labels[2] == expected_labels(server, batch[2:])[0]  # .npy: exact
    assert report["timing"]["execution_provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert report["timing"]["batch_size"] == 3

    assert main(["classify", "--target", server.target, "--model", "cnn", files[0]]) == 0
    text = capsys.readouterr().out
    assert "shoe.png" in text and labels[0] in text
    assert "queue" in text and "compute" in text and "ExecutionProvider" in text


def test_classify_errors_are_one_line(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    np.save(tmp_path / "x.npy", images(1))
    assert main(["classify", "--target", server.target, "--model", "nope", str(tmp_path / "x.npy")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cnnserve classify: error:") and "NOT_FOUND" in error and "\n" not in error
    assert main(["classify", "--target", server.target, "--model", "cnn", str(tmp_path / "missing.png")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_health_command(server: ServerProcess, capsys: pytest.CaptureFixture) -> None:
    assert main(["health", "--target", server.target]) == 0
    assert "SERVING" in capsys.readouterr().out


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cnnserve", "serve", "--port", "0", "--metrics-port", "off", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_serve_rejects_a_missing_repository(tmp_path: Path) -> None:
    result = run_serve("--repository", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "model repository" in result.stderr and "is not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_rejects_unknown_models_and_overrides(repository: Path) -> None:
    result = run_serve("--repository", str(repository), "--models", "identity,ghost")
    assert result.returncode == 2 and "--models: ghost not in" in result.stderr
    result = run_serve("--repository", str(repository), "--models", "identity", "--max-batch-size", "ghost=4")
    assert result.returncode == 2 and "per-model overrides name unknown models: ghost" in result.stderr


def test_device_cuda_fails_at_start_up_unless_cuda_is_real(repository: Path) -> None:
    import cnnserve.serving.session as session

    choice = session.resolve_device("auto", [repository / "identity/1/model.onnx"])
    result = run_serve("--repository", str(repository), "--models", "identity", "--device", "cuda")
    if choice.provider == session.CUDA:
        pytest.skip("this machine really has CUDA")
    assert result.returncode == 2
    assert "--device cuda:" in result.stderr and "use --device auto or cpu" in result.stderr
    assert "Traceback" not in result.stderr


def test_device_auto_logs_one_reason_and_reports_the_real_provider(start_server) -> None:
    server = start_server("--models", "identity", "--device", "auto")
    provider = server.client().metadata("identity").execution_provider
    lines = [line for line in server.log().splitlines() if "execution provider:" in line]
    assert len(lines) == 1 and provider in lines[0]
    if provider == "CPUExecutionProvider":
        assert "fell back to CPU because" in lines[0]
    cpu = start_server("--models", "identity", "--device", "cpu")
    assert cpu.client().metadata("identity").execution_provider == "CPUExecutionProvider"
