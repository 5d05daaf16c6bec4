"""`inference.GRPCInferenceService`: KServe V2 / Open Inference Protocol with Triton's extensions.

Answers the way Triton does, so `tritonclient.grpc` and perf_analyzer work unchanged: shapes
in metadata include the -1 batch dimension, ModelConfig `dims` exclude it, outputs come back
as `raw_output_contents`, and the `classification` output parameter returns
"value:index:label" strings. Server-side only (see v2_converters for why).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from cnnserve.protos import grpc_service_pb2 as pb
from cnnserve.protos import grpc_service_pb2_grpc
from cnnserve.serving import v2_converters as convert
from cnnserve.serving import v2_models
from cnnserve.serving.access_log import REQUEST_ID_HEADER
from cnnserve.serving.converters import deadline_ns
from cnnserve.serving.dataplane import DataPlane, Inference, InferenceCall, RequestedOutput, Tensors
from cnnserve.serving.errors import InvalidInput, ServingError, grpc_errors, status_of
from cnnserve.serving.lifecycle import ModelManager
from cnnserve.serving.log_limit import shown
from cnnserve.serving.registry import ServedVersion
from cnnserve.serving.server_report import ServerReport


class V2Service(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, dataplane: DataPlane, manager: ModelManager, reports: Callable[[], Awaitable[ServerReport]]
    ) -> None:
        self._dataplane = dataplane
        self._registry = dataplane.registry
        self._manager = manager
        self._reports = reports

    @grpc_errors
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @grpc_errors
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dataplane.ready)

    @grpc_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            self._dataplane.find(request.name, request.version)
        except ServingError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @grpc_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return v2_models.server_metadata()

    @grpc_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = self._dataplane.find(request.name, request.version)
        return v2_models.model_metadata(model, self._registry.ready_versions_of(model.name))

    @grpc_errors
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> bytes:
        """The ModelInferResponse, serialized here (call_guard lets bytes through unchanged)."""
        inference = await self._infer(request, context, unary=True)
        return convert.infer_response_bytes(inference, request.id)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes | pb.ModelStreamInferResponse]:
        """Requests on one stream run concurrently, so they can share batches; answers come as they finish.

        When reading stops — the client half-closed, the server is draining, or a message could
        not be parsed — every request already read is still answered before the stream ends; the
        call guard then gives the stream its final status.
        """
        # An answer is its serialized bytes (call_guard lets them through), an error a message.
        answers: asyncio.Queue[bytes | pb.ModelStreamInferResponse | None] = asyncio.Queue()
        # Strong references: the event loop only keeps weak ones to running tasks.
        tasks: set[asyncio.Task[None]] = set()

        async def answer(request: pb.ModelInferRequest) -> None:
            try:
                inference = await self._infer(request, context)
                answers.put_nowait(convert.stream_response_bytes(inference, request.id))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                _, details = status_of(error)
                answers.put_nowait(
                    pb.ModelStreamInferResponse(
                        error_message=details,
                        infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id),
                    )
                )

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(answer(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            except ServingError:
                pass  # an unparseable message: the guard ends the stream with its status
            finally:
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await answers.get()) is not None:
                yield item
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    @grpc_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        model = self._dataplane.find(request.name, request.version)
        return pb.ModelConfigResponse(config=v2_models.model_config_proto(model))

    @grpc_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        wanted = self._registry.statistics_keys(request.name, request.version)
        report = await self._reports()  # the whole server's, every worker's merged
        return v2_models.model_statistics(report, wanted)

    @grpc_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        entries = await self._manager.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=e.name, version=e.version, state=e.state, reason=e.reason
                )
                for e in entries
            ]
        )

    @grpc_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        _no_parameters(request.parameters, "load")
        await self._manager.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        _no_parameters(request.parameters, "unload", allowed=("unload_dependents",))
        await self._manager.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def _infer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext, unary: bool = False
    ) -> Inference:
        def tensors(model: ServedVersion, body: bytes) -> Tensors:
            blobs = convert.encoded_input(request, model.config.inputs[0])
            if blobs is not None:
                return Tensors(files=blobs)
            return Tensors(images=convert.decode_input(request, model.config.inputs[0]))

        def outputs(model: ServedVersion) -> list[RequestedOutput]:
            return convert.requested_outputs(request, model.config, model.num_classes)

        def announce(request_id: str) -> None:
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))

        return await self._dataplane.run(
            InferenceCall(
                "grpc",
                request.model_name,
                request.model_version,
                time.monotonic_ns(),
                tensors,
                deadline_ns=deadline_ns(context),
                request_id=request.id,
                outputs=outputs,
                announce_id=announce if unary else None,  # a stream's calls share one trailer
            )
        )


def _no_parameters(parameters: object, action: str, allowed: tuple[str, ...] = ()) -> None:
    """Triton's load parameters override config.json or ship files; this server takes neither."""
    unsupported = sorted(name for name in parameters if name not in allowed)  # type: ignore[attr-defined]
    if unsupported:
        raise InvalidInput(
            f"parameters: {', '.join(shown(n) for n in unsupported[:4])} not supported for model {action}; "
            "edit config.json in the repository instead"
        )
