"""The one-process Python gRPC ceiling: a grpc.aio V2 servicer that runs no model.

It answers ServerReady, ModelReady, ModelInfer and each ModelStreamInfer message (in order,
with the message's id) with a fixed `logits` reply of the right shape, and does nothing else: no
decode of the input, no batching, no statistics. Measured by compare.py with the same load
generator as the real servers, it is the most any one-process grpc.aio server can answer on this
machine (unary, or streamed: `ceiling-stream`), which puts each server's figure in proportion.

    .venv/bin/python bench/peers/ceiling_server.py --port 8500 --model mnist_cnn \\
        --image-shape 28,28,1 --classes 10 [--grpc-server sync]

`--grpc-server sync` answers the same from gRPC's synchronous server (a thread pool) instead: the
other Python stack's ceiling, to tell whether it would leave more room than grpc.aio.

`--onnx MODEL.onnx` makes each ModelInfer run that file on its one image with ONNX Runtime (CPU,
cnnserve's session settings: spinning off) where the handler runs (the event loop's thread, or a
pool thread), and answer its logits: no batching, no checks, no statistics. It is what either
stack gives a model server that does nothing but run the model.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from concurrent import futures

import grpc

from cnnserve.protos import grpc_service_pb2 as pb
from cnnserve.protos import grpc_service_pb2_grpc
from cnnserve.serving.config import EVENT_LOOPS, event_loop_factory

MAX_CONCURRENT_RPCS_SOFT = 8192  # as cnnserve serve, so a flood queues rather than being cancelled
SYNC_THREADS = 8  # the synchronous server's handler threads: enough for any one client's channels


class OnnxAnswer:
    """One image's logits from ONNX Runtime, as the reply to its request."""

    def __init__(self, path: str, model: str, image_shape: Sequence[int]) -> None:
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._np = np
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._logits = ["logits"] if "logits" in {o.name for o in self._session.get_outputs()} else None
        self._shape = (1, *image_shape)
        self._model = model

    def __call__(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        images = self._np.frombuffer(request.raw_input_contents[0], self._np.uint8).reshape(self._shape)
        logits = self._session.run(self._logits, {self._input: images})[0]
        output = pb.ModelInferResponse.InferOutputTensor(name="logits", datatype="FP32", shape=logits.shape)
        return pb.ModelInferResponse(model_name=self._model, model_version="1", outputs=[output],
                                     raw_output_contents=[logits.astype("<f4").tobytes()])  # fmt: skip


class FixedReplyServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, model: str, image_shape: Sequence[int], classes: int, onnx: str | None = None) -> None:
        self.model = model
        self.answer = OnnxAnswer(onnx, model, image_shape) if onnx else None
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
        return self.reply if self.answer is None else self.answer(request)

    async def ModelStreamInfer(self, request_iterator, context):
        """Each message answered as it is read, with its id: the stream stack's own cost."""
        async for request in request_iterator:
            yield self._stream_answer(request)

    def _stream_answer(self, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        answer = pb.ModelStreamInferResponse()
        answer.infer_response.CopyFrom(self.reply if self.answer is None else self.answer(request))
        answer.infer_response.id = request.id
        return answer


class SyncFixedReplyServicer(FixedReplyServicer):
    """The same answers from plain methods, for gRPC's synchronous server."""

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=request.name == self.model)

    def ModelMetadata(self, request, context):
        if request.name != self.model:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.name!r}")
        return self.metadata

    def ModelInfer(self, request, context):
        return self.reply if self.answer is None else self.answer(request)

    def ModelStreamInfer(self, request_iterator, context):
        for request in request_iterator:
            yield self._stream_answer(request)


OPTIONS = [("grpc.max_concurrent_streams", MAX_CONCURRENT_RPCS_SOFT)]


async def serve(servicer: FixedReplyServicer, host: str, port: int) -> None:
    server = grpc.aio.server(options=OPTIONS)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


def serve_sync(servicer: SyncFixedReplyServicer, host: str, port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(SYNC_THREADS), options=OPTIONS)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    server.wait_for_termination()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--image-shape", required=True, help="H,W,C of one uint8 image, e.g. 28,28,1")
    parser.add_argument("--classes", type=int, required=True)
    # uvloop, as `cnnserve serve` by default: the ceiling is the faster of the two (BENCHMARKS.md).
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="uvloop")
    parser.add_argument("--grpc-server", choices=("aio", "sync"), default="aio")
    parser.add_argument("--onnx", help="run this ONNX file on each request's image instead of a fixed reply")
    args = parser.parse_args(argv)
    image_shape = [int(d) for d in args.image_shape.split(",")]
    if args.grpc_server == "sync":
        sync_servicer = SyncFixedReplyServicer(args.model, image_shape, args.classes, args.onnx)
        serve_sync(sync_servicer, args.host, args.port)
        return 0
    servicer = FixedReplyServicer(args.model, image_shape, args.classes, args.onnx)
    with asyncio.Runner(loop_factory=event_loop_factory(args.event_loop)) as runner:
        runner.run(serve(servicer, args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
