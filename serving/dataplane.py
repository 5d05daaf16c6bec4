"""The protocol-agnostic core every servicer calls: find the model, run the request, count it.

A servicer turns its wire format into an `InferenceCall` (names, deadline, and how to read its
tensors) and the `Inference` back into its response; everything between — finding the model
version, decoding image files, checking the images against the model, batching, counting each
outcome in the model's statistics, the access-log line and ranking classes — happens here once
for the Classifier, KServe V2 over gRPC and KServe V2 over HTTP.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from cnnserve.contracts.names import LOGITS, PROBABILITIES
from cnnserve.serving.access_log import MAX_REQUEST_ID_CHARS, AccessLog, AccessRecord, new_request_id
from cnnserve.serving.batcher import BatchedResult
from cnnserve.serving.errors import InvalidInput, ServingError
from cnnserve.serving.idle_poll import IdlePoll
from cnnserve.serving.image_decoding import ImageLimits, decode_images
from cnnserve.serving.registry import ModelRegistry, ServedVersion


@dataclass(frozen=True)
class RequestedOutput:
    """One output a V2 request asks for: by name, as Triton classification strings (top-k > 0),
    and (HTTP) as binary data or JSON."""

    name: str
    classification: int = 0
    binary: bool = False


@dataclass(frozen=True)
class Tensors:
    """A request's images as its servicer read them off the wire: pixels, or image files."""

    images: np.ndarray | None = None
    files: list[bytes] | None = None  # decoded here, off the event loop
    files_field: str = "inputs[0]"  # the files' name in error messages
    request_id: str = ""  # an id found in the body (V2 HTTP `id`): it names the access-log line


@dataclass(frozen=True)
class InferenceCall:
    """One inference call as a servicer hands it over: where it goes, and how to read it.

    The callbacks are the servicer's conversions; the data plane runs them inside the model's
    failure counting, so a malformed request counts as a failed one (as Triton counts it)."""

    protocol: str  # "grpc" or "http", for the access log
    model_name: str
    model_version: str
    started_ns: int
    tensors: Callable[[ServedVersion, bytes], Tensors]  # (the version, the received body)
    deadline_ns: int | None = None
    request_id: str = ""  # the client's own, or "" (generated when the access log is on)
    field: str = "inputs[0]"  # the image input's name in error messages
    # The outputs asked for, checked against the version that will run (it may have been
    # swapped while image files decoded).
    outputs: Callable[[ServedVersion], Sequence[RequestedOutput]] | None = None
    # HTTP: reads the body, inside the access log's scope and before the model is looked up.
    receive: Callable[[], Awaitable[bytes]] | None = None
    # gRPC: hands the access log's request id back before anything can fail (trailing metadata).
    announce_id: Callable[[str], None] | None = None
    # A version the servicer already looked up (Classify checks top_k against it first).
    found: ServedVersion | None = None


@dataclass(frozen=True)
class Inference:
    """A served request: the model version, its output rows and the server's timing."""

    model: ServedVersion
    outputs: dict[str, np.ndarray]
    result: BatchedResult
    started_ns: int
    requested: tuple[RequestedOutput, ...] = ()
    request_id: str = ""  # the access log's, when it is on

    @property
    def total_us(self) -> int:
        return (time.monotonic_ns() - self.started_ns) // 1000


@dataclass(frozen=True)
class Label:
    class_index: int
    label: str
    score: float


def ranked(values: np.ndarray, top_k: int, labels: Sequence[str]) -> list[list[Label]]:
    """The `top_k` classes of every row, best first (ties: lower index first), scored by `values`.

    Both the Classifier's labels and V2's classification strings rank here."""
    best = np.argsort(-values, axis=1, kind="stable")[:, :top_k]
    return [
        [Label(int(i), labels[i] if i < len(labels) else str(i), float(row[i])) for i in indices]
        for row, indices in zip(values, best, strict=True)
    ]


class DataPlane:
    def __init__(
        self,
        registry: ModelRegistry,
        max_request_images: int,
        access_log: AccessLog | None = None,
        image_limits: ImageLimits | None = None,
        idle_poll: IdlePoll | None = None,
    ) -> None:
        self.registry = registry
        self.max_request_images = max_request_images
        self.image_limits = image_limits or ImageLimits()
        # Decoding is CPU work beside the model's: at most half the cores decode at once, so a
        # burst of large images leaves the rest for the event loop and ONNX Runtime.
        self._decoders = ThreadPoolExecutor(max(1, (os.cpu_count() or 2) // 2), thread_name_prefix="decode")
        self.ready = False  # set once every model has loaded and warmed
        self.access_log = access_log or AccessLog(enabled=False)
        self.idle_poll = idle_poll  # counts what is in flight on the loop (serve --idle-poll-us)

    def find(self, name: str, version: str = "") -> ServedVersion:
        """The version that serves a request for `name` (and `version`, if given)."""
        return self.registry.get(name, version)

    @contextmanager
    def _logged(
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
    def _note(record: AccessRecord | None, inference: Inference) -> None:
        """What the access line says about a served request."""
        if record is not None:
            result = inference.result
            record.version = inference.model.version
            record.images = sum(len(v) for v in list(inference.outputs.values())[:1])
            record.queue_us = result.queue_ns // 1000
            record.compute_us = result.compute_infer_ns // 1000

    def _validate_images(self, model: ServedVersion, images: np.ndarray, field: str) -> None:
        image_shape = model.image_shape
        if images.ndim != len(image_shape) + 1:
            raise InvalidInput(
                f"{field}.shape: expected rank {len(image_shape) + 1} {model.batch_shape_text} for model "
                f"{model.name!r}, received rank {images.ndim} {list(images.shape)}"
            )
        if images.shape[0] == 0:
            raise InvalidInput(f"{field}.shape[0]: empty batch; expected at least 1 image")
        if images.shape[0] > self.max_request_images:
            raise InvalidInput(
                f"{field}.shape[0]: too many images: {images.shape[0]} > "
                f"{self.max_request_images} (--max-request-images); split the request"
            )
        if images.shape[1:] != image_shape:
            raise InvalidInput(
                f"{field}.shape: expected {model.batch_shape_text} for model {model.name!r}, "
                f"received {list(images.shape)}"
            )

    async def _decode_encoded(self, model: ServedVersion, blobs: list[bytes], field: str) -> np.ndarray:
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

    def _check_top_k(self, model: ServedVersion, top_k: int, field: str = "top_k") -> int:
        classes = model.num_classes
        if top_k == 0:
            return 1
        if not 1 <= top_k <= classes:
            raise InvalidInput(f"{field}: expected 1..{classes}, received {top_k}")
        return top_k

    @staticmethod
    def _count_failure(model: ServedVersion, error: BaseException, started_ns: int) -> None:
        """Triton counts a malformed request as a failed one too: every request to `model` that
        fails from decoding its tensors on counts, by reason."""
        if isinstance(error, ServingError):
            model.stats.record_failure(error.failure_reason, time.monotonic_ns() - started_ns)
        elif isinstance(error, asyncio.CancelledError):
            model.stats.record_failure("CANCELED", time.monotonic_ns() - started_ns)

    def checked_top_k(
        self, name: str, version: str, top_k: int, started_ns: int, field: str = "top_k"
    ) -> tuple[ServedVersion, int]:
        """The version a classification names and its checked top-k; a bad top-k counts as failed."""
        model = self.find(name, version)
        try:
            return model, self._check_top_k(model, top_k, field)
        except ServingError as error:
            self._count_failure(model, error, started_ns)
            raise

    async def run(self, call: InferenceCall) -> Inference:
        """Find the model, read the call's tensors, batch and run them; log and count the outcome.

        Without the access log, no log scope is entered: this runs once per request on the event
        loop's thread, so its steps are plain calls and one try (scripts/handler_cost.py); the
        idle poll's count wraps it without another coroutine."""
        poll = self.idle_poll
        if poll is not None:
            poll.begin()
        try:
            if not self.access_log.enabled:
                return await self._run(call, None)
            found = call.found
            name, version = (found.name, found.version) if found else (call.model_name, call.model_version)
            with self._logged(call.protocol, name, version, call.request_id, call.started_ns) as record:
                if record is not None and call.announce_id is not None:
                    call.announce_id(record.request_id)
                return await self._run(call, record)
        finally:
            if poll is not None:
                poll.end()

    async def _run(self, call: InferenceCall, record: AccessRecord | None) -> Inference:
        body = await call.receive() if call.receive is not None else b""
        model = call.found or self.find(call.model_name, call.model_version)
        try:
            tensors = call.tensors(model, body)
            if record is not None and tensors.request_id:
                record.request_id = tensors.request_id[:MAX_REQUEST_ID_CHARS]
            if tensors.files is not None:
                images = await self._decode_encoded(model, tensors.files, tensors.files_field)
                # A request reaches its batcher straight from a lookup (registry.py says why).
                model = self.find(call.model_name, call.model_version)
            else:
                assert tensors.images is not None, "a servicer reads pixels or files"
                images = tensors.images
            requested = tuple(call.outputs(model)) if call.outputs is not None else ()
            self._validate_images(model, images, call.field)
            assert model.batcher is not None, "a READY model has a batcher"
            result = await model.batcher.submit(images, call.deadline_ns)
        except (ServingError, asyncio.CancelledError) as error:
            self._count_failure(model, error, call.started_ns)
            raise
        model.stats.record_success(result, time.monotonic_ns() - call.started_ns)
        inference = Inference(
            model, result.outputs, result, call.started_ns, requested, record.request_id if record else ""
        )
        self._note(record, inference)
        return inference

    def top_k(self, inference: Inference, top_k: int) -> list[list[Label]]:
        """The `top_k` labels per image, best first, scored by softmax probability."""
        outputs = inference.outputs
        if PROBABILITIES in outputs:
            probabilities = outputs[PROBABILITIES]
        else:
            logits = outputs[LOGITS].astype(np.float64)
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities = exp / exp.sum(axis=1, keepdims=True)
        return ranked(probabilities, top_k, inference.model.config.class_labels)

    def logits(self, inference: Inference) -> np.ndarray:
        outputs = inference.outputs
        return outputs[LOGITS] if LOGITS in outputs else next(iter(outputs.values()))
