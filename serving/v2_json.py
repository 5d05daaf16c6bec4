"""KServe V2 over HTTP: JSON (and Triton's binary-tensor extension) ↔ numpy, as Triton encodes it.

A request body is JSON, optionally followed by raw tensor bytes: the header
`Inference-Header-Content-Length` says where the JSON ends, and an input whose parameters carry
`binary_data_size` takes that many bytes of the tail, in input order. Outputs asked for with
`binary_data: true` (tritonclient's default) come back the same way. Checks and messages match
the gRPC converters field for field, so both protocols refuse the same input the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from cnnserve.contracts.model_repository import ModelConfig, TensorSpec
from cnnserve.serving.converters import array_from_bytes, dtype_name, wire_shape
from cnnserve.serving.dataplane import RequestedOutput
from cnnserve.serving.errors import InvalidInput
from cnnserve.serving.image_decoding import split_bytes_tensor
from cnnserve.serving.log_limit import shown
from cnnserve.serving.v2_converters import CLASSIFICATION, V2_TO_NUMPY, serialize_bytes, v2_datatype

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_JSON_VALUES = 64 * 1024 * 1024  # a JSON tensor this long is a mistake: send binary data


@dataclass(frozen=True)
class HttpInferRequest:
    id: str
    inputs: list[dict]
    outputs: list[dict]
    parameters: dict
    binary: bytes


def parse_request(body: bytes, header_length: str | None) -> HttpInferRequest:
    """Split the JSON header from the binary tail and check the request's outline."""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidInput(
                f"{HEADER_LENGTH}: expected a number of bytes, received {shown(header_length)}"
            ) from None
        if not 0 <= length <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH}: {length} is outside the body's {len(body)} bytes")
        head, binary = body[:length], body[length:]
    else:
        head, binary = body, b""
    try:
        request = json.loads(head or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidInput(f"request body: not JSON ({error})") from None
    if not isinstance(request, dict):
        raise InvalidInput(f"request body: expected a JSON object, received {type(request).__name__}")
    inputs, outputs = request.get("inputs", []), request.get("outputs", [])
    parameters = request.get("parameters", {})
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise InvalidInput("inputs: expected a list of tensor objects")
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InvalidInput("outputs: expected a list of output objects")
    if not isinstance(parameters, dict):
        raise InvalidInput("parameters: expected an object")
    return HttpInferRequest(str(request.get("id", "")), inputs, outputs, parameters, binary)


def encoded_input(request: HttpInferRequest, spec: TensorSpec) -> list[bytes] | None:
    """Image files as a BYTES input in the binary extension; None when the input is not BYTES."""
    if len(request.inputs) != 1 or request.inputs[0].get("datatype") != "BYTES" or spec.dtype != "uint8":
        return None
    tensor = request.inputs[0]
    if tensor.get("name") != spec.name:
        raise InvalidInput(f"inputs[0].name: expected {spec.name!r}, received {shown(tensor.get('name'))}")
    dims = tensor.get("shape")
    if not isinstance(dims, list) or not all(isinstance(d, int) for d in dims) or not 1 <= len(dims) <= 2:
        raise InvalidInput(f"inputs[0].shape: expected [N] or [N, 1] encoded images, received {shown(dims)}")
    if (tensor.get("parameters") or {}).get("binary_data_size") is None:
        raise InvalidInput(
            "inputs[0]: send encoded images as binary data (binary_data_size), not JSON strings"
        )
    return split_bytes_tensor(request.binary, int(dims[0]), "inputs[0] binary data")


def decode_input(request: HttpInferRequest, spec: TensorSpec) -> np.ndarray:
    """The image batch: from the binary tail or from the JSON `data` list."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"inputs: expected 1 input ({spec.name!r}), received {len(request.inputs)}")
    tensor = request.inputs[0]
    name = tensor.get("name")
    if name != spec.name:
        raise InvalidInput(f"inputs[0].name: expected {spec.name!r}, received {shown(name)}")
    expected_type = v2_datatype(spec.dtype)
    if tensor.get("datatype") != expected_type:
        raise InvalidInput(
            f"inputs[0].datatype: expected {expected_type}, received {shown(tensor.get('datatype'))}"
        )
    dims = tensor.get("shape")
    if not isinstance(dims, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise InvalidInput(f"inputs[0].shape: expected a list of integers, received {shown(dims)}")
    shape = wire_shape(dims, "inputs[0].shape", "[N, H, W, C]")
    parameters = tensor.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if "data" in tensor:
            raise InvalidInput(
                "inputs[0].data: must not be set when binary_data_size is used; send one of the two"
            )
        if not isinstance(size, int) or size != len(request.binary):
            raise InvalidInput(
                f"inputs[0].parameters.binary_data_size: {shown(size)} does not match the "
                f"{len(request.binary)} bytes after the JSON header"
            )
        return array_from_bytes(request.binary, spec.dtype, shape, "inputs[0] binary data", expected_type)
    data = tensor.get("data")
    if data is None:
        raise InvalidInput("inputs[0].data: missing; send data or binary_data_size")
    elements = math.prod(shape)
    if elements > MAX_JSON_VALUES:
        raise InvalidInput(f"inputs[0].data: {elements} values is too many for JSON; use binary data")
    try:
        values = np.asarray(data, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InvalidInput(f"inputs[0].data: expected numbers for {expected_type}") from None
    if values.size != elements:
        raise InvalidInput(
            f"inputs[0].data: expected {elements} values for {expected_type} {shape}, received {values.size}"
        )
    info = np.iinfo(spec.dtype) if np.dtype(spec.dtype).kind in "iu" else None
    if (
        info is not None
        and values.size
        and (values.min() < info.min or values.max() > info.max or np.any(values % 1))
    ):
        raise InvalidInput(
            f"inputs[0].data: values must be integers {info.min}..{info.max} for {expected_type}"
        )
    return values.astype(spec.dtype).reshape(shape)


def requested_outputs(request: HttpInferRequest, config: ModelConfig, classes: int) -> list[RequestedOutput]:
    """The outputs a request asks for (as classification strings, as binary data); all if none named."""
    names = [t.name for t in config.outputs]
    all_binary = bool(request.parameters.get("binary_data_output", False))
    if not request.outputs:
        return [RequestedOutput(name, 0, all_binary) for name in names]
    wanted = []
    for i, output in enumerate(request.outputs):
        name = output.get("name")
        if name not in names:
            raise InvalidInput(f"outputs[{i}].name: expected one of {names}, received {shown(name)}")
        parameters = output.get("parameters") or {}
        top_k = parameters.get(CLASSIFICATION, 0)
        if top_k and (not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= classes):
            raise InvalidInput(
                f"outputs[{i}].parameters[{CLASSIFICATION!r}]: expected an integer in 1..{classes}, "
                f"received {shown(top_k)}"
            )
        wanted.append(RequestedOutput(str(name), int(top_k), bool(parameters.get("binary_data", all_binary))))
    return wanted


def encode_outputs(arrays: Sequence[tuple[RequestedOutput, np.ndarray]]) -> tuple[list[dict], bytes]:
    """JSON output objects, and the binary tail of those sent as binary data."""
    tensors, tail = [], []
    for output, array in arrays:
        name, binary = output.name, output.binary
        datatype = "BYTES" if array.dtype == object else v2_datatype(dtype_name(array.dtype))
        tensor: dict = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = (
                serialize_bytes(array)
                if array.dtype == object
                else np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            )
            tensor["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        elif array.dtype == object:
            tensor["data"] = [item.decode() for item in array.reshape(-1)]
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    return tensors, b"".join(tail)


def numpy_dtype(datatype: str) -> str | None:
    return V2_TO_NUMPY.get(datatype)


def proto_json(message: Message) -> dict:
    """A protobuf message as Triton's HTTP endpoints write it: 64-bit integers as JSON numbers
    (protobuf's own JSON mapping makes them strings), enums by name, scalars even when zero,
    unset sub-messages and the unchosen members of a oneof left out."""
    fields = {}
    for field in message.DESCRIPTOR.fields:
        singular_message = field.message_type is not None and field.label != FieldDescriptor.LABEL_REPEATED
        if (field.containing_oneof is not None or singular_message) and not message.HasField(field.name):
            continue
        fields[field.name] = _field_json(field, getattr(message, field.name))
    return fields


def _field_json(field: FieldDescriptor, value: object) -> object:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {key: _scalar_json(value_field, item) for key, item in value.items()}  # type: ignore[attr-defined]
    if field.label == FieldDescriptor.LABEL_REPEATED:
        return [_scalar_json(field, item) for item in value]  # type: ignore[attr-defined]
    return _scalar_json(field, value)


def _scalar_json(field: FieldDescriptor, value: object) -> object:
    if field.message_type is not None:
        return proto_json(value)  # type: ignore[arg-type]
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name  # type: ignore[index]
    return value
