"""`cnnserve.v1` protobuf ↔ numpy, for the server and the client alike, and a gRPC call's deadline.

Tensors travel as raw little-endian bytes plus a shape. Decoding checks what only the wire
form can tell (dtype name, byte length); the model-specific shape checks live in the data plane.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence

import grpc
import numpy as np

from cnnserve.protos import classifier_pb2 as pb
from cnnserve.serving.errors import InvalidInput
from cnnserve.serving.log_limit import shown

IMAGE_DTYPE = "uint8"
# numpy's limit is 64 dimensions; no model here takes more than a handful.
MAX_WIRE_RANK = 8


def decode_tensor(tensor: pb.Tensor, field: str, dtype: str = IMAGE_DTYPE) -> np.ndarray:
    """The array a `Tensor` describes; INVALID_ARGUMENT naming `field` if it is malformed."""
    sent_dtype = tensor.dtype or IMAGE_DTYPE
    if sent_dtype != dtype:
        raise InvalidInput(f"{field}.dtype: expected {dtype!r}, received {shown(sent_dtype)}")
    shape = wire_shape(tensor.shape, f"{field}.shape", "[N, H, W, C]")
    return array_from_bytes(tensor.data, dtype, shape, f"{field}.data", dtype)


def wire_shape(dims: Sequence[int], field: str, expected: str) -> list[int]:
    """A shape as sent: present and without negative dimensions (both protocols)."""
    if len(dims) > MAX_WIRE_RANK:
        raise InvalidInput(
            f"{field}: rank {len(dims)} is over the supported {MAX_WIRE_RANK}; expected {expected}"
        )
    shape = [int(d) for d in dims]
    if not shape:
        raise InvalidInput(f"{field}: missing; expected {expected}")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{field}: dimensions must be >= 0, received {shape}")
    return shape


def array_from_bytes(data: bytes, dtype: str, shape: list[int], field: str, type_name: str) -> np.ndarray:
    """Little-endian `data` viewed (not copied) as `shape`, once its length is checked."""
    little = little_endian(dtype)
    expected = math.prod(shape) * little.itemsize
    if len(data) != expected:
        raise InvalidInput(
            f"{field}: expected {expected} bytes for {type_name} {shape}, received {len(data)}"
        )
    return np.frombuffer(data, dtype=little).reshape(shape)


@functools.cache
def shape_text(shape: tuple[int, ...]) -> str:
    """A config shape as error messages write it: "[N, 28, 28, 1]" (-1 is the batch, N)."""
    return "[" + ", ".join("N" if d == -1 else str(d) for d in shape) + "]"


@functools.cache
def little_endian(dtype: str) -> np.dtype:
    """The little-endian numpy dtype named `dtype` (the wire's byte order), built once."""
    return np.dtype(dtype).newbyteorder("<")


@functools.cache
def dtype_name(dtype: np.dtype) -> str:
    """`dtype.name`, remembered: numpy computes the name in Python on every access, a visible
    share of a small response's encoding in a profile of the server."""
    return dtype.name


def encode_tensor(array: np.ndarray) -> pb.Tensor:
    array = np.ascontiguousarray(array)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return pb.Tensor(dtype=dtype_name(array.dtype), shape=list(array.shape), data=little.tobytes())


def timing(
    queue_ns: int,
    compute_ns: int,
    batch_sizes: Sequence[int],
    provider: str,
    total_us: int,
) -> pb.ServerTiming:
    return pb.ServerTiming(
        queue_us=queue_ns // 1000,
        compute_us=compute_ns // 1000,
        batch_size=max(batch_sizes, default=0),
        batches=len(batch_sizes),
        execution_provider=provider,
        total_us=total_us,
    )


def deadline_ns(context: grpc.aio.ServicerContext) -> int | None:
    """The call's deadline on the monotonic clock, or None if the client set none."""
    remaining_s = context.time_remaining()
    return None if remaining_s is None else time.monotonic_ns() + int(remaining_s * 1e9)
