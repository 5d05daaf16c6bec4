"""What the GPU path needs, checked without a GPU: CUDA provider options validated, IO binding
giving the plain run's results on CPU sessions, and `make gpu-check` refusing a CPU machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from cnnserve.bench import gpu_check
from cnnserve.bench.options import RuntimeOptions
from cnnserve.bench.ort_backend import OrtBackend
from cnnserve.cli import main
from cnnserve.contracts.errors import CnnserveError
from cnnserve.serving.cuda_options import MIB, CudaOptions
from cnnserve.serving.session import CPU, CUDA, ModelSession, SessionSettings, resolve_device
from tests.serving.onnx_models import cnn_model, images

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cnn") / "model.onnx"
    onnx.save(cnn_model(seed=3), str(path))
    return path


@pytest.fixture(scope="module")
def cuda_usable(model_path) -> bool:
    return resolve_device("auto", [model_path]).provider == CUDA


def test_cuda_options_build_what_onnx_runtime_takes():
    assert CudaOptions().provider_options() == {
        "device_id": "0",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "arena_extend_strategy": "kNextPowerOfTwo",
        "do_copy_in_default_stream": "1",
    }
    options = CudaOptions.from_flags(device_id=2, conv_algo_search="heuristic", gpu_mem_limit_mb=512)
    assert options.provider_options()["device_id"] == "2"
    assert options.provider_options()["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options.provider_options()["gpu_mem_limit"] == str(512 * MIB)
    assert options.describe() == "cuda:2, cuDNN search HEURISTIC, memory limit 512 MiB"
    assert SessionSettings(CUDA, cuda=options).cuda.device_id == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device_id": -1}, "CUDA device id must be 0..1023, received -1"),
        ({"device_id": "0"}, "CUDA device id must be an integer, received '0'"),
        ({"device_id": True}, "CUDA device id must be an integer, received True"),
        (
            {"cudnn_conv_algo_search": "FASTEST"},
            "unknown cuDNN conv algorithm search 'FASTEST'; choose one of",
        ),
        ({"gpu_mem_limit_bytes": 1000}, "GPU memory limit must be at least 1 MiB, received 1000 bytes"),
        ({"arena_extend_strategy": "grow"}, "unknown arena extend strategy 'grow'"),
    ],
)
def test_bad_cuda_options_are_one_clear_error(kwargs, message):
    with pytest.raises(CnnserveError) as caught:
        CudaOptions(**kwargs)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cudnn-conv-algo-search", "fastest"], "unknown cuDNN conv algorithm search 'FASTEST'"),
        (["--gpu-mem-limit-mb", "0"], "--gpu-mem-limit-mb must be > 0, received 0"),
        (["--cuda-device-id", "-3"], "CUDA device id must be 0..1023, received -3"),
    ],
)
def test_bench_local_rejects_bad_cuda_flags(flags, message, capsys):
    argv = ["bench", "local", "--synthetic", "--model", "mnist_cnn", "--device", "cuda", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnserve bench: error:") and message in err and "\n" not in err


def test_io_binding_on_cpu_sessions_gives_the_plain_results(model_path):
    batch = images(9, seed=4)
    plain = ModelSession(model_path, SessionSettings(CPU, cpu_threads=1, io_binding=False))
    bound = ModelSession(model_path, SessionSettings(CPU, cpu_threads=1, io_binding=True))
    assert bound.io_binding and not plain.io_binding
    expected, got = plain.run(batch), bound.run(batch)
    assert sorted(got) == ["logits", "probabilities"]
    for name in ("logits", "probabilities"):
        assert got[name].shape == (9, 10)
        np.testing.assert_array_equal(got[name], expected[name])
    # A second batch size through the same binding path.
    np.testing.assert_array_equal(bound.run(batch[:2])["logits"], plain.run(batch[:2])["logits"])
    # The default is on for CUDA only.
    assert ModelSession(model_path, SessionSettings(CPU, cpu_threads=1)).io_binding is False


def test_bench_backend_io_binding_matches_plain_run(model_path):
    batch = images(5, seed=5)
    plain = OrtBackend(model_path, RuntimeOptions(device="cpu", intra_op_threads=1))
    bound = OrtBackend(model_path, RuntimeOptions(device="cpu", intra_op_threads=1, io_binding=True))
    np.testing.assert_array_equal(bound.run(batch), plain.run(batch))
    assert bound.settings()["io_binding"] is True and "cuda" not in bound.settings()


def test_device_cuda_is_refused_here_with_onnx_runtimes_reason(model_path, cuda_usable):
    if cuda_usable:
        pytest.skip("this machine has a usable CUDA GPU")
    with pytest.raises(CnnserveError) as caught:
        resolve_device("cuda", [model_path], CudaOptions(device_id=1, cudnn_conv_algo_search="HEURISTIC"))
    assert str(caught.value).startswith("--device cuda: ") and "use --device auto or cpu" in str(caught.value)


def test_gpu_check_refuses_a_machine_without_cuda(tmp_path, capsys, cuda_usable):
    if cuda_usable:
        pytest.skip("this machine has a usable CUDA GPU: make gpu-check runs for real here")
    out = tmp_path / "gpu_check"
    assert gpu_check.main(["--out", str(out)]) == gpu_check.EXIT_NO_GPU == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("gpu-check: no CUDA GPU: ") and "\n" not in err
    assert "make gpu-check on a machine with one" in err
    assert not out.exists() and "bench" not in captured.out  # nothing trained, nothing measured


def test_gpu_check_bad_options_exit_2(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path), "--device", "tpu"]) == 2
    assert "--device must be cuda or cpu, received 'tpu'" in capsys.readouterr().err


def test_make_gpu_check_runs_the_script():
    done = subprocess.run(
        ["make", "-n", "gpu-check"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert "-m cnnserve.bench.gpu_check" in done.stdout


def _local(model, batch, p50, device="cuda"):
    return {"model": model, "batch_size": batch, "p50_ms": p50, "images_per_s": batch / p50 * 1e3,
            "device": device}  # fmt: skip


def _server(model, images_per_request, concurrency, p50, rps, device="cuda"):
    return {"model": model, "images_per_request": images_per_request, "concurrency": concurrency,
            "p50_ms": p50, "requests_per_s": rps, "images_per_s": rps * images_per_request,
            "device": device}  # fmt: skip


def test_gpu_check_table_puts_the_tutorials_figure_beside_ours():
    local = [_local("mnist_cnn", 1, 0.2), _local("mnist_cnn", 64, 0.5), _local("mnist_cnn", 256, 1.0),
             _local("cs231n_complex", 1, 0.4), _local("cs231n_complex", 64, 1.0),
             _local("cs231n_complex", 256, 3.2)]  # fmt: skip
    server = [
        _server(m, 1, c, 0.3 * c, 1000.0 * c) for m in ("mnist_cnn", "cs231n_complex") for c in (1, 8, 32)
    ]
    server += [_server("cs231n_complex", 64, 1, 3.0, 300.0), _server("cs231n_complex", 64, 4, 6.0, 500.0)]
    gpu_check.check_devices("cuda", local, server)
    rows = {row["model"]: row for row in gpu_check.summary_rows(local, server)}
    complex_row = rows["cs231n_complex"]
    assert complex_row["tutorial_gpu_ms"] == [2.0, 5.0] and complex_row["vs_tutorial_gpu"] == [2.0, 5.0]
    assert complex_row["local_batch64_p50_ms"] == 1.0 and complex_row["local_max_batch"] == 256
    assert complex_row["server_c1_p50_ms"] == pytest.approx(0.3)
    assert complex_row["server_concurrency"] == 32 and complex_row["server_requests_per_s"] == 32000.0
    assert complex_row["server_64_image_images_per_s"] == 500.0 * 64
    assert (
        rows["mnist_cnn"]["tutorial_gpu_ms"] is None
        and rows["mnist_cnn"]["server_64_image_images_per_s"] is None
    )
    report = {"device": "cuda", "gpu": {"gpu0": "NVIDIA H200, 570.1, 143771 MiB"}, "cuda": "confirmed",
              "elapsed_s": 301.5, "budget_s": 480, "table": list(rows.values())}  # fmt: skip
    table = gpu_check.markdown_table(report)
    assert "| cs231n_complex | cuda | 0.40 | 1.00 | 2–5 ms (stated); ours 2.0–5.0× faster |" in table
    assert "NVIDIA H200" in table and "301.5 s (budget 480 s)" in table
    slow = [{**complex_row, "vs_tutorial_gpu": [0.1, 0.25]}]
    assert "2–5 ms (stated); ours 4.0–10.0× slower" in gpu_check.markdown_table({**report, "table": slow})


def test_gpu_check_refuses_figures_from_the_wrong_device():
    local = [_local("mnist_cnn", 64, 0.5, device="cpu")]
    server = [_server("mnist_cnn", 1, 1, 0.3, 1000.0)]
    with pytest.raises(
        gpu_check.CheckFailed, match=r"ran on the wrong device \(asked for cuda\): bench local"
    ):
        gpu_check.check_devices("cuda", local, server)


def test_bench_local_measures_int8_onnx_beside_float(tmp_path):
    """`--backends onnxruntime,onnxruntime_int8 --synthetic`: the QDQ export of the same random
    weights, measured in the same rounds; the float model gets the CPU filter padding, int8 not."""
    from cnnserve.bench.backends import expand_backends
    from cnnserve.bench.local import LocalPlan, run_local
    from cnnserve.bench.timing import RepeatPolicy

    variants = expand_backends("onnxruntime,onnxruntime_int8")
    assert variants == ("onnxruntime", "onnxruntime_int8")
    options = RuntimeOptions(device="cpu", intra_op_threads=1)
    policy = RepeatPolicy(warmup_runs=1, min_runs=3, min_time_s=0.0)
    plan = LocalPlan(("mnist_cnn",), variants, (1, 8), None, options, policy, peak_size=64, peak_repeats=2)
    result = run_local(plan)
    assert [(r.backend, r.batch_size) for r in result.records] == [
        ("onnxruntime", 1), ("onnxruntime", 8), ("onnxruntime_int8", 1), ("onnxruntime_int8", 8)
    ]  # fmt: skip
    assert not result.skipped
    by_backend = {r.backend: r for r in result.records}
    assert by_backend["onnxruntime_int8"].engine == "CPUExecutionProvider"
    assert by_backend["onnxruntime_int8"].flops_per_image == by_backend["onnxruntime"].flops_per_image > 0
    assert by_backend["onnxruntime_int8"].settings["nchwc_padded"] == []
