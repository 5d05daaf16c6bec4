"""KServe V2 (`inference.*`) protobuf ↔ numpy, as Triton encodes it.

Server-side only: tritonclient registers Triton's own copy of these messages in protobuf's
default pool, so this module (which imports ours) must not be imported next to tritonclient.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence

import numpy as np

from cnnserve.contracts.model_repository import ModelConfig, TensorSpec
from cnnserve.protos import grpc_service_pb2 as pb
from cnnserve.protos import model_config_pb2 as config_pb
from cnnserve.serving.converters import array_from_bytes, dtype_name, little_endian, shape_text, wire_shape
from cnnserve.serving.dataplane import Inference, Label, RequestedOutput, ranked
from cnnserve.serving.errors import InvalidInput
from cnnserve.serving.image_decoding import split_bytes_tensor
from cnnserve.serving.log_limit import shown
from cnnserve.serving.wire_format import length_delimited

# Triton datatype names ↔ numpy.
V2_TO_NUMPY = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
NUMPY_TO_V2 = {v: k for k, v in V2_TO_NUMPY.items()}
NUMPY_TO_CONFIG = {
    "uint8": config_pb.TYPE_UINT8,
    "float32": config_pb.TYPE_FP32,
    "float16": config_pb.TYPE_FP16,
    "int64": config_pb.TYPE_INT64,
    "int32": config_pb.TYPE_INT32,
}
CLASSIFICATION = "classification"


def v2_datatype(dtype: str) -> str:
    return NUMPY_TO_V2.get(dtype, dtype.upper())


def decode_input(request: pb.ModelInferRequest, spec: TensorSpec) -> np.ndarray:
    """The image batch of a ModelInfer request, from raw_input_contents or typed contents."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"inputs: expected 1 input ({spec.name!r}), received {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name != spec.name:
        raise InvalidInput(f"inputs[0].name: expected {spec.name!r}, received {shown(tensor.name)}")
    expected_type = v2_datatype(spec.dtype)
    if tensor.datatype != expected_type:
        raise InvalidInput(f"inputs[0].datatype: expected {expected_type}, received {shown(tensor.datatype)}")
    shape = wire_shape(tensor.shape, "inputs[0].shape", shape_text(spec.shape))
    dtype = little_endian(spec.dtype)
    elements = math.prod(shape)
    if request.raw_input_contents:
        if tensor.HasField("contents"):
            raise InvalidInput(
                f"inputs[0].contents: must not be set when raw_input_contents is used for input "
                f"{spec.name!r}; send the tensor in one of the two"
            )
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(
                "raw_input_contents: expected 1 entry (one per input), "
                f"received {len(request.raw_input_contents)}"
            )
        return array_from_bytes(
            request.raw_input_contents[0], spec.dtype, shape, "raw_input_contents[0]", expected_type
        )
    values = tensor.contents.uint_contents if spec.dtype == "uint8" else tensor.contents.fp32_contents
    field = "uint_contents" if spec.dtype == "uint8" else "fp32_contents"
    if len(values) != elements:
        raise InvalidInput(
            f"inputs[0].contents.{field}: expected {elements} values for {expected_type} "
            f"{shape}, received {len(values)} (or send raw_input_contents)"
        )
    array = np.asarray(values)
    if spec.dtype == "uint8" and array.size and int(array.max()) > 255:
        raise InvalidInput(
            f"inputs[0].contents.uint_contents: values must be 0..255 for UINT8, received {int(array.max())}"
        )
    return array.astype(dtype).reshape(shape)


def encoded_input(request: pb.ModelInferRequest, spec: TensorSpec) -> list[bytes] | None:
    """Image files sent as a BYTES input ([N] or [N, 1]) for a uint8 image model; None otherwise."""
    if len(request.inputs) != 1 or request.inputs[0].datatype != "BYTES" or spec.dtype != "uint8":
        return None
    tensor = request.inputs[0]
    if tensor.name != spec.name:
        raise InvalidInput(f"inputs[0].name: expected {spec.name!r}, received {shown(tensor.name)}")
    shape = wire_shape(tensor.shape, "inputs[0].shape", "[N] or [N, 1] encoded images")
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInput(f"inputs[0].shape: expected [N] or [N, 1] encoded images, received {shape}")
    count = shape[0]
    if request.raw_input_contents:
        if tensor.HasField("contents"):
            raise InvalidInput("inputs[0].contents: must not be set when raw_input_contents is used")
        return split_bytes_tensor(request.raw_input_contents[0], count, "raw_input_contents[0]")
    blobs = list(tensor.contents.bytes_contents)
    if len(blobs) != count:
        raise InvalidInput(
            f"inputs[0].contents.bytes_contents: expected {count} images, received {len(blobs)}"
        )
    return blobs


def requested_outputs(
    request: pb.ModelInferRequest, config: ModelConfig, classes: int
) -> list[RequestedOutput]:
    """The outputs a request asks for (top-k > 0: as classification strings); all if none named."""
    names = [t.name for t in config.outputs]
    if not request.outputs:
        return [RequestedOutput(name) for name in names]
    wanted = []
    for i, output in enumerate(request.outputs):
        if output.name not in names:
            raise InvalidInput(f"outputs[{i}].name: expected one of {names}, received {shown(output.name)}")
        top_k = 0
        if CLASSIFICATION in output.parameters:
            parameter = output.parameters[CLASSIFICATION]
            top_k = int(parameter.int64_param)
            if parameter.WhichOneof("parameter_choice") != "int64_param" or not 1 <= top_k <= classes:
                raise InvalidInput(
                    f"outputs[{i}].parameters[{CLASSIFICATION!r}]: expected an int64 in 1..{classes}, "
                    f"received {_parameter_value(parameter)!r}"
                )
        wanted.append(RequestedOutput(output.name, top_k))
    return wanted


def _parameter_value(parameter: pb.InferParameter) -> object:
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def classification_strings(rows: list[list[Label]], labels: Sequence[str]) -> np.ndarray:
    """Triton's classification extension: "value:index:label" strings, best first, [N, top_k]."""
    return np.array([[_classification(x, labels) for x in row] for row in rows], dtype=object)


def _classification(x: Label, labels: Sequence[str]) -> bytes:
    """No ":label" for a class the config names no label for."""
    text = f"{x.score:f}:{x.class_index}" + (f":{x.label}" if x.class_index < len(labels) else "")
    return text.encode()


def output_arrays(inference: Inference) -> list[tuple[RequestedOutput, np.ndarray]]:
    """Each requested output's rows; classification outputs as Triton's strings (both protocols)."""
    labels = inference.model.config.class_labels
    arrays = []
    for output in inference.requested:
        array = inference.outputs[output.name]
        if output.classification:
            array = classification_strings(ranked(array, output.classification, labels), labels)
        arrays.append((output, array))
    return arrays


def serialize_bytes(array: np.ndarray) -> bytes:
    """Triton's raw BYTES layout: each element as a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in array.reshape(-1))


def wire_output(array: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    """An output as V2 sends it: its datatype, shape and raw (little-endian) bytes."""
    if array.dtype == object:
        return "BYTES", array.shape, serialize_bytes(array)
    little = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
    return v2_datatype(dtype_name(array.dtype)), array.shape, little.tobytes()


def infer_response_bytes(inference: Inference, request_id: str) -> bytes:
    """A served ModelInfer request's ModelInferResponse, serialized: each requested output as raw
    bytes, and where it ran (the `execution_provider` parameter). The part every answer of this
    model version and shape shares is serialized once.

    Protobuf parses concatenated messages as one, merged (repeated fields appended, in order):
    the shared head carries the names, the provider and the outputs' metadata, and each answer
    adds only its id and the outputs' bytes, so the event loop's thread builds one small message
    per request instead of a message with a map and a nested tensor per output (BENCHMARKS.md,
    "The request path on the event loop's thread, before and after").
    """
    model = inference.model
    outputs = []
    raws = []
    for output, array in output_arrays(inference):
        datatype, shape, raw = wire_output(array)
        outputs.append((output.name, datatype, shape))
        raws.append(raw)
    head = _response_head(model.name, model.version, model.provider, tuple(outputs))
    return head + pb.ModelInferResponse(id=request_id, raw_output_contents=raws).SerializeToString()


# ModelStreamInferResponse's field `infer_response` (grpc_service.proto).
STREAM_INFER_RESPONSE_FIELD = 2


def stream_response_bytes(inference: Inference, request_id: str) -> bytes:
    """The ModelStreamInferResponse of a served request, serialized: the ModelInfer answer's bytes
    as the stream message's one field."""
    return length_delimited(STREAM_INFER_RESPONSE_FIELD, infer_response_bytes(inference, request_id))


@functools.lru_cache(maxsize=1024)  # versions × output sets × request sizes; each a few dozen bytes
def _response_head(
    name: str, version: str, provider: str, outputs: tuple[tuple[str, str, tuple[int, ...]], ...]
) -> bytes:
    response = pb.ModelInferResponse(model_name=name, model_version=version)
    response.parameters["execution_provider"].string_param = provider
    for output, datatype, shape in outputs:
        response.outputs.add(name=output, datatype=datatype, shape=shape)
    return response.SerializeToString()
