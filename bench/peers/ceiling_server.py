"""The one-process Python gRPC ceiling: a grpc.aio V2 servicer that runs no model.

It answers ServerReady, ModelReady and ModelInfer with a fixed `logits` reply of the right
shape, and does nothing else: no decode of the input, no batching, no statistics. Measured by
compare.py with the same load generator as the real servers, it is the most any one-process
grpc.aio server can answer on this machine, which puts each server's figure in proportion.

    .venv/bin/python bench/peers/ceiling_server.py --port 8500 --model mnist_cnn \\
        --image-shape 28,28,1 --classes 10
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import grpc

from cnnserve.protos import grpc_service_pb2 as pb
from cnnserve.protos import grpc_service_pb2_grpc
from cnnserve.serving.config import EVENT_LOOPS, event_loop_factory

MAX_CONCURRENT_RPCS_SOFT = 8192  # as cnnserve serve, so a flood queues rather than being cancelled


class FixedReplyServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, model: str, image_shape: Sequence[int], classes: int) -> None:
        self.model = model
        tensor = pb.ModelMetadataResponse.TensorMetadata
        self.metadata = pb.ModelMetadataResponse(
            name=model, versions=["1"], platform="onnxruntime_onnx",
            inputs=[tensor(name="images", datatype="UINT8", shape=[-1, *image_shape])],
            outputs=[tensor(name="logits", datatype="FP32", shape=[-1, classes])],
        )  # fmt: skip
        logits = pb.ModelInferResponse.InferOutputTensor(name="logits", datatype="FP32", shape=[1, classes])
        self.reply = pb.ModelInferResponse(
            model_name=model, model_version="1", outputs=[logits], raw_output_contents=[bytes(4 * classes)]
        )

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=request.name == self.model)

    async def ModelMetadata(self, request, context):
        if request.name != self.model:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.name!r}")
        return self.metadata

    async def ModelInfer(self, request, context):
        return self.reply


async def serve(host: str, port: int, model: str, image_shape: Sequence[int], classes: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", MAX_CONCURRENT_RPCS_SOFT)])
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        FixedReplyServicer(model, image_shape, classes), server
    )
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--image-shape", required=True, help="H,W,C of one uint8 image, e.g. 28,28,1")
    parser.add_argument("--classes", type=int, required=True)
    # uvloop, as `cnnserve serve` by default: the ceiling is the faster of the two (BENCHMARKS.md).
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="uvloop")
    args = parser.parse_args(argv)
    image_shape = [int(d) for d in args.image_shape.split(",")]
    with asyncio.Runner(loop_factory=event_loop_factory(args.event_loop)) as runner:
        runner.run(serve(args.host, args.port, args.model, image_shape, args.classes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
