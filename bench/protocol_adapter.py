"""The benchmark's only door into `protos/` (the generated gRPC stubs).

Two request paths to the same server: our `cnnserve.v1.Classifier/Predict` and KServe V2
`inference.GRPCInferenceService/ModelInfer` (raw_input_contents, the fast path). Requests are
built once per load level and reused: the client should cost as little CPU as possible, since
on a small machine it shares the cores with the server it measures. Model metadata and
statistics always come from the V2 service, which both protocols' models share.

V2 messages come from tritonclient's generated modules, not ours: both register the same
`inference.*` names in protobuf's default pool, so a client process may hold only one copy, and
the client side of this project (tests included) uses Triton's, as any V2 client would.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as grpc_service_pb2
from tritonclient.grpc import service_pb2_grpc as grpc_service_pb2_grpc

from cnnserve.contracts.names import MAX_MESSAGE_BYTES
from cnnserve.protos import classifier_pb2, classifier_pb2_grpc

PROTOCOLS = ("cnnserve", "v2")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    input_shape: tuple[int, ...]  # without the batch dimension
    platform: str
    execution_provider: str  # "" when the server does not say


@dataclass(frozen=True)
class StatsSnapshot:
    """Cumulative ModelStatistics of one model, summed over its versions."""

    requests: int  # successful requests
    inferences: int  # images
    executions: int  # model runs (batches)
    success_ns: int
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int

    def __sub__(self, earlier: StatsSnapshot) -> StatsSnapshot:
        return StatsSnapshot(*(a - b for a, b in zip(self.values(), earlier.values(), strict=True)))

    def values(self) -> tuple[int, ...]:
        return (
            self.requests, self.inferences, self.executions, self.success_ns, self.queue_ns,
            self.compute_input_ns, self.compute_infer_ns, self.compute_output_ns,
        )  # fmt: skip


def channel_options(own_connection: bool = True) -> list[tuple[str, int]]:
    """Channel arguments; `own_connection` gives the channel its own subchannel pool, hence its
    own TCP connection: channels of one process to one target otherwise share one connection
    (gRPC's global subchannel pool), which a server with several workers behind one port
    (SO_REUSEPORT) would see as a single client on a single worker."""
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    return [*options, ("grpc.use_local_subchannel_pool", 1)] if own_connection else options


def open_channel(target: str, own_connection: bool = True) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=channel_options(own_connection))


class CodecClock:
    """The client's own protobuf time: request serialization (perf_analyzer's Client Send) and
    response parsing (Client Recv), timed inside the serializers gRPC calls on the event loop.

    The socket writes and reads happen on gRPC's C-core threads and are in Network+Server."""

    def __init__(self) -> None:
        self.send_ns = 0
        self.sends = 0
        self.recv_ns = 0
        self.recvs = 0

    def serializer(self, message) -> bytes:
        started = time.perf_counter_ns()
        data = message.SerializeToString()
        self.send_ns += time.perf_counter_ns() - started
        self.sends += 1
        return data

    def deserializer(self, message_type) -> Callable[[bytes], object]:
        def parse(data: bytes) -> object:
            started = time.perf_counter_ns()
            message = message_type.FromString(data)
            self.recv_ns += time.perf_counter_ns() - started
            self.recvs += 1
            return message

        return parse

    def snapshot(self) -> tuple[int, int, int, int]:
        return self.send_ns, self.sends, self.recv_ns, self.recvs


async def model_info(channel: grpc.aio.Channel, model: str, timeout_s: float) -> ModelInfo:
    """Raises grpc.aio.AioRpcError (NOT_FOUND for an unknown model)."""
    v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    metadata = await v2.ModelMetadata(grpc_service_pb2.ModelMetadataRequest(name=model), timeout=timeout_s)
    provider = ""
    try:
        ours = classifier_pb2_grpc.ClassifierStub(channel)
        answer = await ours.GetModelMetadata(
            classifier_pb2.GetModelMetadataRequest(model_name=model), timeout=timeout_s
        )
        provider = answer.execution_provider
    except grpc.aio.AioRpcError:
        pass  # a plain V2 server (Triton): no provider to report
    shape = tuple(int(d) for d in metadata.inputs[0].shape[1:])
    return ModelInfo(metadata.name, shape, metadata.platform, provider)


async def reported_flops(channel: grpc.aio.Channel, model: str, timeout_s: float) -> int | None:
    """FLOPs per image from the V2 ModelConfig's `flops_per_image` parameter, which cnnserve
    exports record; None from servers (or older exports) that do not say."""
    v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    response = await v2.ModelConfig(grpc_service_pb2.ModelConfigRequest(name=model), timeout=timeout_s)
    parameter = response.config.parameters.get("flops_per_image")
    if parameter is None or not parameter.string_value.isdigit():
        return None
    return int(parameter.string_value) or None


async def statistics(channel: grpc.aio.Channel, model: str, timeout_s: float) -> StatsSnapshot:
    v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    response = await v2.ModelStatistics(
        grpc_service_pb2.ModelStatisticsRequest(name=model), timeout=timeout_s
    )
    totals = [0] * 8
    for entry in response.model_stats:
        stats = entry.inference_stats
        values = (
            stats.success.count, entry.inference_count, entry.execution_count, stats.success.ns,
            stats.queue.ns, stats.compute_input.ns, stats.compute_infer.ns, stats.compute_output.ns,
        )  # fmt: skip
        totals = [t + v for t, v in zip(totals, values, strict=True)]
    return StatsSnapshot(*totals)


V2_SERVICE = "/inference.GRPCInferenceService/"
PREDICT_METHOD = "/cnnserve.v1.Classifier/Predict"


def infer_request(protocol: str, model: str, images: np.ndarray):
    """The one request every send of a load level reuses (built once: the client's CPU is the
    server's on a shared machine)."""
    if protocol == "cnnserve":
        return classifier_pb2.PredictRequest(
            model_name=model,
            images=classifier_pb2.Tensor(dtype="uint8", shape=list(images.shape), data=images.tobytes()),
        )
    if protocol == "v2":
        infer = grpc_service_pb2.ModelInferRequest
        return infer(
            model_name=model,
            inputs=[infer.InferInputTensor(name="images", datatype="UINT8", shape=list(images.shape))],
            outputs=[infer.InferRequestedOutputTensor(name="logits")],
            raw_input_contents=[images.tobytes()],
        )
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def infer_call(
    channel: grpc.aio.Channel, protocol: str, request, timeout_s: float, clock: CodecClock
) -> Callable[[], Awaitable[object]]:
    """A zero-argument coroutine function sending `request` as one unary call."""
    if protocol == "cnnserve":
        method = channel.unary_unary(
            PREDICT_METHOD, clock.serializer, clock.deserializer(classifier_pb2.PredictResponse)
        )
    elif protocol == "v2":
        parse = clock.deserializer(grpc_service_pb2.ModelInferResponse)
        method = channel.unary_unary(V2_SERVICE + "ModelInfer", clock.serializer, parse)
    else:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    return lambda: method(request, timeout=timeout_s)


def open_stream(channel: grpc.aio.Channel, requests: AsyncIterator, clock: CodecClock):
    """A V2 ModelStreamInfer call fed by `requests`; iterate it for ModelStreamInferResponse."""
    method = channel.stream_stream(
        V2_SERVICE + "ModelStreamInfer",
        clock.serializer,
        clock.deserializer(grpc_service_pb2.ModelStreamInferResponse),
    )
    return method(requests)
