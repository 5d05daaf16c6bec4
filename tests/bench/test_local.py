"""In-process runs on real ONNX Runtime sessions, from a repository of no-op models."""

import pytest

from cnnserve.bench import artifacts
from cnnserve.bench.backends import BackendUnavailable, expand_backends, open_backend
from cnnserve.bench.local import LocalPlan, Progress, run_local
from cnnserve.bench.options import RuntimeOptions
from cnnserve.bench.timing import RepeatPolicy
from cnnserve.contracts.errors import CnnserveError

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


class RecordingProgress(Progress):
    def __init__(self) -> None:
        self.steps: list[str] = []

    def step(self, description: str) -> None:
        self.steps.append(description)


def test_rounds_alternate_between_points_and_pool_their_samples(noop_repository):
    options = RuntimeOptions(device="cpu", intra_op_threads=1)
    policy = RepeatPolicy(warmup_runs=2, min_runs=5, min_time_s=0.0)
    plan = LocalPlan(
        ("tiny", "noop"), ("onnxruntime",), (1, 4), noop_repository, options, policy,
        peak_size=64, peak_repeats=2, rounds=2,
    )  # fmt: skip
    progress = RecordingProgress()
    result = run_local(plan, progress)
    measured = [step for step in progress.steps if "round" in step]
    assert measured == [
        f"{model} · onnxruntime · batch {batch} · round {r}/2"
        for model in ("tiny", "noop")
        for r in (1, 2)
        for batch in (1, 4)
    ]
    assert [(r.model, r.batch_size) for r in result.records] == [
        ("tiny", 1), ("tiny", 4), ("noop", 1), ("noop", 4),
    ]  # fmt: skip
    assert all(record.runs == 6 for record in result.records)  # 2 rounds × ⌈5 / 2⌉ runs


def test_a_round_takes_its_share_of_the_policy():
    policy = RepeatPolicy(warmup_runs=5, min_runs=20, min_time_s=2.0, max_time_s=60.0)
    first, later = policy.for_round(3, first=True), policy.for_round(3, first=False)
    assert (first.warmup_runs, later.warmup_runs) == (5, 1)
    assert first.min_runs == later.min_runs == 7
    assert first.min_time_s == pytest.approx(2 / 3) and first.max_time_s == pytest.approx(20)
    with pytest.raises(CnnserveError, match="--rounds must be >= 1"):
        LocalPlan(("mnist_cnn",), ("onnxruntime",), (8,), None, rounds=0)


def test_unknown_model_in_repository(noop_repository):
    with pytest.raises(CnnserveError, match=r"unknown model 'nope'.*available: delayed, noop, priced, tiny"):
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
