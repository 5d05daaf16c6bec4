"""Encoded images (PNG, JPEG, ...) sent to the server, decoded and resized to the model's input.

Clients other than `cnnserve classify` need not know the model's size or layout: V2 `BYTES`
inputs and the Classifier's `encoded_images` carry image files, turned here into the uint8
NHWC batch the model takes, as `cnnserve classify` does on the client side (grey or RGB,
bilinear resize). Two limits stop decompression bombs before any pixel is decoded: the bytes of
one file, and the pixels its header declares. Decoding runs in a worker thread (Pillow releases
the GIL while it decodes), so the event loop keeps serving other requests meanwhile.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cnnserve.serving.config import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from cnnserve.serving.errors import InvalidInput


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError(f"image limits must be positive, received {self.max_bytes}, {self.max_pixels}")


def decode_images(
    blobs: Sequence[bytes], image_shape: tuple[int, ...], limits: ImageLimits, field: str
) -> np.ndarray:
    """A uint8 [N, H, W, C] batch from N image files; INVALID_ARGUMENT naming the file and limit."""
    from PIL import Image, UnidentifiedImageError

    # The server's own limit (checked against the header before decoding) replaces Pillow's,
    # which would refuse a bomb with its own message and limit instead of ours.
    Image.MAX_IMAGE_PIXELS = None
    height, width, channels = image_shape
    if channels not in (1, 3):
        raise InvalidInput(f"{field}: the model takes {channels} channels; encoded images give 1 or 3")
    if not blobs:
        raise InvalidInput(f"{field}: empty batch; expected at least 1 image")
    batch = np.empty((len(blobs), height, width, channels), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        where = f"{field}[{i}]"
        if len(blob) > limits.max_bytes:
            raise InvalidInput(
                f"{where}: {len(blob)} bytes is over the limit of {limits.max_bytes} (--max-image-bytes)"
            )
        try:
            picture = Image.open(io.BytesIO(blob))
            pixels = picture.size[0] * picture.size[1]
            if pixels > limits.max_pixels:
                raise InvalidInput(
                    f"{where}: the image declares {picture.size[0]}x{picture.size[1]} = {pixels} pixels, "
                    f"over the limit of {limits.max_pixels} (--max-image-pixels)"
                )
            with picture:
                converted = picture.convert("L" if channels == 1 else "RGB")
                if converted.size != (width, height):
                    converted = converted.resize((width, height), Image.Resampling.BILINEAR)
                batch[i] = np.asarray(converted, dtype=np.uint8).reshape(height, width, channels)
        except InvalidInput:
            raise
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
            raise InvalidInput(f"{where}: not a readable image ({type(error).__name__}: {error})") from None
    return batch


def split_bytes_tensor(raw: bytes, count: int, field: str) -> list[bytes]:
    """Triton's raw BYTES layout: each element a 4-byte little-endian length, then its bytes."""
    items, offset = [], 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise InvalidInput(
                f"{field}: BYTES element {i} is missing its 4-byte length ({count} elements expected)"
            )
        length = int.from_bytes(raw[offset : offset + 4], "little")
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(
                f"{field}: BYTES element {i} declares {length} bytes; only {len(raw) - offset} remain"
            )
        items.append(raw[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise InvalidInput(f"{field}: {len(raw) - offset} bytes left after {count} BYTES elements")
    return items
