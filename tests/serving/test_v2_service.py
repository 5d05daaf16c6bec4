"""The KServe V2 service, driven by the official tritonclient.grpc against a real server.

This process imports only tritonclient's copy of the `inference.*` messages (see
protos/grpc_service.proto for why ours must stay in the server process).
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.request import urlopen

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from conftest import ServerProcess
from onnx_models import FASHION_LABELS, cnn_model, images, write_model
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from cnnserve.contracts.cpu_limits import available_cores


@pytest.fixture
def client(server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.target)


def image_input(batch: np.ndarray, name: str = "images", datatype: str = "UINT8") -> triton.InferInput:
    tensor = triton.InferInput(name, list(batch.shape), datatype)
    tensor.set_data_from_numpy(batch)
    return tensor


def test_liveness_readiness_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cnn") and client.is_model_ready("cnn", "1")
    assert not client.is_model_ready("corrupt") and not client.is_model_ready("nope")
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "cnnserve" and "classification" in metadata["extensions"]


def test_model_metadata_and_config_as_triton_reports_them(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("cnn", as_json=True)
    assert metadata["versions"] == ["1", "2"] and metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": ["-1", "28", "28", "1"]}]
    assert [o["name"] for o in metadata["outputs"]] == ["logits", "probabilities"]
    config = client.get_model_config("batched", as_json=True)["config"]
    assert config["max_batch_size"] == 8
    assert config["input"][0]["dims"] == ["28", "28", "1"]  # without the batch dimension
    assert config["input"][0]["data_type"] == "TYPE_UINT8"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "300000"
    assert config["instance_group"][0]["kind"] in ("KIND_CPU", "KIND_GPU")
    assert config["parameters"]["execution_provider"]["string_value"] in (
        "CPUExecutionProvider",
        "CUDAExecutionProvider",
    )


def test_model_infer_with_raw_tensors(server: ServerProcess, client: triton.InferenceServerClient) -> None:
    batch = images(4)
    result = client.infer("cnn", [image_input(batch)], model_version="1", request_id="req-7")
    session = ort.InferenceSession(
        str(server.repository / "cnn/1/model.onnx"), providers=["CPUExecutionProvider"]
    )
    logits, probabilities = session.run(None, {"images": batch})
    np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=1e-5)
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, rtol=1e-5)
    response = result.get_response()
    assert response.id == "req-7" and response.model_version == "1"


def test_requested_output_and_classification_extension(client: triton.InferenceServerClient) -> None:
    batch = images(2)
    outputs = [triton.InferRequestedOutput("logits", class_count=3)]
    result = client.infer("identity", [image_input(batch)], outputs=outputs)
    strings = result.as_numpy("logits")
    assert strings.shape == (2, 3)
    pixels = batch.reshape(2, -1)[:, :10]
    for row, entries in zip(pixels, strings, strict=True):
        best = np.argsort(-row.astype(float), kind="stable")[:3]
        decoded = [entry.decode().split(":") for entry in entries]
        assert [int(index) for _, index, _ in decoded] == list(best)
        assert [label for _, _, label in decoded] == [FASHION_LABELS[i] for i in best]
        assert [float(value) for value, _, _ in decoded] == [float(row[i]) for i in best]
    assert result.as_numpy("probabilities") is None  # only what was requested


@pytest.mark.parametrize(
    ("model", "inputs", "status", "message"),
    [
        ("nope", lambda: [image_input(images(1))], "StatusCode.NOT_FOUND", "model 'nope' not found"),
        (
            "cnn",
            lambda: [image_input(images(1).astype(np.float32), datatype="FP32")],
            "StatusCode.INVALID_ARGUMENT",
            "inputs[0].datatype: expected UINT8, received 'FP32'",
        ),
        (
            "cnn",
            lambda: [image_input(images(1), name="pixels")],
            "StatusCode.INVALID_ARGUMENT",
            "inputs[0].name: expected 'images', received 'pixels'",
        ),
        (
            "cnn",
            lambda: [image_input(np.zeros((1, 32, 32, 1), np.uint8))],
            "StatusCode.INVALID_ARGUMENT",
            "inputs[0].shape: expected [N, 28, 28, 1] for model 'cnn', received [1, 32, 32, 1]",
        ),
    ],
    ids=["unknown-model", "dtype", "input-name", "image-size"],
)
def test_infer_errors_reach_tritonclient(
    client: triton.InferenceServerClient, model: str, inputs, status: str, message: str
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, inputs())
    assert caught.value.status() == status
    assert message in caught.value.message()


def test_classification_count_out_of_range(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(
            "cnn", [image_input(images(1))], outputs=[triton.InferRequestedOutput("logits", class_count=11)]
        )
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert (
        "outputs[0].parameters['classification']: expected an int64 in 1..10, received 11"
        in caught.value.message()
    )


def test_streaming_infer(client: triton.InferenceServerClient) -> None:
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(4):
            client.async_stream_infer("identity", [image_input(images(1, seed=i))], request_id=str(i))
        client.async_stream_infer("nope", [image_input(images(1))], request_id="bad")
        received = [answers.get(timeout=30) for _ in range(5)]
    finally:
        client.stop_stream()
    good = {r.get_response().id: r.as_numpy("logits") for r, e in received if e is None}
    assert sorted(good) == ["0", "1", "2", "3"]
    for i in range(4):
        expected = images(1, seed=i).reshape(1, -1)[:, :10].astype(np.float32)
        np.testing.assert_array_equal(good[str(i)], expected)
    errors = [e for _, e in received if e is not None]
    assert len(errors) == 1 and "model 'nope' not found" in errors[0].message()


def test_repository_index_reports_failed_models(client: triton.InferenceServerClient) -> None:
    index = client.get_model_repository_index(as_json=True)["models"]
    states = {(m["name"], m.get("version", "")): m.get("state", "") for m in index}
    assert states[("cnn", "2")] == "READY"
    assert states[("corrupt", "1")] == "UNAVAILABLE"


def scrape(server: ServerProcess) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} from the server's /metrics."""
    with urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_concurrent_single_image_requests_are_batched_and_unchanged(server: ServerProcess) -> None:
    """8 concurrent one-image requests on a model with max_batch_size 8 ride in shared batches."""
    batch = images(8, seed=3)
    expected = batch.reshape(8, -1)[:, :10].astype(np.float32)

    def one(i: int) -> np.ndarray:
        own = triton.InferenceServerClient(server.target)
        return own.infer("batched", [image_input(batch[i : i + 1])]).as_numpy("logits")

    before = triton.InferenceServerClient(server.target).get_inference_statistics("batched", as_json=True)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(8)))
    np.testing.assert_array_equal(np.concatenate(results), expected)

    stats = triton.InferenceServerClient(server.target).get_inference_statistics("batched", as_json=True)
    model_stats = stats["model_stats"][0]
    executed = int(model_stats["execution_count"]) - int(before["model_stats"][0].get("execution_count", 0))
    inferences = int(model_stats["inference_count"]) - int(before["model_stats"][0].get("inference_count", 0))
    assert inferences == 8
    assert executed < 8, "no two requests shared a batch"
    assert max(int(b["batch_size"]) for b in model_stats["batch_stats"]) > 1
    assert int(model_stats["inference_stats"]["success"]["count"]) >= 8
    assert int(model_stats["inference_stats"]["queue"]["ns"]) > 0

    metrics = scrape(server)

    def metric(name: str, **extra: str) -> float:
        return metrics[(name, frozenset({"model": "batched", "version": "1", **extra}.items()))]

    assert metric("nv_inference_count_total") == int(model_stats["inference_count"])
    assert metric("nv_inference_exec_count_total") == int(model_stats["execution_count"])
    assert metric("nv_inference_request_success_total") == int(
        model_stats["inference_stats"]["success"]["count"]
    )
    assert metric("nv_inference_request_failure_total", reason="REJECTED") == 0
    assert metric("cnnserve_batch_size_bucket", le="1") < metric("cnnserve_batch_size_bucket", le="+Inf")
    assert metric("cnnserve_batch_size_count") == int(model_stats["execution_count"])
    assert metric("cnnserve_batch_size_sum") == int(model_stats["inference_count"])
    assert metric("nv_inference_pending_request_count") == 0
    assert metric("nv_inference_queue_duration_us_total") > 0
    assert metric("nv_inference_compute_infer_duration_us_total") > 0
    assert metric("cnnserve_batch_compute_duration_us_count") == int(model_stats["execution_count"])
    info = [dict(labels) for name, labels in metrics if name == "cnnserve_model_info"]
    batched = next(labels for labels in info if labels["model"] == "batched")
    assert batched["execution_provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert batched["state"] == "READY"


def test_instances_from_config_json_or_the_flag_serve_the_same_logits(start_server, tmp_path) -> None:
    models = tmp_path / "models"
    write_model(models, "two", cnn_model(seed=3), max_batch_size=64, instance_count=2)
    write_model(models, "three", cnn_model(seed=4), max_batch_size=64)
    server = start_server("--instances", "three=3", models_dir=models)
    client = triton.InferenceServerClient(server.target)
    for name, count in (("two", 2), ("three", 3)):  # config.json's count; the flag's for one model
        config = client.get_model_config(name, as_json=True)["config"]
        assert config["instance_group"][0]["count"] == count
        threads = max(1, available_cores() // count)
        instances = f"({count} instances, {threads} intra-op thread(s) each"
        loaded = f"{name} version 1 on CPUExecutionProvider {instances}"
        assert loaded in server.log()
    assert "max_queue_delay=2.0 ms, no inline runs, warmed batch sizes 1-64" in server.log()
    metrics = scrape(server)
    for name, count in (("two", 2), ("three", 3)):
        labels = frozenset({"model": name, "version": "1"}.items())
        assert metrics[("cnnserve_model_instances", labels)] == count
    session = ort.InferenceSession(str(models / "two/1/model.onnx"), providers=["CPUExecutionProvider"])
    batch = images(40)  # split across the instances, rows joined in order
    expected, _ = session.run(None, {"images": batch})
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: client.infer("two", [image_input(batch)]), range(8)))
    for result in results:
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)
    assert server.stop() == 0


def test_an_idle_cheap_model_answers_one_request_at_a_time_inline(start_server, tmp_path) -> None:
    """Requests one after another, seconds apart in model time: after the first (which teaches the
    batcher the cost), they run on the event loop's thread, with the session's logits; with
    --inline-max-us cheap=0 (the per-model form) none does, nor with config.json's
    "inline_max_us": 0 (a flag for every model still overrides it)."""
    models = tmp_path / "models"
    write_model(models, "cheap", cnn_model(seed=5), max_batch_size=8, max_queue_delay_ms=0)
    session = ort.InferenceSession(str(models / "cheap/1/model.onnx"), providers=["CPUExecutionProvider"])
    batch = images(12, seed=6)
    expected, _ = session.run(None, {"images": batch})
    label = frozenset({"model": "cheap", "version": "1"}.items())
    config_file = models / "cheap" / "config.json"
    written = json.loads(config_file.read_text())
    cases = [
        ((), None, 8),
        (("--inline-max-us", "cheap=0"), None, 0),
        ((), 0, 0),
        (("--inline-max-us", "1000"), 0, 8),
        (("--inline-under-load", "off"), None, 8),
    ]
    for flags, in_config, inline_at_least in cases:
        config = written if in_config is None else {**written, "inline_max_us": in_config}
        config_file.write_text(json.dumps(config))
        server = start_server(*flags, models_dir=models)
        client = triton.InferenceServerClient(server.target)
        for i in range(12):
            got = client.infer("cheap", [image_input(batch[i : i + 1])]).as_numpy("logits")
            np.testing.assert_allclose(got, expected[i : i + 1], rtol=1e-5, atol=1e-6)
        when = "when idle" if "--inline-under-load" in flags else "when idle and under load"
        started = f"inline runs up to 1000 µs {when}" if inline_at_least else "no inline runs"
        assert f"max_queue_delay=0.0 ms, {started}" in server.log()
        metrics = scrape(server)
        inline = metrics[("cnnserve_inline_execution_count_total", label)]
        assert metrics[("nv_inference_exec_count_total", label)] == 12
        if inline_at_least:
            assert inline_at_least <= inline <= 11, (flags, in_config)  # not the first: cost unknown
        else:
            assert inline == 0
        assert server.stop() == 0


def test_inline_runs_on_several_threads_get_the_gap_probe_and_say_what_it_chose(
    start_server, tmp_path
) -> None:
    """With two intra-op threads the start-up line names the session inline runs take and the two
    times the probe measured; the inline answers are the model's logits. With --inline-max-us 0
    there is nothing to probe, and the line says no more than before."""
    models = tmp_path / "models"
    write_model(models, "cnn", cnn_model(seed=9), max_batch_size=8, max_queue_delay_ms=0)
    session = ort.InferenceSession(str(models / "cnn/1/model.onnx"), providers=["CPUExecutionProvider"])
    batch = images(6, seed=10)
    expected, _ = session.run(None, {"images": batch})
    label = frozenset({"model": "cnn", "version": "1"}.items())
    probed = re.compile(
        r"2 intra-op thread\(s\), inline runs on (one intra-op thread|2 intra-op threads) "
        r"\(after a 1 ms idle gap: \d+ µs on one, \d+ µs on 2\)"
    )
    # The largest limit and a pause between requests longer than it: a run slowed by the other
    # tests on the machine still counts as idle-model work, so the inline path is taken for sure.
    for flags, inline in (("--inline-max-us", "10000"), True), (("--inline-max-us", "0"), False):
        server = start_server("--cpu-threads", "2", *flags, models_dir=models)
        client = triton.InferenceServerClient(server.target)
        for i in range(len(batch)):
            time.sleep(0.02)
            got = client.infer("cnn", [image_input(batch[i : i + 1])]).as_numpy("logits")
            np.testing.assert_allclose(got, expected[i : i + 1], rtol=1e-5, atol=1e-6)
        assert bool(probed.search(server.log())) is inline, server.log()
        ran_inline = scrape(server)[("cnnserve_inline_execution_count_total", label)]
        assert ran_inline >= 1 if inline else ran_inline == 0
        assert server.stop() == 0


def test_small_runs_get_a_one_thread_session_unless_turned_off(start_server, tmp_path) -> None:
    """With two intra-op threads and `--small-run-session-us 0` the server opens the one-thread
    session for small runs (and says so), and with every core kept busy (two spinning processes)
    the worker's runs take it, which `cnnserve_small_run_count_total` counts; with `off`, or the
    default 1000 µs for this cheap model, none. All answer the model's logits."""
    models = tmp_path / "models"
    write_model(models, "cnn", cnn_model(seed=7), max_batch_size=8)
    session = ort.InferenceSession(str(models / "cnn/1/model.onnx"), providers=["CPUExecutionProvider"])
    batch = images(3, seed=8)
    expected, _ = session.run(None, {"images": batch})
    small = "runs under 8 images on one thread while the cores are busy"
    label = frozenset({"model": "cnn", "version": "1"}.items())
    cases = ((("--small-run-session-us", "0"), True), (("--small-run-session-us", "off"), False), ((), False))
    for flags, opened in cases:
        server = start_server("--cpu-threads", "2", "--inline-max-us", "0", *flags, models_dir=models)
        client = triton.InferenceServerClient(server.target)
        # Only where the session exists (without it the count is 0 however busy the cores are):
        # the spinners take every core from whatever else runs beside this test.
        spinner = [sys.executable, "-c", "while True: pass"]
        spinners = [subprocess.Popen(spinner) for _ in range(os.cpu_count() or 2)] if opened else []
        try:
            for _ in range(8):  # the load reading covers the last tenth of a second: spaced out
                got = client.infer("cnn", [image_input(batch)]).as_numpy("logits")
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
                time.sleep(0.15)
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
        assert (small in server.log()) is opened, flags
        small_runs = scrape(server)[("cnnserve_small_run_count_total", label)]
        assert small_runs >= 1 if opened else small_runs == 0, (flags, small_runs)
        assert server.stop() == 0


def test_instances_out_of_range_is_refused_with_its_flag(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cnnserve", "serve", "--repository", str(tmp_path), "--instances", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "--instances 0: must be between 1 and 64" in done.stderr
    assert "Traceback" not in done.stderr
