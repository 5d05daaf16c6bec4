"""In-process runs on real ONNX Runtime sessions, from a repository of no-op models."""

import pytest

from cnnserve.bench import artifacts
from cnnserve.bench.backends import BackendUnavailable, expand_backends, open_backend
from cnnserve.bench.local import LocalPlan, run_local
from cnnserve.bench.options import RuntimeOptions
from cnnserve.bench.timing import RepeatPolicy
from cnnserve.errors import CnnserveError

FAST = RepeatPolicy(warmup_runs=1, min_runs=3, min_time_s=0.0)


def test_expand_backends_families_and_variants():
    assert expand_backends("onnxruntime,tensorflow") == (
        "onnxruntime",
        "tensorflow_folded",
        "tensorflow_unfolded",
    )
    assert expand_backends("tflite_int8, tflite") == ("tflite_int8", "tflite_float32")


@pytest.mark.parametrize("text", ["pytorch", "", "onnxruntime,tensorrt"])
def test_unknown_backend(text):
    with pytest.raises(CnnserveError, match=r"unknown backend|--backends is empty"):
        expand_backends(text)


def test_repository_run_measures_onnxruntime_and_reports_what_is_missing(noop_repository):
    options = RuntimeOptions(device="cpu", intra_op_threads=1)
    variants = ("onnxruntime", "tflite_float32")
    plan = LocalPlan(
        ("tiny",), variants, (1, 4), noop_repository, options, FAST, peak_size=64, peak_repeats=2
    )
    result = run_local(plan)
    assert [(r.backend, r.batch_size) for r in result.records] == [("onnxruntime", 1), ("onnxruntime", 4)]
    record = result.records[0]
    assert record.device == "cpu" and record.engine == "CPUExecutionProvider"
    assert record.runs >= 3 and record.p50_ms <= record.p90_ms <= record.p99_ms
    assert record.gflops is None and record.pct_of_peak is None  # not a zoo model: no FLOP count
    assert record.settings["intra_op_threads"] == 1 and record.settings["allow_spinning"] is True
    assert record.system["matmul_peak"]["threads"] == 1
    assert result.peak is not None and result.peak.gflops > 0
    (skipped,) = result.skipped
    assert skipped.backend == "tflite_float32" and "--format tflite" in skipped.reason


def test_unknown_model_in_repository(noop_repository):
    with pytest.raises(CnnserveError, match=r"unknown model 'nope'.*available: noop, tiny"):
        artifacts.from_repository(noop_repository, "nope", ("onnxruntime",))


def test_batch_size_zero_is_rejected():
    with pytest.raises(CnnserveError, match="batch sizes must be positive"):
        LocalPlan(("mnist_cnn",), ("onnxruntime",), (0, 8), None)


def test_ort_reports_the_provider_that_really_ran(noop_repository):
    path = noop_repository / "tiny" / "1" / "model.onnx"
    try:
        backend = open_backend("onnxruntime", path, RuntimeOptions(device="cuda"))
    except BackendUnavailable as error:  # the usual case here: the CUDA build, no usable GPU
        assert "ONNX Runtime ran on CPUExecutionProvider" in str(error)
    else:
        assert backend.device == "cuda" and backend.engine == "CUDAExecutionProvider"
    backend = open_backend("onnxruntime", path, RuntimeOptions(device="auto"))
    assert backend.engine == backend.settings()["providers"][0]
    assert backend.device == ("cuda" if backend.engine == "CUDAExecutionProvider" else "cpu")


def test_invalid_runtime_options():
    with pytest.raises(CnnserveError, match="unknown --device 'tpu'"):
        RuntimeOptions(device="tpu")
    with pytest.raises(CnnserveError, match="--intra-op-threads must be >= 0"):
        RuntimeOptions(intra_op_threads=-1)
    with pytest.raises(CnnserveError, match="unknown --graph-optimization"):
        RuntimeOptions(graph_optimization="max")
