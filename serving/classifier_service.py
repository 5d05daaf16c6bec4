"""`cnnserve.v1.Classifier`: a thin servicer that converts protobuf and delegates to the data plane."""

from __future__ import annotations

import time

import grpc

from cnnserve.protos import classifier_pb2 as pb
from cnnserve.protos import classifier_pb2_grpc
from cnnserve.serving import converters
from cnnserve.serving.access_log import MAX_REQUEST_ID_CHARS, REQUEST_ID_HEADER
from cnnserve.serving.dataplane import DataPlane, Inference, InferenceCall, Tensors
from cnnserve.serving.errors import InvalidInput, grpc_errors
from cnnserve.serving.lifecycle import ModelManager
from cnnserve.serving.registry import ServedVersion


class ClassifierService(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, dataplane: DataPlane, manager: ModelManager) -> None:
        self._dataplane = dataplane
        self._manager = manager

    @grpc_errors
    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        started_ns = time.monotonic_ns()
        model, top_k = self._dataplane.checked_top_k(
            request.model_name, request.model_version, request.top_k, started_ns
        )
        inference = await self._dataplane.run(_call(request, model, started_ns, context))
        return pb.ClassifyResponse(
            model_name=model.name,
            model_version=model.version,
            classifications=[
                pb.Classification(
                    top=[pb.LabelScore(label=x.label, class_index=x.class_index, score=x.score) for x in row]
                )
                for row in self._dataplane.top_k(inference, top_k)
            ],
            timing=_timing(inference),
        )

    @grpc_errors
    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        started_ns = time.monotonic_ns()
        model = self._dataplane.find(request.model_name, request.model_version)
        inference = await self._dataplane.run(_call(request, model, started_ns, context))
        return pb.PredictResponse(
            model_name=model.name,
            model_version=model.version,
            logits=converters.encode_tensor(self._dataplane.logits(inference)),
            timing=_timing(inference),
        )

    @grpc_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        registry = self._dataplane.registry
        by_name: dict[str, list[pb.ModelVersionState]] = {}
        for entry in await self._manager.index():
            by_name.setdefault(entry.name, []).append(
                pb.ModelVersionState(version=entry.version, state=entry.state, reason=entry.reason)
            )
        models = []
        for name, versions in by_name.items():
            known = registry.known(name)
            platform = known.config.platform if known is not None and known.config is not None else ""
            models.append(pb.ModelSummary(name=name, platform=platform, versions=versions))
        return pb.ListModelsResponse(models=models)

    @grpc_errors
    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelMetadataResponse:
        model = self._dataplane.find(request.model_name, request.model_version)
        config = model.config
        return pb.GetModelMetadataResponse(
            model_name=model.name,
            model_version=model.version,
            versions=self._dataplane.registry.ready_versions_of(model.name),
            platform=config.platform,
            inputs=[
                pb.TensorMetadata(name=t.name, dtype=t.dtype, shape=list(t.shape)) for t in config.inputs
            ],
            outputs=[
                pb.TensorMetadata(name=t.name, dtype=t.dtype, shape=list(t.shape)) for t in config.outputs
            ],
            class_labels=list(config.class_labels),
            max_batch_size=model.batching.max_batch_size,
            max_queue_delay_us=int(model.batching.max_queue_delay_s * 1e6),
            max_queue_size=model.batching.max_queue_size,
            execution_provider=model.provider,
        )


def _call(
    request: pb.ClassifyRequest | pb.PredictRequest,
    model: ServedVersion,
    started_ns: int,
    context: grpc.aio.ServicerContext,
) -> InferenceCall:
    """The data plane's view of a Classify or Predict call: pixels or image files, and its ids."""

    def tensors(model: ServedVersion, body: bytes) -> Tensors:
        if request.encoded_images:
            if request.HasField("images"):
                raise InvalidInput("images: must not be set with encoded_images; send one of the two")
            return Tensors(files=list(request.encoded_images), files_field="encoded_images")
        if not request.HasField("images"):
            raise InvalidInput("images: missing; expected a uint8 tensor [N, H, W, C] or encoded_images")
        return Tensors(images=converters.decode_tensor(request.images, "images"))

    return InferenceCall(
        "grpc",
        request.model_name,
        request.model_version,
        started_ns,
        tensors,
        deadline_ns=converters.deadline_ns(context),
        request_id=_client_request_id(context),
        field="images",
        announce_id=lambda request_id: context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),)),
        found=model,
    )


def _client_request_id(context: grpc.aio.ServicerContext) -> str:
    """The client's own `x-request-id` metadata, cut to a sane length, or "" (one is generated)."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str):
            return value[:MAX_REQUEST_ID_CHARS]
    return ""


def _timing(inference: Inference) -> pb.ServerTiming:
    result = inference.result
    return converters.timing(
        result.queue_ns,
        result.compute_infer_ns,
        result.batch_sizes,
        inference.model.provider,
        inference.total_us,
    )
