"""`cnnserve classify`, `cnnserve health` and `cnnserve serve` start-up errors."""

from __future__ import annotations

import json
import shutil
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
    command = [
        sys.executable,
        "-m",
        "cnnserve",
        "serve",
        "--port",
        "0",
        "--metrics-port",
        "off",
        "--http-port",
        "off",
        *args,
    ]
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


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width × height: what a decompression bomb looks like."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_classify_refuses_a_decompression_bomb_and_bad_tls_files(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_declaring(20000, 20000))
    assert main(["classify", "--target", server.target, "--model", "cnn", str(bomb)]) == 2
    error = capsys.readouterr().err.strip()
    assert f"{bomb}: refused to decode" in error and "400000000 pixels" in error and "\n" not in error

    np.save(tmp_path / "x.npy", images(1))
    missing = tmp_path / "ca.pem"
    argv = [
        "classify",
        "--target",
        server.target,
        "--model",
        "cnn",
        "--tls-ca",
        str(missing),
        str(tmp_path / "x.npy"),
    ]
    assert main(argv) == 2
    assert f"--tls-ca {missing}: no such file" in capsys.readouterr().err
    missing.write_text("not a certificate\n")
    assert main(argv) == 2
    assert f"--tls-ca {missing}: not a PEM CA certificate" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_serve_names_a_key_that_does_not_match_its_certificate(repository: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.pem", "-days", "1", "-subj", f"/CN={name}"],
            cwd=tmp_path, check=True, capture_output=True,
        )  # fmt: skip
    serve = ("--repository", str(repository), "--models", "identity")
    result = run_serve(*serve, "--tls-cert", str(tmp_path / "a.pem"), "--tls-key", str(tmp_path / "b.key"))
    assert result.returncode == 2, result.stderr
    assert "the key does not match the certificate" in result.stderr and "Failed to bind" not in result.stderr
    (tmp_path / "garbage.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n"
    )
    result = run_serve(
        *serve, "--tls-cert", str(tmp_path / "garbage.pem"), "--tls-key", str(tmp_path / "a.key")
    )
    assert result.returncode == 2 and "not a PEM certificate and private key" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_bad_cuda_options_in_one_line(repository: Path) -> None:
    result = run_serve(
        "--repository", str(repository), "--models", "identity", "--cudnn-conv-algo-search", "fastest"
    )
    assert result.returncode == 2 and "unknown cuDNN conv algorithm search 'FASTEST'" in result.stderr
    result = run_serve("--repository", str(repository), "--models", "identity", "--gpu-mem-limit-mb", "0")
    assert result.returncode == 2 and "--gpu-mem-limit-mb must be > 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_an_inline_limit_out_of_range_in_one_line(repository: Path) -> None:
    result = run_serve("--repository", str(repository), "--models", "identity", "--inline-max-us", "20000")
    assert result.returncode == 2
    refused = "--inline-max-us must be between 0 and 10000 (0: never run on the event loop's thread)"
    assert refused in result.stderr
    assert "received 20000" in result.stderr and "Traceback" not in result.stderr
    per_model = ("--inline-max-us", "identity=-1")
    result = run_serve("--repository", str(repository), "--models", "identity", *per_model)
    assert result.returncode == 2 and "received identity=-1" in result.stderr


def test_inline_limit_comes_from_the_model_flag_then_the_flag_then_config_json(tmp_path: Path) -> None:
    from cnnserve.serving.config import Override, ServerOptions

    def limit_us(options: ServerOptions, model: str, in_config: float | None) -> float:
        return options.batching_for(model, 8, 0.0, in_config).max_inline_run_s * 1e6

    unset = ServerOptions(repository=tmp_path)
    assert limit_us(unset, "a", None) == 1000  # neither: the server's default
    assert limit_us(unset, "a", 250) == 250  # config.json's inline_max_us
    flagged = ServerOptions(repository=tmp_path, inline_max_us=Override(every=0.0, per_model=(("b", 40.0),)))
    assert limit_us(flagged, "a", 250) == 0  # --inline-max-us 0 beats config.json
    assert limit_us(flagged, "b", 250) == 40  # --inline-max-us b=40 beats both


def test_inline_under_load_is_on_by_default_and_off_with_the_flag(tmp_path: Path) -> None:
    from cnnserve.cli import build_parser
    from cnnserve.serving.serve_cli import build_options

    def under_load(*flags: str) -> tuple[bool, bool]:
        options = build_options(build_parser().parse_args(["serve", "--repository", str(tmp_path), *flags]))
        return options.inline_under_load, options.batching_for("a", 8, 0.0).inline_under_load

    assert under_load() == (True, True)
    assert under_load("--inline-under-load", "off") == (False, False)
    result = run_serve("--repository", str(tmp_path), "--inline-under-load", "maybe")
    assert result.returncode == 2 and "invalid choice: 'maybe'" in result.stderr
