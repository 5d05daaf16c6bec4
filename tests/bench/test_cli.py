"""`cnnserve bench ...` end to end: outputs written, user errors as one line with exit 2."""

import csv
import json

import pytest

from cnnserve.cli import main
from tests.bench.conftest import PRICED_FLOPS

FAST = ["--warmup-runs", "1", "--min-runs", "2", "--min-time-s", "0", "--peak-size", "128"]


def _one_line_error(capsys, argv, expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("cnnserve bench: error: ") and expected in err[0], err[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model", "resnet50", "--synthetic"], "unknown model 'resnet50'"),
        (["--model", "mnist_cnn", "--synthetic", "--backends", "pytorch"], "unknown backend 'pytorch'"),
        (
            ["--model", "mnist_cnn", "--synthetic", "--batch-sizes", "0"],
            "--batch-sizes takes comma-separated",
        ),
        (["--model", "mnist_cnn", "--synthetic", "--batch-sizes", "1,x"], "received '1,x'"),
        (["--model", "mnist_cnn", "--synthetic", "--device", "tpu"], "unknown --device 'tpu'"),
    ],
)
def test_local_invalid_arguments(capsys, argv, expected):
    _one_line_error(capsys, ["bench", "local", *argv], expected)


def test_local_unknown_model_in_repository(capsys, noop_repository):
    argv = ["bench", "local", "--repository", str(noop_repository), "--model", "nope", *FAST]
    _one_line_error(capsys, argv, "unknown model 'nope'")


def test_server_unreachable_target(capsys, closed_port):
    argv = ["bench", "server", "--target", f"127.0.0.1:{closed_port}", "--model", "tiny",
            "--connect-timeout-s", "0.5"]  # fmt: skip
    _one_line_error(capsys, argv, f"cannot reach 127.0.0.1:{closed_port}")


def test_server_invalid_concurrency(capsys):
    argv = ["bench", "server", "--target", "127.0.0.1:1", "--model", "tiny", "--concurrency", "0"]
    _one_line_error(capsys, argv, "--concurrency takes comma-separated positive integers")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--request-rate", "100", "--concurrency", "4"], "not both"),
        (["--request-rate", "fast"], "--request-rate takes comma-separated positive numbers"),
        (["--request-rate", "100", "--arrivals", "bursty"], "unknown --arrivals 'bursty'"),
        (["--streaming", "--protocol", "cnnserve"], "--streaming is V2's ModelStreamInfer"),
        (["--channels", "0"], "--channels must be >= 1"),
        (["--server-pid", "99999999"], "--server-pid 99999999: no such process on this machine"),
    ],
)
def test_server_invalid_load_options(capsys, extra, expected):
    _one_line_error(
        capsys, ["bench", "server", "--target", "127.0.0.1:1", "--model", "tiny", *extra], expected
    )


def test_server_command_open_loop_streaming_csv(server, tmp_path):
    out = tmp_path / "open.csv"
    argv = ["bench", "server", "--target", server.target, "--model", "tiny", "--protocol", "v2",
            "--request-rate", "50,100", "--arrivals", "poisson", "--streaming", "--channels", "2",
            "--duration", "0.5", "--warmup", "0.2", "--noop-model", "", "--csv", str(out),
            "--server-pid", str(server.process.pid)]  # fmt: skip
    assert main(argv) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["Request Rate"] for r in rows] == ["50.0", "100.0"]
    # The server's CPU over each window: some, and per request, what its share and rate say.
    for row in rows:
        cpu_pct, per_request = float(row["Server CPU %"]), float(row["Server CPU usec/req"])
        assert cpu_pct > 0 and 0 <= float(row["Machine Idle %"]) <= 100
        assert per_request == pytest.approx(1e4 * cpu_pct / float(row["Requests/Second"]), rel=0.05, abs=2)
    assert {(r["Streaming"], r["Channels"], r["Arrivals"], r["Errors"]) for r in rows} == {
        ("1", "2", "poisson", "0")
    }
    assert all(int(r["Client Send"]) >= 0 and r["Client Recv"] != "" for r in rows)


def test_server_command_writes_csv_json_and_plot(server, tmp_path):
    out = tmp_path / "server"
    argv = ["bench", "server", "--target", server.target, "--model", "tiny", "--protocol", "cnnserve",
            "--concurrency", "1,2", "--duration", "0.5", "--warmup", "0.2",
            "--csv", str(out / "s.csv"), "--json", str(out / "s.json"),
            "--plot", str(out / "s.png")]  # fmt: skip
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "s.csv").open()))
    assert [(r["Model"], r["Concurrency"]) for r in rows] == [
        ("tiny", "1"),
        ("tiny", "2"),
        ("noop", "1"),
        ("noop", "2"),
    ]
    records = json.loads((out / "s.json").read_text())
    assert {r["concurrency"] for r in records} == {1, 2}
    assert (out / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_server_command_reports_gflops_from_the_flops_the_server_reports(server, tmp_path):
    out = tmp_path / "priced.json"
    argv = ["bench", "server", "--target", server.target, "--model", "priced", "--protocol", "v2",
            "--concurrency", "1", "--duration", "0.5", "--warmup", "0.2", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    model, noop = json.loads(out.read_text())
    assert model["model"] == "priced" and noop["model"] == "noop"
    assert model["gflops"] == pytest.approx(model["images_per_s"] * PRICED_FLOPS / 1e9)
    # A loopback target: the matmul peak is measured on this machine, so the share is reported.
    peak = model["system"]["matmul_peak"]["gflops"]
    assert model["pct_of_peak"] == pytest.approx(100 * model["gflops"] / peak)
    assert noop["gflops"] is None and noop["pct_of_peak"] is None


def test_noop_model_command(tmp_path, capsys):
    assert main(["bench", "noop-model", "--repository", str(tmp_path), "--shape", "32,32,3"]) == 0
    assert (tmp_path / "noop" / "1" / "model.onnx").is_file()
    _one_line_error(
        capsys, ["bench", "noop-model", "--repository", str(tmp_path), "--shape", "32,32"], "H,W,C"
    )


@pytest.mark.slow
def test_local_synthetic_every_backend(tmp_path, monkeypatch):
    """A zoo model with random weights through fold → ONNX/TFLite, every backend, two batch sizes."""
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        monkeypatch.setenv(name, "0")  # restored afterwards: the handler sets them for TensorFlow
    out = tmp_path / "local"
    argv = ["bench", "local", "--synthetic", "--model", "mnist_cnn", "--batch-sizes", "1,3",
            "--intra-op-threads", "1", *FAST,
            "--json", str(out / "l.json"), "--csv", str(out / "l.csv"),
            "--plot", str(out / "l.png")]  # fmt: skip
    assert main(argv) == 0
    records = json.loads((out / "l.json").read_text())
    backends = {r["backend"] for r in records}
    assert backends == {
        "onnxruntime",
        "tensorflow_folded",
        "tensorflow_unfolded",
        "tflite_float32",
        "tflite_int8",
    }
    for record in records:
        assert record["model"] == "mnist_cnn" and record["device"] == "cpu"
        assert record["batch_size"] in (1, 3)
        assert record["flops_per_image"] > 0 and record["gflops"] > 0 and record["pct_of_peak"] > 0
        assert record["system"]["libraries"]["numpy"]
    assert len(list(csv.DictReader((out / "l.csv").open()))) == 10
    assert (out / "l.png").read_bytes()[:4] == b"\x89PNG"
