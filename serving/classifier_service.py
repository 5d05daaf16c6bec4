"""`cnnserve.v1.Classifier`: a thin servicer that converts protobuf and delegates to the data plane."""

from __future__ import annotations

import time

import grpc

from cnnserve.protos import classifier_pb2 as pb
from cnnserve.protos import classifier_pb2_grpc
from cnnserve.serving import converters
from cnnserve.serving.dataplane import DataPlane, Inference
from cnnserve.serving.errors import InvalidInput, grpc_errors
from cnnserve.serving.registry import ServedVersion


def deadline_ns(context: grpc.aio.ServicerContext) -> int | None:
    """The call's deadline on the monotonic clock, or None if the client set none."""
    remaining_s = context.time_remaining()
    return None if remaining_s is None else time.monotonic_ns() + int(remaining_s * 1e9)


class ClassifierService(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    @grpc_errors
    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        started_ns = time.monotonic_ns()
        model = self._dataplane.registry.get(request.model_name, request.model_version)
        with self._dataplane.counted(model, started_ns):
            top_k = self._dataplane.check_top_k(model, request.top_k)
        inference = await self._infer(model, request, started_ns, context)
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
        model = self._dataplane.registry.get(request.model_name, request.model_version)
        inference = await self._infer(model, request, started_ns, context)
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
        failures = {f.name: f for f in registry.failures() if not f.version}
        version_failures = {(f.name, f.version): f for f in registry.failures() if f.version}
        models = []
        for name in registry.model_names():
            if name in failures:
                versions = [pb.ModelVersionState(state="UNAVAILABLE", reason=failures[name].reason)]
                models.append(pb.ModelSummary(name=name, versions=versions))
                continue
            served = registry.versions_of(name)
            versions = [
                pb.ModelVersionState(version=s.version, state=s.state, reason=s.reason) for s in served
            ]
            versions += [
                pb.ModelVersionState(version=v, state="UNAVAILABLE", reason=f.reason)
                for (n, v), f in version_failures.items()
                if n == name
            ]
            platform = served[0].config.platform if served else ""
            models.append(pb.ModelSummary(name=name, platform=platform, versions=versions))
        return pb.ListModelsResponse(models=models)

    @grpc_errors
    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelMetadataResponse:
        model = self._dataplane.registry.get(request.model_name, request.model_version)
        config = model.config
        return pb.GetModelMetadataResponse(
            model_name=model.name,
            model_version=model.version,
            versions=[
                s.version for s in self._dataplane.registry.versions_of(model.name) if s.state == "READY"
            ],
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

    async def _infer(
        self,
        model: ServedVersion,
        request: pb.ClassifyRequest | pb.PredictRequest,
        started_ns: int,
        context: grpc.aio.ServicerContext,
    ) -> Inference:
        with self._dataplane.counted(model, started_ns):
            if not request.HasField("images"):
                raise InvalidInput("images: missing; expected a uint8 tensor [N, H, W, C]")
            images = converters.decode_tensor(request.images, "images")
            return await self._dataplane.infer(model, images, started_ns, deadline_ns(context))


def _timing(inference: Inference) -> pb.ServerTiming:
    result = inference.result
    return converters.timing(
        result.queue_ns,
        result.compute_infer_ns,
        result.batch_sizes,
        inference.model.provider,
        inference.total_us,
    )
