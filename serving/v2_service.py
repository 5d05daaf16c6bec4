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

from cnnserve import __version__
from cnnserve.protos import grpc_service_pb2 as pb
from cnnserve.protos import grpc_service_pb2_grpc
from cnnserve.protos import model_config_pb2 as config_pb
from cnnserve.serving import v2_converters as convert
from cnnserve.serving.access_log import REQUEST_ID_HEADER, AccessRecord
from cnnserve.serving.classifier_service import deadline_ns
from cnnserve.serving.dataplane import DataPlane
from cnnserve.serving.errors import InvalidInput, ServingError, grpc_errors, status_of
from cnnserve.serving.lifecycle import ModelManager
from cnnserve.serving.log_limit import shown
from cnnserve.serving.registry import READY, ServedVersion
from cnnserve.serving.server_report import ServerReport, VersionReport
from cnnserve.serving.session import CUDA

EXTENSIONS = ("classification", "model_configuration", "statistics", "model_repository")


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
            self._registry.get(request.name, request.version)
        except ServingError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @grpc_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="cnnserve", version=__version__, extensions=EXTENSIONS)

    @grpc_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = self._registry.get(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=self._registry.ready_versions_of(model.name),
            platform=model.config.platform,
            inputs=[convert.tensor_metadata(t) for t in model.config.inputs],
            outputs=[convert.tensor_metadata(t) for t in model.config.outputs],
        )

    @grpc_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        return await self._infer(request, context, unary=True)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on one stream run concurrently, so they can share batches; answers come as they finish.

        When reading stops — the client half-closed, the server is draining, or a message could
        not be parsed — every request already read is still answered before the stream ends; the
        call guard then gives the stream its final status.
        """
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        # Strong references: the event loop only keeps weak ones to running tasks.
        tasks: set[asyncio.Task[None]] = set()

        async def answer(request: pb.ModelInferRequest) -> None:
            try:
                response = await self._infer(request, context)
                answers.put_nowait(pb.ModelStreamInferResponse(infer_response=response))
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
        model = self._registry.get(request.name, request.version)
        return pb.ModelConfigResponse(config=model_config_proto(model))

    @grpc_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        wanted = self._registry.statistics_keys(request.name, request.version)
        report = await self._reports()  # the whole server's, every worker's merged
        return pb.ModelStatisticsResponse(
            model_stats=[
                statistics_proto(v)
                for v in report.versions
                if v.state == READY and (wanted is None or (v.name, v.version) in wanted)
            ]
        )

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
    ) -> pb.ModelInferResponse:
        started_ns = time.monotonic_ns()
        with self._dataplane.logged(
            "grpc", request.model_name, request.model_version, request.id, started_ns
        ) as record:
            if record is not None and unary:
                context.set_trailing_metadata(((REQUEST_ID_HEADER, record.request_id),))
            return await self._infer_logged(request, context, started_ns, record)

    async def _infer_logged(
        self,
        request: pb.ModelInferRequest,
        context: grpc.aio.ServicerContext,
        started_ns: int,
        record: AccessRecord | None,
    ) -> pb.ModelInferResponse:
        model = self._registry.get(request.model_name, request.model_version)
        with self._dataplane.counted(model, started_ns):
            blobs = convert.encoded_input(request, model.config.inputs[0])
            if blobs is None:
                images = convert.decode_input(request, model.config.inputs[0])
            else:
                images = await self._dataplane.decode_encoded(model, blobs, "inputs[0]")
                model = self._registry.get(request.model_name, request.model_version)
            wanted = convert.requested_outputs(request, model.config, self._dataplane.num_classes(model))
            inference = await self._dataplane.infer(
                model, images, started_ns, deadline_ns(context), field="inputs[0]"
            )
        self._dataplane.note(record, inference)
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        response.parameters["execution_provider"].string_param = model.provider
        for name, top_k in wanted:
            array = inference.outputs[name]
            if top_k:
                array = convert.classification_strings(array, top_k, model.config.class_labels)
            tensor, raw = convert.output_tensor(name, array)
            response.outputs.append(tensor)
            response.raw_output_contents.append(raw)
        return response


def _no_parameters(parameters: object, action: str, allowed: tuple[str, ...] = ()) -> None:
    """Triton's load parameters override config.json or ship files; this server takes neither."""
    unsupported = sorted(name for name in parameters if name not in allowed)  # type: ignore[attr-defined]
    if unsupported:
        raise InvalidInput(
            f"parameters: {', '.join(shown(n) for n in unsupported[:4])} not supported for model {action}; "
            "edit config.json in the repository instead"
        )


def _version_policy(model: ServedVersion) -> config_pb.ModelVersionPolicy:
    policy = model.config.version_policy
    if policy.kind == "latest":
        return config_pb.ModelVersionPolicy(
            latest=config_pb.ModelVersionPolicy.Latest(num_versions=policy.num_versions)
        )
    if policy.kind == "specific":
        return config_pb.ModelVersionPolicy(
            specific=config_pb.ModelVersionPolicy.Specific(versions=list(policy.versions))
        )
    return config_pb.ModelVersionPolicy(all=config_pb.ModelVersionPolicy.All())


def model_config_proto(model: ServedVersion) -> config_pb.ModelConfig:
    """Triton's view of a model: dims exclude the batch dimension because max_batch_size > 0."""
    config = model.config
    on_gpu = model.provider == CUDA
    return config_pb.ModelConfig(
        name=model.name,
        platform=config.platform,
        backend="onnxruntime",
        max_batch_size=model.batching.max_batch_size,
        version_policy=_version_policy(model),
        input=[
            config_pb.ModelInput(
                name=t.name,
                data_type=convert.NUMPY_TO_CONFIG.get(t.dtype, config_pb.TYPE_INVALID),
                format=config_pb.ModelInput.FORMAT_NHWC,
                dims=list(t.shape[1:]),
            )
            for t in config.inputs
        ],
        output=[
            config_pb.ModelOutput(
                name=t.name,
                data_type=convert.NUMPY_TO_CONFIG.get(t.dtype, config_pb.TYPE_INVALID),
                dims=list(t.shape[1:]),
            )
            for t in config.outputs
        ],
        dynamic_batching=config_pb.ModelDynamicBatching(
            max_queue_delay_microseconds=int(model.batching.max_queue_delay_s * 1e6),
            default_queue_policy=config_pb.ModelQueuePolicy(max_queue_size=model.batching.max_queue_size),
        ),
        instance_group=[
            config_pb.ModelInstanceGroup(
                name=f"{model.name}_0",
                kind=config_pb.ModelInstanceGroup.KIND_GPU
                if on_gpu
                else config_pb.ModelInstanceGroup.KIND_CPU,
                count=1,
                gpus=[0] if on_gpu else [],
            )
        ],
        default_model_filename=config.model_file,
        parameters=_parameters(model),
    )


def _parameters(model: ServedVersion) -> dict[str, config_pb.ModelParameter]:
    """Triton's free-form parameters: where the model really runs, and its FLOPs per image when
    the export recorded them (`cnnserve bench server` reads both)."""
    parameters = {"execution_provider": config_pb.ModelParameter(string_value=model.provider)}
    flops = model.config.provenance.flops_per_image
    if flops is not None and flops > 0:
        parameters["flops_per_image"] = config_pb.ModelParameter(string_value=str(flops))
    return parameters


def statistics_proto(model: VersionReport) -> pb.ModelStatistics:
    stats = model.stats

    def duration(count: int, ns: int) -> pb.StatisticDuration:
        return pb.StatisticDuration(count=count, ns=ns)

    fail_count = sum(d.count for d in stats.fail.values())
    fail_ns = sum(d.ns for d in stats.fail.values())
    return pb.ModelStatistics(
        name=model.name,
        version=model.version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=duration(stats.success.count, stats.success.ns),
            fail=duration(fail_count, fail_ns),
            queue=duration(stats.queue.count, stats.queue.ns),
            compute_input=duration(stats.compute_input.count, stats.compute_input.ns),
            compute_infer=duration(stats.compute_infer.count, stats.compute_infer.ns),
            compute_output=duration(stats.compute_output.count, stats.compute_output.ns),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=duration(b.count, b.input_ns),
                compute_infer=duration(b.count, b.infer_ns),
                compute_output=duration(b.count, b.output_ns),
            )
            for size, b in sorted(stats.batch_stats.items())
        ],
    )
