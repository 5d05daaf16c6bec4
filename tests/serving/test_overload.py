"""Overload against a real server: full queue, deadlines in the queue, cancelled calls.

The `identity` model runs with a 5 s queue delay and a batch of 64, so single requests sit in
the queue long enough to observe; the test waits on the server's own queue-depth gauge.
"""

from __future__ import annotations

import time
from urllib.request import urlopen

import grpc
import pytest
import tritonclient.grpc as triton
from conftest import ServerProcess
from onnx_models import images
from prometheus_client.parser import text_string_to_metric_families

from cnnserve.protos import classifier_pb2 as pb
from cnnserve.protos import classifier_pb2_grpc
from cnnserve.serving.converters import encode_tensor

LABELS = {"model": "identity", "version": "1"}


def gauge(server: ServerProcess, name: str, **labels: str) -> float:
    with urlopen(server.metrics_url, timeout=10) as response:
        families = text_string_to_metric_families(response.read().decode())
    wanted = {**LABELS, **labels}
    return next(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == name and sample.labels == wanted
    )


def wait_for(condition, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def slow_server(start_server) -> ServerProcess:
    return start_server(
        "--models", "identity",
        "--max-queue-delay-ms", "5000",
        "--max-batch-size", "64",
        "--max-queue-size", "identity=2",
    )  # fmt: skip


def classify_request() -> pb.ClassifyRequest:
    return pb.ClassifyRequest(model_name="identity", images=encode_tensor(images(1)))


def test_full_queue_is_unavailable_at_once_and_a_cancelled_call_frees_its_slot(
    slow_server: ServerProcess,
) -> None:
    stub = classifier_pb2_grpc.ClassifierStub(slow_server.channel())
    first = stub.Classify.future(classify_request(), timeout=60)
    second = stub.Classify.future(classify_request(), timeout=60)
    wait_for(lambda: gauge(slow_server, "nv_inference_pending_request_count") == 2)

    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Classify(classify_request(), timeout=60)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "model 'identity/1' queue is full (2 requests waiting)" in caught.value.details()
    assert time.monotonic() - started < 4, "the caller was blocked instead of refused"

    first.cancel()
    wait_for(lambda: gauge(slow_server, "nv_inference_pending_request_count") == 1)
    wait_for(lambda: gauge(slow_server, "nv_inference_request_failure_total", reason="CANCELED") == 1)
    third = stub.Classify.future(classify_request(), timeout=60)  # admitted again
    wait_for(lambda: gauge(slow_server, "nv_inference_pending_request_count") == 2)
    second.cancel()
    third.cancel()
    wait_for(lambda: gauge(slow_server, "nv_inference_pending_request_count") == 0)
    assert gauge(slow_server, "nv_inference_exec_count_total") == 0  # cancelled work never ran


def test_deadline_passing_in_the_queue_is_dropped_before_compute(slow_server: ServerProcess) -> None:
    stub = classifier_pb2_grpc.ClassifierStub(slow_server.channel())
    with pytest.raises(grpc.RpcError) as caught:
        stub.Classify(classify_request(), timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: gauge(slow_server, "nv_inference_pending_request_count") == 0)
    stats = triton.InferenceServerClient(slow_server.target).get_inference_statistics(
        "identity", as_json=True
    )
    model_stats = stats["model_stats"][0]
    assert int(model_stats.get("execution_count", 0)) == 0
    assert int(model_stats["inference_stats"]["fail"]["count"]) == 1


def test_malformed_requests_count_as_failures(slow_server: ServerProcess) -> None:
    """A request that fails while its tensors are decoded counts, as Triton counts it."""
    stub = classifier_pb2_grpc.ClassifierStub(grpc.insecure_channel(slow_server.target))
    before = gauge(slow_server, "nv_inference_request_failure_total", reason="OTHER")
    wrong_dtype = pb.ClassifyRequest(
        model_name="identity", images=pb.Tensor(dtype="float32", shape=[1, 28, 28, 1], data=bytes(3136))
    )
    short_data = pb.ClassifyRequest(
        model_name="identity", images=pb.Tensor(dtype="uint8", shape=[1, 28, 28, 1], data=bytes(10))
    )
    bad_top_k = pb.ClassifyRequest(model_name="identity", images=encode_tensor(images(1)), top_k=99)
    for request in (wrong_dtype, short_data, bad_top_k):
        with pytest.raises(grpc.RpcError) as error:
            stub.Classify(request, timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert gauge(slow_server, "nv_inference_request_failure_total", reason="OTHER") == before + 3


def test_a_flood_on_one_connection_is_answered_not_cancelled(start_server) -> None:
    """3,000 calls at once: gRPC itself used to CANCEL those past its 1,000 pending calls before
    a handler saw them; now each is served or refused UNAVAILABLE by the model's queue."""
    import asyncio
    from collections import Counter

    server = start_server("--models", "identity", "--max-queue-size", "64")
    request = pb.PredictRequest(model_name="identity", images=encode_tensor(images(1))).SerializeToString()

    async def flood() -> Counter:
        async with grpc.aio.insecure_channel(server.target) as channel:
            predict = channel.unary_unary("/cnnserve.v1.Classifier/Predict")

            async def one() -> grpc.StatusCode:
                try:
                    await predict(request, timeout=120)
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            return Counter(await asyncio.gather(*(one() for _ in range(3000))))

    codes = asyncio.run(flood())
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    assert codes[grpc.StatusCode.OK] > 0 and sum(codes.values()) == 3000
