"""The protocol-agnostic core both gRPC services call: validate, batch, infer, post-process.

Servicers convert protobuf to numpy and back and call only this; everything a request can get
wrong about the images (rank, size, count) is checked here once for both protocols, and every
outcome is counted in the model's statistics.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from cnnserve.contracts.names import LOGITS, PROBABILITIES
from cnnserve.serving.access_log import AccessLog, AccessRecord, new_request_id
from cnnserve.serving.batcher import BatchedResult
from cnnserve.serving.errors import InvalidInput, ServingError
from cnnserve.serving.image_decoding import ImageLimits, decode_images
from cnnserve.serving.registry import ModelRegistry, ServedVersion


@dataclass(frozen=True)
class Inference:
    """A served request: the model version, its output rows and the server's timing."""

    model: ServedVersion
    outputs: dict[str, np.ndarray]
    result: BatchedResult
    started_ns: int

    @property
    def total_us(self) -> int:
        return (time.monotonic_ns() - self.started_ns) // 1000


@dataclass(frozen=True)
class Label:
    class_index: int
    label: str
    score: float


class DataPlane:
    def __init__(
        self,
        registry: ModelRegistry,
        max_request_images: int,
        access_log: AccessLog | None = None,
        image_limits: ImageLimits | None = None,
    ) -> None:
        self.registry = registry
        self.max_request_images = max_request_images
        self.image_limits = image_limits or ImageLimits()
        # Decoding is CPU work beside the model's: at most half the cores decode at once, so a
        # burst of large images leaves the rest for the event loop and ONNX Runtime.
        self._decoders = ThreadPoolExecutor(max(1, (os.cpu_count() or 2) // 2), thread_name_prefix="decode")
        self.ready = False  # set once every model has loaded and warmed
        self.access_log = access_log or AccessLog(enabled=False)

    @contextmanager
    def logged(
        self, protocol: str, model: str, version: str, request_id: str, started_ns: int
    ) -> Iterator[AccessRecord | None]:
        """One access-log line for the request inside the block (when the access log is on)."""
        if not self.access_log.enabled:
            yield None
            return
        record = AccessRecord(protocol, model, version, request_id or new_request_id(), started_ns)
        try:
            yield record
        except ServingError as error:
            self.access_log.write(record, error.code.name, str(error))
            raise
        except asyncio.CancelledError:
            self.access_log.write(record, "CANCELLED")
            raise
        except Exception as error:
            self.access_log.write(record, "INTERNAL", f"{type(error).__name__}: {error}")
            raise
        else:
            self.access_log.write(record, "OK")

    @staticmethod
    def note(record: AccessRecord | None, inference: Inference) -> None:
        """What the access line says about a served request."""
        if record is not None:
            result = inference.result
            record.version = inference.model.version
            record.images = sum(len(v) for v in list(inference.outputs.values())[:1])
            record.queue_us = result.queue_ns // 1000
            record.compute_us = result.compute_infer_ns // 1000

    def validate_images(self, model: ServedVersion, images: np.ndarray, field: str) -> None:
        expected = [-1, *model.image_shape]
        shown = f"[N, {', '.join(map(str, model.image_shape))}]"
        if images.ndim != len(expected):
            raise InvalidInput(
                f"{field}.shape: expected rank {len(expected)} {shown} for model "
                f"{model.name!r}, received rank {images.ndim} {list(images.shape)}"
            )
        if images.shape[0] == 0:
            raise InvalidInput(f"{field}.shape[0]: empty batch; expected at least 1 image")
        if images.shape[0] > self.max_request_images:
            raise InvalidInput(
                f"{field}.shape[0]: too many images: {images.shape[0]} > "
                f"{self.max_request_images} (--max-request-images); split the request"
            )
        if tuple(images.shape[1:]) != model.image_shape:
            raise InvalidInput(
                f"{field}.shape: expected {shown} for model {model.name!r}, received {list(images.shape)}"
            )

    async def decode_encoded(self, model: ServedVersion, blobs: list[bytes], field: str) -> np.ndarray:
        """PNG/JPEG files → the model's uint8 batch, in a worker thread (the loop keeps serving).

        The caller looks the model up again afterwards: the version may have been swapped while
        the images were decoding, and a request must reach a batcher straight from `get()`."""
        if len(blobs) > self.max_request_images:
            raise InvalidInput(
                f"{field}: too many images: {len(blobs)} > {self.max_request_images} (--max-request-images)"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._decoders, decode_images, blobs, model.image_shape, self.image_limits, field
        )

    def check_top_k(self, model: ServedVersion, top_k: int, field: str = "top_k") -> int:
        classes = self.num_classes(model)
        if top_k == 0:
            return 1
        if not 1 <= top_k <= classes:
            raise InvalidInput(f"{field}: expected 1..{classes}, received {top_k}")
        return top_k

    @staticmethod
    def num_classes(model: ServedVersion) -> int:
        output = next((o for o in model.config.outputs if o.name == LOGITS), model.config.outputs[0])
        return int(output.shape[-1])

    @staticmethod
    @contextmanager
    def counted(model: ServedVersion, started_ns: int) -> Iterator[None]:
        """Counts a failure for every request to `model` that fails inside the block, from
        decoding its tensors on: Triton counts a malformed request as a failed one too."""
        try:
            yield
        except ServingError as error:
            model.stats.record_failure(error.failure_reason, time.monotonic_ns() - started_ns)
            raise
        except asyncio.CancelledError:
            model.stats.record_failure("CANCELED", time.monotonic_ns() - started_ns)
            raise

    async def infer(
        self,
        model: ServedVersion,
        images: np.ndarray,
        started_ns: int,
        deadline_ns: int | None,
        field: str = "images",
    ) -> Inference:
        """Validate and run `images` through the model's batcher; count a success.

        Callers run this inside `counted(model, started_ns)`, which counts the failures.
        """
        self.validate_images(model, images, field)
        assert model.batcher is not None, "a READY model has a batcher"
        result = await model.batcher.submit(images, deadline_ns)
        model.stats.record_success(result, time.monotonic_ns() - started_ns)
        return Inference(model, result.outputs, result, started_ns)

    def top_k(self, inference: Inference, top_k: int) -> list[list[Label]]:
        """The `top_k` labels per image, best first, scored by softmax probability."""
        outputs = inference.outputs
        if PROBABILITIES in outputs:
            probabilities = outputs[PROBABILITIES]
        else:
            logits = outputs[LOGITS].astype(np.float64)
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities = exp / exp.sum(axis=1, keepdims=True)
        labels = inference.model.config.class_labels
        best = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
        return [
            [Label(int(i), labels[i] if i < len(labels) else str(i), float(row[i])) for i in indices]
            for row, indices in zip(probabilities, best, strict=True)
        ]

    def logits(self, inference: Inference) -> np.ndarray:
        outputs = inference.outputs
        return outputs[LOGITS] if LOGITS in outputs else next(iter(outputs.values()))
