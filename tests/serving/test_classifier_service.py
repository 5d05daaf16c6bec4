"""cnnserve.v1.Classifier against a real server subprocess: results, metadata and every error rule."""

from __future__ import annotations

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from conftest import ServerProcess
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx_models import FASHION_LABELS, images

from cnnserve.protos import classifier_pb2 as pb
from cnnserve.protos import classifier_pb2_grpc
from cnnserve.serving.converters import encode_tensor

PROVIDERS = {"CPUExecutionProvider", "CUDAExecutionProvider"}


def reference(
    server: ServerProcess, model: str, batch: np.ndarray, version: int = 1
) -> dict[str, np.ndarray]:
    path = server.repository / model / str(version) / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(None, {"images": batch})
    return {"logits": logits, "probabilities": probabilities}


def stub(server: ServerProcess) -> classifier_pb2_grpc.ClassifierStub:
    return classifier_pb2_grpc.ClassifierStub(server.channel())


def call_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    return caught.value


def test_classify_returns_top_k_labels_and_honest_timing(server: ServerProcess) -> None:
    batch = images(5)
    response = server.client().classify("cnn", batch, top_k=3)
    assert response.model_name == "cnn" and response.model_version == "2"  # newest by default
    expected = reference(server, "cnn", batch, version=2)["probabilities"]
    assert len(response.classifications) == 5
    for row, classification in zip(expected, response.classifications, strict=True):
        best = np.argsort(-row)[:3]
        assert [t.class_index for t in classification.top] == list(best)
        assert [t.label for t in classification.top] == [FASHION_LABELS[i] for i in best]
        np.testing.assert_allclose([t.score for t in classification.top], row[best], rtol=1e-5)
    timing = response.timing
    assert timing.execution_provider in PROVIDERS
    assert timing.batch_size == 5 and timing.batches == 1
    assert timing.compute_us > 0 and timing.total_us >= timing.queue_us + timing.compute_us


def test_versions_are_served_separately(server: ServerProcess) -> None:
    batch = images(2)
    client = server.client()
    for version in (1, 2):
        response = client.predict("cnn", batch, version=str(version))
        assert response.model_version == str(version)
        logits = np.frombuffer(response.logits.data, dtype=np.float32).reshape(response.logits.shape)
        np.testing.assert_allclose(logits, reference(server, "cnn", batch, version)["logits"], rtol=1e-5)


def test_predict_returns_raw_logits_as_bytes(server: ServerProcess) -> None:
    batch = images(3)
    response = server.client().predict("identity", batch)
    assert response.logits.dtype == "float32" and list(response.logits.shape) == [3, 10]
    logits = np.frombuffer(response.logits.data, dtype=np.float32).reshape(3, 10)
    np.testing.assert_array_equal(logits, batch.reshape(3, -1)[:, :10].astype(np.float32))


def test_metadata_and_model_list(server: ServerProcess) -> None:
    client = server.client()
    metadata = client.metadata("cnn")
    assert metadata.model_version == "2" and list(metadata.versions) == ["1", "2"]
    assert metadata.platform == "onnxruntime_onnx"
    assert [(t.name, t.dtype, list(t.shape)) for t in metadata.inputs] == [
        ("images", "uint8", [-1, 28, 28, 1])
    ]
    assert [t.name for t in metadata.outputs] == ["logits", "probabilities"]
    assert list(metadata.class_labels) == list(FASHION_LABELS)
    assert metadata.max_batch_size == 8 and metadata.max_queue_delay_us == 2000
    assert metadata.execution_provider in PROVIDERS
    models = {m.name: m for m in client.list_models().models}
    assert set(models) == {"batched", "cnn", "corrupt", "future_opset", "identity"}
    assert [v.state for v in models["cnn"].versions] == ["READY", "READY"]
    assert models["corrupt"].versions[0].state == "UNAVAILABLE"
    assert "Protobuf parsing failed" in models["corrupt"].versions[0].reason
    assert "opset" in models["future_opset"].versions[0].reason.lower()


def test_health_and_reflection(server: ServerProcess) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = server.channel()
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "cnnserve.v1.Classifier", "inference.GRPCInferenceService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for answer in answers for s in answer.list_services_response.service}
    assert {"cnnserve.v1.Classifier", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_server_process_never_loads_tensorflow(server: ServerProcess) -> None:
    assert server.process is not None
    maps = open(f"/proc/{server.process.pid}/maps").read()  # noqa: SIM115 - tiny, read once
    assert "onnxruntime" in maps  # the check can see libraries at all
    assert "tensorflow" not in maps and "libtensorflow" not in maps


def test_serving_modules_import_no_tensorflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys, cnnserve.cli, cnnserve.serving.server, cnnserve.serving.cli, cnnserve.serving.client\n"
        "cnnserve.cli.build_parser()\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]\n"
        "sys.exit(f'imported {heavy}' if heavy else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# --- one test per error rule -------------------------------------------------------------


def request(model: str = "cnn", **tensor) -> pb.ClassifyRequest:
    images_tensor = encode_tensor(images(2))
    for key, value in tensor.items():
        if key == "shape":
            del images_tensor.shape[:]
            images_tensor.shape.extend(value)
        else:
            setattr(images_tensor, key, value)
    return pb.ClassifyRequest(model_name=model, images=images_tensor)


@pytest.mark.parametrize(
    ("classify", "code", "message"),
    [
        (request(model="nope"), grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
        (request(model="../cnn"), grpc.StatusCode.NOT_FOUND, "model '../cnn' not found"),
        (
            pb.ClassifyRequest(model_name="cnn", model_version="7", images=encode_tensor(images(1))),
            grpc.StatusCode.NOT_FOUND,
            "model 'cnn' has no version 7; versions: 1, 2",
        ),
        (
            pb.ClassifyRequest(model_name="cnn", model_version="latest", images=encode_tensor(images(1))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "version: expected a positive integer or empty, received 'latest'",
        ),
        (
            request(dtype="float32"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "images.dtype: expected 'uint8', received 'float32'",
        ),
        (
            request(shape=[2, 28, 28], data=bytes(2 * 28 * 28)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "images.shape: expected rank 4 [N, 28, 28, 1] for model 'cnn', received rank 3 [2, 28, 28]",
        ),
        (
            request(shape=[2, 32, 32, 1], data=bytes(2 * 32 * 32)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "images.shape: expected [N, 28, 28, 1] for model 'cnn', received [2, 32, 32, 1]",
        ),
        (
            request(data=bytes(100)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "images.data: expected 1568 bytes for uint8 [2, 28, 28, 1], received 100",
        ),
        (
            request(shape=[0, 28, 28, 1], data=b""),
            grpc.StatusCode.INVALID_ARGUMENT,
            "images.shape[0]: empty batch; expected at least 1 image",
        ),
        (
            request(shape=[65, 28, 28, 1], data=bytes(65 * 784)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "images.shape[0]: too many images: 65 > 64 (--max-request-images)",
        ),
        (pb.ClassifyRequest(model_name="cnn"), grpc.StatusCode.INVALID_ARGUMENT, "images: missing"),
        (request(model="corrupt"), grpc.StatusCode.UNAVAILABLE, "model 'corrupt' version 1 failed to load"),
    ],
    ids=[
        "unknown-model",
        "path-like-name",
        "unknown-version",
        "bad-version",
        "dtype",
        "rank",
        "image-size",
        "byte-length",
        "empty-batch",
        "too-many-images",
        "missing-images",
        "failed-model",
    ],
)
def test_bad_requests_get_the_right_code_and_message(
    server: ServerProcess, classify: pb.ClassifyRequest, code: grpc.StatusCode, message: str
) -> None:
    error = call_error(stub(server).Classify, classify)
    assert error.code() == code
    assert message in error.details()


@pytest.mark.parametrize("top_k", [11, -1])
def test_top_k_out_of_range(server: ServerProcess, top_k: int) -> None:
    classify = pb.ClassifyRequest(model_name="cnn", images=encode_tensor(images(1)), top_k=top_k)
    error = call_error(stub(server).Classify, classify)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"top_k: expected 1..10, received {top_k}"


def test_unknown_model_metadata_is_not_found(server: ServerProcess) -> None:
    error = call_error(stub(server).GetModelMetadata, pb.GetModelMetadataRequest(model_name="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_oversized_message_is_resource_exhausted_and_the_server_survives(server: ServerProcess) -> None:
    big = pb.ClassifyRequest(model_name="cnn", images=encode_tensor(np.zeros((2000, 28, 28, 1), np.uint8)))
    assert big.ByteSize() > 1024 * 1024  # the server runs with --max-message-mb 1
    error = call_error(stub(server).Classify, big)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert server.client().classify("cnn", images(1)).classifications
