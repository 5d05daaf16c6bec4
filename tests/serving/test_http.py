"""KServe V2 REST against a real server, driven by tritonclient.http and curl.

The same batchers, statistics and error map as gRPC: the answers must match the model run
in-process, and each error must carry the HTTP status that its gRPC code maps to.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as http
from conftest import ServerProcess
from onnx_models import FASHION_LABELS, images
from tritonclient.utils import InferenceServerException


@pytest.fixture
def client(server: ServerProcess) -> http.InferenceServerClient:
    return http.InferenceServerClient(server.http_target)


def reference(server: ServerProcess, batch: np.ndarray, version: int = 2) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(
        str(server.repository / f"cnn/{version}/model.onnx"), providers=["CPUExecutionProvider"]
    )
    return dict(zip(["logits", "probabilities"], session.run(None, {"images": batch}), strict=True))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_the_model_with_binary_and_json_tensors(
    server: ServerProcess, client: http.InferenceServerClient, binary: bool
) -> None:
    batch = images(5, seed=11)
    tensor = http.InferInput("images", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    outputs = [http.InferRequestedOutput("logits", binary_data=binary)]
    result = client.infer("cnn", [tensor], outputs=outputs, request_id="req-7")
    np.testing.assert_allclose(
        result.as_numpy("logits"), reference(server, batch)["logits"], rtol=1e-5, atol=1e-6
    )
    response = result.get_response()
    assert response["model_version"] == "2" and response["id"] == "req-7"
    assert response["parameters"]["execution_provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")


def test_classification_extension_and_an_explicit_version(
    server: ServerProcess, client: http.InferenceServerClient
) -> None:
    batch = images(3, seed=12)
    tensor = http.InferInput("images", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    wanted = [http.InferRequestedOutput("probabilities", class_count=2)]
    result = client.infer("cnn", [tensor], model_version="1", outputs=wanted)
    top = result.as_numpy("probabilities")
    assert top.shape == (3, 2)
    expected = reference(server, batch, version=1)["probabilities"]
    for row, probabilities in zip(top, expected, strict=True):
        value, index, label = row[0].decode().split(":")
        assert int(index) == int(probabilities.argmax()) and label == FASHION_LABELS[int(index)]
        assert float(value) == pytest.approx(float(probabilities.max()), abs=1e-5)


def test_health_metadata_config_stats_and_index(
    server: ServerProcess, client: http.InferenceServerClient
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cnn") and not client.is_model_ready("corrupt")
    assert client.get_server_metadata()["name"] == "cnnserve"
    metadata = client.get_model_metadata("cnn")
    assert metadata["versions"] == ["1", "2"] and metadata["inputs"][0]["shape"] == [-1, 28, 28, 1]
    config = client.get_model_config("batched")
    assert (
        config["max_batch_size"] == 8 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 300000
    )
    before = client.get_inference_statistics("identity")["model_stats"][0]["inference_count"]
    tensor = http.InferInput("images", [4, 28, 28, 1], "UINT8")
    tensor.set_data_from_numpy(images(4))
    client.infer("identity", [tensor])
    stats = client.get_inference_statistics("identity")["model_stats"][0]
    assert int(stats["inference_count"]) == int(before) + 4
    index = {(e["name"], e.get("version", ""), e.get("state")) for e in client.get_model_repository_index()}
    assert ("cnn", "2", "READY") in index and ("corrupt", "1", "UNAVAILABLE") in index


def test_errors_carry_the_status_their_grpc_code_maps_to(
    server: ServerProcess, client: http.InferenceServerClient
) -> None:
    tensor = http.InferInput("images", [1, 28, 28, 1], "UINT8")
    tensor.set_data_from_numpy(images(1))
    with pytest.raises(InferenceServerException) as raised:
        client.infer("nope", [tensor])
    assert raised.value.status() == "404" and "model 'nope' not found" in raised.value.message()
    wrong = http.InferInput("images", [1, 32, 32, 3], "UINT8")
    wrong.set_data_from_numpy(images(1, shape=(32, 32, 3)))
    with pytest.raises(InferenceServerException) as raised:
        client.infer("cnn", [wrong])
    assert (
        raised.value.status() == "400"
        and "inputs[0].shape: expected [N, 28, 28, 1]" in raised.value.message()
    )
    with pytest.raises(InferenceServerException) as raised:
        client.infer("corrupt", [tensor])
    assert raised.value.status() == "503" and "failed to load" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client.load_model("cnn")
    assert raised.value.status() == "400" and "--model-control explicit" in raised.value.message()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_reaches_the_probes_and_infers_with_plain_json(server: ServerProcess) -> None:
    def curl(*args: str) -> tuple[int, str]:
        result = subprocess.run(
            ["curl", "-s", "-w", "\n%{http_code}", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        body, _, code = result.stdout.rpartition("\n")
        return int(code), body

    base = f"http://{server.http_target}"
    assert curl(f"{base}/v2/health/ready") == (200, json.dumps({"ready": True}))
    batch = images(1, seed=4)
    request = {
        "inputs": [
            {"name": "images", "datatype": "UINT8", "shape": [1, 28, 28, 1], "data": batch.ravel().tolist()}
        ]
    }
    code, body = curl("-X", "POST", f"{base}/v2/models/cnn/infer", "-H", "Content-Type: application/json",
                      "-d", json.dumps(request))  # fmt: skip
    assert code == 200
    logits = next(o for o in json.loads(body)["outputs"] if o["name"] == "logits")
    np.testing.assert_allclose(
        np.array(logits["data"]).reshape(1, 10), reference(server, batch)["logits"], rtol=1e-5
    )
    code, body = curl("-X", "POST", f"{base}/v2/models/cnn/infer", "-d", "{not json")
    assert code == 400 and "request body: not JSON" in json.loads(body)["error"]


def test_explicit_load_and_unload_over_http(repository, start_server) -> None:
    server = start_server("--model-control", "explicit", "--models", "identity")
    client = http.InferenceServerClient(server.http_target)
    assert not client.is_model_ready("cnn")
    client.load_model("cnn")
    assert client.is_model_ready("cnn", "1") and client.is_model_ready("cnn", "2")
    client.unload_model("cnn")
    assert not client.is_model_ready("cnn")
