"""ONNX Runtime sessions: provider honesty, load failures, warm-up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx_models import cnn_model, identity_model, images, write_model

from cnnserve.contracts.errors import CnnserveError
from cnnserve.serving import session
from cnnserve.serving.session import CPU, CUDA, ModelSession, SessionSettings, resolve_device


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("session_models")
    write_model(root, "cnn", cnn_model())
    write_model(root, "identity", identity_model())
    write_model(root, "corrupt", b"garbage")
    return root


def test_cpu_session_reports_its_provider_and_io(models: Path) -> None:
    model = ModelSession(models / "cnn/1/model.onnx", SessionSettings(CPU, cpu_threads=1))
    assert model.provider == CPU
    assert (model.input_name, model.input_dtype, model.input_shape) == ("images", "uint8", (-1, 28, 28, 1))
    assert model.output_names == ("logits", "probabilities")
    outputs = model.run(images(3))
    assert outputs["logits"].shape == (3, 10)
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1, rtol=1e-5)
    model.warm(range(1, 4), (28, 28, 1))


def test_auto_device_is_confirmed_by_the_session(models: Path) -> None:
    choice = resolve_device("auto", [models / "corrupt/1/model.onnx", models / "identity/1/model.onnx"])
    model = ModelSession(models / "identity/1/model.onnx", SessionSettings(choice.provider))
    assert model.provider == choice.provider
    if choice.provider == CPU:
        assert choice.reason.startswith("--device auto fell back to CPU because ")
        assert "corrupt" not in choice.reason  # a broken model is not blamed on CUDA
    else:
        assert choice.provider == CUDA


def test_device_cpu_never_touches_cuda(models: Path) -> None:
    assert resolve_device("cpu", [models / "cnn/1/model.onnx"]).provider == CPU


def test_cuda_failure_reason_comes_from_onnxruntime_log() -> None:
    lines = [
        "\x1b[1;31m2026 [E:onnxruntime] Failed to load library libonnxruntime_providers_cuda.so with error: "
        "libcublasLt.so.13: cannot open shared object file\x1b[m",
        "Failed to create CUDAExecutionProvider. Require cuDNN 9.* and CUDA 13.*.",
    ]
    assert session._cuda_failure_reason(lines) == "libcublasLt.so.13: cannot open shared object file"
    assert session._cuda_failure_reason(lines[1:]) == "Require cuDNN 9.* and CUDA 13.*"


def test_unloadable_model_is_a_one_line_error(models: Path) -> None:
    with pytest.raises(CnnserveError, match=r"ONNX Runtime cannot load .*corrupt"):
        ModelSession(models / "corrupt/1/model.onnx", SessionSettings(CPU))


@pytest.mark.parametrize("spinning", [False, True])
def test_spinning_is_off_unless_asked_for(spinning: bool) -> None:
    options = session.session_options(SessionSettings(CPU, cpu_threads=2, allow_spinning=spinning))
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spinning else "0")
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1


def test_serve_cli_passes_cpu_spinning_to_the_server_config() -> None:
    from cnnserve.cli import build_parser
    from cnnserve.serving.serve_cli import build_options

    args = build_parser().parse_args(["serve", "--repository", "models", "--cpu-spinning"])
    assert build_options(args).cpu_spinning is True
    args = build_parser().parse_args(["serve", "--repository", "models"])
    assert build_options(args).cpu_spinning is False


def test_bench_offers_the_graph_optimizations_and_execution_modes_the_builder_knows() -> None:
    from cnnserve.bench.options import EXECUTION_MODES, GRAPH_OPTIMIZATIONS

    assert tuple(session.GRAPH_OPTIMIZATION) == GRAPH_OPTIMIZATIONS
    assert tuple(session.EXECUTION_MODE) == EXECUTION_MODES
