"""ONNX Runtime sessions: provider honesty, load failures, warm-up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx_models import cnn_model, identity_model, images, write_model

from cnnserve.contracts.errors import CnnserveError
from cnnserve.serving import session
from cnnserve.serving.gap_probe import GapProbe
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


class _FixedSpare:
    """Stands in for core_load.SpareCores: this many idle cores, always."""

    def __init__(self, cores: float | None) -> None:
        self.cores = cores

    def spare(self) -> float | None:
        return self.cores


def test_small_runs_take_the_one_thread_session_only_while_the_cores_are_busy(models: Path) -> None:
    """A worker's run of under SMALL_RUN_ROWS images with less than PARALLEL_SPARE_CORES idle:
    the one-thread session, with the same logits; larger runs, idle cores, an unknown load or an
    inline run (`run`): the main one."""
    busy = _FixedSpare(0.1)
    model = ModelSession(models / "cnn/1/model.onnx", SessionSettings(CPU, cpu_threads=2), busy, 0.0)
    reference = ModelSession(models / "cnn/1/model.onnx", SessionSettings(CPU, cpu_threads=2))
    assert model.has_small_session and not reference.has_small_session  # no load reading: none
    small, large = images(session.SMALL_RUN_ROWS - 1), images(session.SMALL_RUN_ROWS)
    for batch in (small, large):
        logits = model.run_batch(batch)["logits"]
        np.testing.assert_allclose(logits, reference.run(batch)["logits"], rtol=1e-5, atol=1e-5)
        assert model.small_runs == 1  # the small batch only
    model.run(small)  # what an inline run calls: every thread, however busy the cores
    for idle in (session.PARALLEL_SPARE_CORES, None):
        busy.cores = idle
        model.run_batch(small)
    assert model.small_runs == 1


def test_one_thread_or_a_cheap_model_needs_no_second_session(models: Path) -> None:
    """One intra-op thread has nothing to save; nor has a model whose single image runs in less
    than SMALL_SESSION_MIN_RUN_US (the test CNN: tens of µs)."""
    path, busy = models / "cnn/1/model.onnx", _FixedSpare(0.0)
    one_thread = ModelSession(path, SessionSettings(CPU, cpu_threads=1), busy, 0.0)
    one_thread.run_batch(images(1))
    assert not one_thread.has_small_session and one_thread.small_runs == 0
    cheap = ModelSession(path, SessionSettings(CPU, cpu_threads=2), busy)
    assert 0 < cheap.single_image_run_us() < session.SMALL_SESSION_MIN_RUN_US
    assert not cheap.has_small_session


def test_serve_cli_reads_the_small_run_session_threshold(capsys) -> None:
    from cnnserve.cli import build_parser
    from cnnserve.serving.serve_cli import build_options

    def options(*flags: str):
        return build_options(build_parser().parse_args(["serve", "--repository", "models", *flags]))

    assert options().small_run_session_us == 1000.0
    assert options("--small-run-session-us", "0").small_run_session_us == 0.0
    assert options("--small-run-session-us", "off").small_run_session_us is None
    with pytest.raises(SystemExit):  # argparse's one-line usage error, as for the port flags
        options("--small-run-session-us", "fast")
    expected = "argument --small-run-session-us: expected microseconds or 'off', got 'fast'"
    assert expected in capsys.readouterr().err
    with pytest.raises(CnnserveError, match="--small-run-session-us must be >= 0 or off, received -5"):
        options("--small-run-session-us", "-5")


class _CountingSession:
    """Wraps an ONNX Runtime session and counts the images of each run it takes."""

    def __init__(self, wrapped) -> None:
        self.wrapped = wrapped
        self.rows: list[int] = []

    def run(self, names, feed):
        self.rows.append(len(next(iter(feed.values()))))
        return self.wrapped.run(names, feed)


@pytest.mark.parametrize("one_thread_wins", [True, False])
def test_inline_runs_take_the_session_the_gap_probe_found_faster(
    models: Path, monkeypatch: pytest.MonkeyPatch, one_thread_wins: bool
) -> None:
    """Where one thread won after an idle gap, inline runs of under SMALL_RUN_ROWS images take
    the one-thread session (with the same logits) and larger ones the main session; where it
    lost, the second session is dropped and every inline run takes the main one."""
    probe = GapProbe(300.0, 200.0 if one_thread_wins else 400.0, 2)
    monkeypatch.setattr(session, "probe_after_gap", lambda *args, **kwargs: probe)
    model = ModelSession(models / "cnn/1/model.onnx", SessionSettings(CPU, cpu_threads=2), inline_max_us=1e6)
    reference = ModelSession(models / "cnn/1/model.onnx", SessionSettings(CPU, cpu_threads=1))
    assert model.inline_probe is probe and model.inline_on_one_thread is one_thread_wins
    assert not model.has_small_session  # no load reading: the worker's runs never take it
    assert (model._small is not None) is one_thread_wins
    if one_thread_wins:
        model._small = _CountingSession(model._small)
    main = model._session = _CountingSession(model._session)
    small, large = images(session.SMALL_RUN_ROWS - 1), images(session.SMALL_RUN_ROWS)
    for batch in (small, large):
        logits = model.run_inline(batch)["logits"]
        np.testing.assert_allclose(logits, reference.run(batch)["logits"], rtol=1e-5, atol=1e-5)
    model.run_batch(small)  # a worker's run, cores not read: the main session
    if one_thread_wins:
        assert model._small.rows == [len(small)] and main.rows == [len(large), len(small)]
    else:
        assert main.rows == [len(small), len(large), len(small)]


def test_the_gap_probe_runs_only_where_inline_runs_may_split_over_threads(models: Path) -> None:
    """It times both real sessions where a model's single image fits the inline limit on several
    threads; not on one thread, with inline runs off, or for an image slower than the limit."""
    path = models / "cnn/1/model.onnx"
    probed = ModelSession(path, SessionSettings(CPU, cpu_threads=2), inline_max_us=1e6)
    assert probed.inline_probe is not None and probed.inline_probe.threads == 2
    assert probed.inline_probe.all_threads_us > 0 and probed.inline_probe.one_thread_us > 0
    assert probed.inline_on_one_thread is probed.inline_probe.one_thread_wins
    for threads, inline_max_us in ((1, 1e6), (2, 0.0), (2, 1e-3)):
        model = ModelSession(path, SessionSettings(CPU, cpu_threads=threads), inline_max_us=inline_max_us)
        assert model.inline_probe is None and model._small is None, (threads, inline_max_us)
