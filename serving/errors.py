"""The serving exception hierarchy and the one place that turns it into gRPC status codes.

Every error a request can cause is a `ServingError` subclass carrying its gRPC code and
Triton's failure reason (the `reason` label of `nv_inference_request_failure`). The message
names the offending field and the expected value; the same text becomes the gRPC details.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from cnnserve.contracts.errors import CnnserveError

_LOGGER = logging.getLogger(__name__)
# gRPC clients refuse trailers over 8 KiB by default (and then report RESOURCE_EXHAUSTED instead
# of the real status), so no status message may come near that, whatever a request echoed.
MAX_DETAILS_CHARS = 2048


class ServingError(CnnserveError):
    """A request the server answers with a non-OK status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    failure_reason: str = "OTHER"


class ModelNotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class InvalidInput(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelUnavailable(ServingError):
    """The model exists but is still loading or failed to load."""

    code = grpc.StatusCode.UNAVAILABLE


class ModelLoadFailed(ServingError):
    """A repository load request for a model whose files do not load."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ModelControlDisabled(ServingError):
    """Repository load/unload while the server's model control mode does not take them."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class QueueFull(ServingError):
    code = grpc.StatusCode.UNAVAILABLE
    failure_reason = "REJECTED"


class ShuttingDown(ServingError):
    code = grpc.StatusCode.UNAVAILABLE
    failure_reason = "REJECTED"


class DeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    failure_reason = "REJECTED"


class InferenceFailed(ServingError):
    """ONNX Runtime raised, or returned outputs that do not match the batch."""

    code = grpc.StatusCode.INTERNAL
    failure_reason = "BACKEND"


def bounded(details: str) -> str:
    if len(details) <= MAX_DETAILS_CHARS:
        return details
    return details[:MAX_DETAILS_CHARS] + f"… (message cut from {len(details)} characters)"


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC code and details for any exception; unexpected ones are logged as bugs."""
    if isinstance(error, ServingError):
        return error.code, bounded(str(error))
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "request cancelled"
    _LOGGER.exception("unexpected error while serving a request", exc_info=error)
    return grpc.StatusCode.INTERNAL, bounded(f"internal error: {type(error).__name__}: {error}")


# Each error type has one gRPC code (its class attribute); each code one HTTP status, here.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status_of(error: BaseException) -> tuple[int, str]:
    """The HTTP status and message for any exception, through the same map as gRPC's."""
    code, details = status_of(error)
    return HTTP_STATUS.get(code, 500), details


_Handler = TypeVar("_Handler", bound=Callable[..., Awaitable[Any]])


def grpc_errors(method: _Handler) -> _Handler:
    """Decorate a unary `grpc.aio` servicer method: exceptions become `context.abort` statuses."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            raise  # the call is gone: nobody to answer
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            code, details = status_of(error)
            await context.abort(code, details)

    return wrapper  # type: ignore[return-value]
