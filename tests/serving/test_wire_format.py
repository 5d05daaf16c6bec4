"""serving/wire_format.py against protobuf's own encoder: the bytes must be what it writes."""

from __future__ import annotations

import pytest

from cnnserve.protos import classifier_pb2 as pb
from cnnserve.serving.wire_format import length_delimited, varint


@pytest.mark.parametrize("size", [1, 127, 128, 300, 16_383, 16_384, 2_100_000])
def test_a_bytes_field_is_what_protobuf_writes(size: int) -> None:
    """`data` is field 3 of cnnserve.v1.Tensor; the sizes cross one, two and three varint bytes."""
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert length_delimited(3, payload) == pb.Tensor(data=payload).SerializeToString()


def test_a_packed_varint_field_is_what_protobuf_writes() -> None:
    """`shape` is field 2 (packed int64): varints of each dimension, length-delimited."""
    shape = [0, 1, 28, 127, 128, 300, 2**35]
    packed = b"".join(varint(d) for d in shape)
    assert length_delimited(2, packed) == pb.Tensor(shape=shape).SerializeToString()


def test_an_empty_field_parses_as_protobufs_default() -> None:
    """proto3 leaves an empty field out; written anyway, it still parses as the default."""
    assert length_delimited(3, b"") == b"\x1a\x00"
    assert pb.Tensor.FromString(length_delimited(3, b"")) == pb.Tensor()
