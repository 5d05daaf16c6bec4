"""`cnnserve.v1` protobuf ↔ numpy, for the server and the client alike.

Tensors travel as raw little-endian bytes plus a shape. Decoding checks what only the wire
form can tell (dtype name, byte length); the model-specific shape checks live in the data plane.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cnnserve.protos import classifier_pb2 as pb
from cnnserve.serving.errors import InvalidInput

IMAGE_DTYPE = "uint8"


def decode_tensor(tensor: pb.Tensor, field: str, dtype: str = IMAGE_DTYPE) -> np.ndarray:
    """The array a `Tensor` describes; INVALID_ARGUMENT naming `field` if it is malformed."""
    sent_dtype = tensor.dtype or IMAGE_DTYPE
    if sent_dtype != dtype:
        raise InvalidInput(f"{field}.dtype: expected {dtype!r}, received {sent_dtype!r}")
    shape = [int(d) for d in tensor.shape]
    if not shape:
        raise InvalidInput(f"{field}.shape: missing; expected [N, H, W, C]")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{field}.shape: dimensions must be >= 0, received {shape}")
    itemsize = np.dtype(dtype).itemsize
    expected = math.prod(shape) * itemsize
    if len(tensor.data) != expected:
        raise InvalidInput(
            f"{field}.data: expected {expected} bytes for {dtype} {shape}, received {len(tensor.data)}"
        )
    return np.frombuffer(tensor.data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def encode_tensor(array: np.ndarray) -> pb.Tensor:
    array = np.ascontiguousarray(array)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return pb.Tensor(dtype=array.dtype.name, shape=list(array.shape), data=little.tobytes())


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
