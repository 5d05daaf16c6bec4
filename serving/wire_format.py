"""Protobuf's wire encoding for the few bytes this project writes without building a message.

A served V2 answer is sent as bytes that are already serialized (v2_converters), and a stream's
answer wraps them as one field of its message; a benchmark sends requests it serialized itself.
Both need only two pieces of the encoding: the base-128 varint and a length-delimited field.
"""

from __future__ import annotations

LENGTH_DELIMITED = 2  # the wire type of strings, bytes and nested messages


def varint(value: int) -> bytes:
    """A non-negative int as protobuf's varint: seven bits per byte, low bits first, the high bit
    set on every byte but the last."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """Field `field_number` holding `payload` (a string, bytes or a serialized message)."""
    return varint(field_number << 3 | LENGTH_DELIMITED) + varint(len(payload)) + payload
