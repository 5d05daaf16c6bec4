"""Clients the project did not write, sending what a careless or hostile client sends.

Raw `grpc` channels carry hand-made bytes (Triton's own messages from tritonclient, or garbage),
so nothing here depends on our client code. Every answer is a specific status with a message
that names the problem; none is UNKNOWN or INTERNAL, and the server log never holds a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.service_pb2 as triton_pb
from conftest import ServerProcess
from onnx_models import images
from tritonclient.utils import InferenceServerException

from cnnserve.protos import classifier_pb2 as pb
from cnnserve.serving.converters import encode_tensor

GARBAGE = b"\xff" * 16  # a 16-byte message no protobuf parser accepts
HUGE = 100_000


@pytest.fixture(scope="module")
def target(repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(repository, tmp_path_factory.mktemp("hostile"), "--models", "cnn,identity")
    process.start()
    yield process
    process.kill()
    assert "Traceback" not in process.log(), process.log()


def unary_error(server: ServerProcess, method: str, request: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary(method)(request, timeout=30)
    return raised.value


def v2_infer_bytes(**fields: object) -> bytes:
    batch = images(1, seed=1)
    request = triton_pb.ModelInferRequest(model_name="cnn", **fields)
    request.inputs.add(name="images", datatype="UINT8", shape=list(batch.shape))
    request.raw_input_contents.append(batch.tobytes())
    return request.SerializeToString()


@pytest.mark.parametrize(
    ("method", "message_type"),
    [
        ("/inference.GRPCInferenceService/ModelInfer", "inference.ModelInferRequest"),
        ("/inference.GRPCInferenceService/ServerLive", "inference.ServerLiveRequest"),
        ("/inference.GRPCInferenceService/RepositoryIndex", "inference.RepositoryIndexRequest"),
        ("/cnnserve.v1.Classifier/Classify", "cnnserve.v1.ClassifyRequest"),
        ("/cnnserve.v1.Classifier/Predict", "cnnserve.v1.PredictRequest"),
        ("/grpc.health.v1.Health/Check", "grpc.health.v1.HealthCheckRequest"),
    ],
)
def test_undecodable_unary_requests_are_invalid_argument(
    target: ServerProcess, method: str, message_type: str
) -> None:
    error = unary_error(target, method, GARBAGE)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"could not parse the request as {message_type}" in error.details()


def test_undecodable_messages_on_streams_end_them_with_invalid_argument(target: ServerProcess) -> None:
    with grpc.insecure_channel(target.target) as channel:
        watch = channel.unary_stream("/grpc.health.v1.Health/Watch")(GARBAGE, timeout=30)
        with pytest.raises(grpc.RpcError) as raised:
            list(watch)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        reflection = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        with pytest.raises(grpc.RpcError) as raised:
            list(reflection(iter([GARBAGE]), timeout=30))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "grpc.reflection.v1alpha.ServerReflectionRequest" in raised.value.details()

        # One good request, then garbage: the good one is answered, then the stream ends at once
        # with the status (it used to hang until the client's deadline).
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            response_deserializer=triton_pb.ModelStreamInferResponse.FromString,
        )
        responses = stream(iter([v2_infer_bytes(id="good"), GARBAGE]), timeout=30)
        received = []
        with pytest.raises(grpc.RpcError) as raised:
            for response in responses:
                received.append(response)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inference.ModelInferRequest" in raised.value.details()
        assert [r.infer_response.id for r in received] == ["good"] and not received[0].error_message


def test_a_flood_of_garbage_is_logged_in_a_few_bounded_lines(target: ServerProcess) -> None:
    before = target.log()
    with grpc.insecure_channel(target.target) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for _ in range(300):
            with pytest.raises(grpc.RpcError) as raised:
                infer(GARBAGE, timeout=30)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    added = target.log()[len(before) :]
    lines = [line for line in added.splitlines() if "could not parse" in line]
    assert len(lines) <= 2, lines  # one per 10 s per method, whatever the rate
    assert all(len(line) < 500 for line in lines)
    assert "Traceback" not in added


@pytest.mark.parametrize("version", ["²", "١", "9" * 5000, "01", "-1"])
def test_version_strings_that_are_not_ascii_integers(target: ServerProcess, version: str) -> None:
    request = pb.PredictRequest(model_name="cnn", model_version=version, images=encode_tensor(images(1)))
    error = unary_error(target, "/cnnserve.v1.Classifier/Predict", request.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "version: expected a positive integer or empty" in error.details()
    assert len(error.details()) < 300
    if len(version) > 100:
        assert "characters, cut" in error.details()

    client = triton.InferenceServerClient(target.target)
    tensor = triton.InferInput("images", [1, 28, 28, 1], "UINT8")
    tensor.set_data_from_numpy(images(1))
    with pytest.raises(InferenceServerException) as raised:
        client.infer("cnn", [tensor], model_version=version)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_shapes_of_absurd_rank_are_invalid_argument(target: ServerProcess) -> None:
    shape = [1] * 65
    request = pb.PredictRequest(model_name="cnn", images=pb.Tensor(dtype="uint8", shape=shape, data=b"\0"))
    error = unary_error(target, "/cnnserve.v1.Classifier/Predict", request.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images.shape: rank 65 is over the supported 8" in error.details()

    v2 = triton_pb.ModelInferRequest(model_name="cnn")
    v2.inputs.add(name="images", datatype="UINT8", shape=shape)
    v2.raw_input_contents.append(b"\0")
    error = unary_error(target, "/inference.GRPCInferenceService/ModelInfer", v2.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[0].shape: rank 65 is over the supported 8" in error.details()


def test_huge_strings_are_echoed_cut_so_the_status_reaches_the_client(target: ServerProcess) -> None:
    name = pb.PredictRequest(model_name="m" * HUGE, images=encode_tensor(images(1)))
    error = unary_error(target, "/cnnserve.v1.Classifier/Predict", name.SerializeToString())
    assert error.code() == grpc.StatusCode.NOT_FOUND  # not RESOURCE_EXHAUSTED
    assert "characters, cut" in error.details() and len(error.details()) < 500

    version = pb.PredictRequest(model_name="cnn", model_version="1" * HUGE, images=encode_tensor(images(1)))
    error = unary_error(target, "/cnnserve.v1.Classifier/Predict", version.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "characters, cut" in error.details()

    batch = images(1)
    wrong_input = triton_pb.ModelInferRequest(model_name="cnn")
    wrong_input.inputs.add(name="x" * HUGE, datatype="UINT8", shape=list(batch.shape))
    wrong_input.raw_input_contents.append(batch.tobytes())
    error = unary_error(target, "/inference.GRPCInferenceService/ModelInfer", wrong_input.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[0].name: expected 'images'" in error.details() and "characters, cut" in error.details()

    wrong_output = triton_pb.ModelInferRequest.FromString(v2_infer_bytes())
    wrong_output.outputs.add(name="y" * HUGE)
    error = unary_error(
        target, "/inference.GRPCInferenceService/ModelInfer", wrong_output.SerializeToString()
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "characters, cut" in error.details()


def test_raw_and_typed_contents_together_are_refused_as_triton_does(target: ServerProcess) -> None:
    request = triton_pb.ModelInferRequest.FromString(v2_infer_bytes())
    request.inputs[0].contents.uint_contents.extend([0] * 5)  # the wrong count, too
    error = unary_error(target, "/inference.GRPCInferenceService/ModelInfer", request.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[0].contents: must not be set when raw_input_contents is used" in error.details()

    served = triton.InferenceServerClient(target.target)
    tensor = triton.InferInput("images", [2, 28, 28, 1], "UINT8")
    tensor.set_data_from_numpy(images(2))
    assert served.infer("cnn", [tensor]).as_numpy("logits").shape == (2, 10)  # the server is fine


def test_no_request_reaches_the_catch_all(target: ServerProcess) -> None:
    """The catch-all answers INTERNAL and logs a traceback: nothing above may have reached it."""
    assert "unexpected error while serving a request" not in target.log()
