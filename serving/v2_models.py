"""Triton's descriptions of a served model as KServe V2 protobuf: metadata, ModelConfig and
statistics, built once here for gRPC and (through `v2_json.proto_json`) for HTTP.

Server-side only, like v2_converters (tritonclient registers its own copy of these messages).
"""

from __future__ import annotations

from collections.abc import Sequence

from cnnserve import __version__
from cnnserve.contracts.model_repository import TensorSpec
from cnnserve.contracts.names import CUDA_PROVIDER
from cnnserve.protos import grpc_service_pb2 as pb
from cnnserve.protos import model_config_pb2 as config_pb
from cnnserve.serving.registry import ModelState, ServedVersion
from cnnserve.serving.server_report import ServerReport, VersionReport
from cnnserve.serving.v2_converters import NUMPY_TO_CONFIG, v2_datatype

EXTENSIONS = ("classification", "model_configuration", "statistics", "model_repository")


def server_metadata() -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name="cnnserve", version=__version__, extensions=EXTENSIONS)


def tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=v2_datatype(spec.dtype), shape=list(spec.shape)
    )


def model_metadata(model: ServedVersion, versions: Sequence[str]) -> pb.ModelMetadataResponse:
    """V2 model metadata: shapes include the -1 batch dimension."""
    return pb.ModelMetadataResponse(
        name=model.name,
        versions=list(versions),
        platform=model.config.platform,
        inputs=[tensor_metadata(t) for t in model.config.inputs],
        outputs=[tensor_metadata(t) for t in model.config.outputs],
    )


def model_statistics(report: ServerReport, wanted: set[tuple[str, str]] | None) -> pb.ModelStatisticsResponse:
    """The READY versions' statistics that a request names (`wanted`; None: every model)."""
    return pb.ModelStatisticsResponse(
        model_stats=[
            statistics_proto(v)
            for v in report.versions
            if v.state == ModelState.READY and (wanted is None or (v.name, v.version) in wanted)
        ]
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
    on_gpu = model.provider == CUDA_PROVIDER
    return config_pb.ModelConfig(
        name=model.name,
        platform=config.platform,
        backend="onnxruntime",
        max_batch_size=model.batching.max_batch_size,
        version_policy=_version_policy(model),
        input=[
            config_pb.ModelInput(
                name=t.name,
                data_type=NUMPY_TO_CONFIG.get(t.dtype, config_pb.TYPE_INVALID),
                format=config_pb.ModelInput.FORMAT_NHWC,
                dims=list(t.shape[1:]),
            )
            for t in config.inputs
        ],
        output=[
            config_pb.ModelOutput(
                name=t.name,
                data_type=NUMPY_TO_CONFIG.get(t.dtype, config_pb.TYPE_INVALID),
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
                count=max(1, len(model.sessions)),
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
