"""What operators read: latency histograms per version, process metrics, the provider in every answer."""

from __future__ import annotations

from urllib.request import urlopen

import numpy as np
import tritonclient.grpc as triton
from conftest import ServerProcess
from onnx_models import images
from prometheus_client.parser import text_string_to_metric_families


def samples(server: ServerProcess) -> list:
    with urlopen(server.metrics_url, timeout=10) as response:
        return [s for f in text_string_to_metric_families(response.read().decode()) for s in f.samples]


def value(found: list, name: str, **labels: str) -> float:
    matching = [
        s.value for s in found if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert matching, (name, labels)
    return sum(matching)


def test_latency_histograms_count_every_successful_request(start_server) -> None:
    server = start_server("--models", "identity")
    client = triton.InferenceServerClient(server.target)
    tensor = triton.InferInput("images", [2, 28, 28, 1], "UINT8")
    tensor.set_data_from_numpy(images(2))
    for _ in range(25):
        result = client.infer("identity", [tensor])
    assert result.get_response(as_json=True)["parameters"]["execution_provider"]["string_param"] in (
        "CPUExecutionProvider",
        "CUDAExecutionProvider",
    )
    found = samples(server)
    labels = {"model": "identity", "version": "1"}
    successes = value(found, "nv_inference_request_success_total", **labels)
    assert successes == 25
    for histogram in (
        "cnnserve_request_duration_us",
        "cnnserve_queue_duration_us",
        "cnnserve_compute_infer_duration_us",
    ):
        buckets = sorted(
            (
                (float(s.labels["le"]), s.value)
                for s in found
                if s.name == f"{histogram}_bucket" and s.labels["model"] == "identity"
            ),
        )
        counts = [count for _, count in buckets]
        assert counts[-1] == successes and counts == sorted(counts)  # cumulative, ending at every request
        assert value(found, f"{histogram}_count", **labels) == successes
        assert value(found, f"{histogram}_sum", **labels) > 0
    request_sum = value(found, "cnnserve_request_duration_us_sum", **labels)
    compute_sum = value(found, "cnnserve_compute_infer_duration_us_sum", **labels)
    assert request_sum >= compute_sum  # a request's time in the server includes its compute
    assert value(found, "process_resident_memory_bytes") > 50 * 2**20  # the process collector
    assert value(found, "process_open_fds") > 0


def test_the_supervisor_reports_each_worker_process(tmp_path, start_server) -> None:
    from onnx_models import identity_model, write_model

    repository = tmp_path / "models"
    write_model(repository, "identity", identity_model())
    server = start_server("--workers", "2", models_dir=repository)
    found = samples(server)
    workers = {s.labels["worker"] for s in found if s.name == "cnnserve_worker_resident_memory_bytes"}
    assert workers == {"0", "1"}
    assert all(value(found, "cnnserve_worker_resident_memory_bytes", worker=w) > 50 * 2**20 for w in workers)
    assert np.all([value(found, "cnnserve_worker_cpu_seconds_total", worker=w) > 0 for w in workers])


def test_json_logs_with_one_access_line_per_request_and_its_id(start_server) -> None:
    import json

    import grpc
    import tritonclient.http as http

    from cnnserve.protos import classifier_pb2 as pb
    from cnnserve.serving.converters import encode_tensor

    server = start_server("--models", "identity", "--log-format", "json", "--access-log")
    client = triton.InferenceServerClient(server.target)
    tensor = triton.InferInput("images", [2, 28, 28, 1], "UINT8")
    tensor.set_data_from_numpy(images(2))
    client.infer("identity", [tensor], request_id="v2-call-1")
    with grpc.insecure_channel(server.target) as channel:
        predict = channel.unary_unary("/cnnserve.v1.Classifier/Predict")
        request = pb.PredictRequest(
            model_name="identity", images=encode_tensor(images(3))
        ).SerializeToString()
        _, call = predict.with_call(request, metadata=(("x-request-id", "mine-42"),), timeout=30)
        assert dict(call.trailing_metadata())["x-request-id"] == "mine-42"
        _, call = predict.with_call(request, timeout=30)
        generated = dict(call.trailing_metadata())["x-request-id"]
        bad = pb.PredictRequest(
            model_name="identity", images=pb.Tensor(dtype="uint8", shape=[1, 2], data=b"ab")
        )
        for _ in range(50):
            try:
                predict(bad.SerializeToString(), timeout=30)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    rest = http.InferenceServerClient(server.http_target)
    rest_input = http.InferInput("images", [1, 28, 28, 1], "UINT8")
    rest_input.set_data_from_numpy(images(1))
    rest.infer("identity", [rest_input], request_id="over-http")

    entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert entries and all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    access = {e["request_id"]: e for e in entries if e["logger"] == "cnnserve.access"}
    v2 = access["v2-call-1"]
    assert (v2["protocol"], v2["model"], v2["version"], v2["images"], v2["status"]) == (
        "grpc",
        "identity",
        "1",
        2,
        "OK",
    )
    assert v2["total_us"] >= v2["compute_us"] >= 0 and v2["queue_us"] >= 0
    assert access["mine-42"]["images"] == 3 and access[generated]["status"] == "OK" and len(generated) == 16
    assert access["over-http"]["protocol"] == "http" and access["over-http"]["images"] == 1
    errors = [e for e in entries if e.get("status") == "INVALID_ARGUMENT"]
    assert 1 <= len(errors) <= 2  # 50 bad requests, rate-limited to a line a second
    assert "images.shape" in errors[0]["error"]


def test_small_runs_are_a_counter_that_adds_up_over_workers_and_survives_json() -> None:
    """`cnnserve_small_run_count_total`: each version's one-thread-session runs, summed over
    workers; a 0.1.0 worker's report (no such field) reads as 0."""
    from cnnserve.serving.metrics import ServingCollector
    from cnnserve.serving.registry import ModelState
    from cnnserve.serving.server_report import ServerReport, VersionReport
    from cnnserve.serving.stats import Snapshot

    def report(small_runs: int) -> ServerReport:
        version = VersionReport(
            "cnn", "1", ModelState.READY, "CPUExecutionProvider", 8, 0, 0, Snapshot(), 1, small_runs
        )
        return ServerReport((version,))

    merged = ServerReport.merged([ServerReport.from_json(report(3).to_json()), report(4)])
    assert merged.versions[0].small_runs == 7
    found = [s for family in ServingCollector(lambda: merged).collect() for s in family.samples]
    assert value(found, "cnnserve_small_run_count_total", model="cnn", version="1") == 7
    old = report(5).to_json().replace(', "small_runs": 5', "")
    assert "small_runs" not in old and ServerReport.from_json(old).versions[0].small_runs == 0
