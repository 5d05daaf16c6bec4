"""Every gRPC method the server registers, wrapped once at start-up for two jobs no servicer can do.

**Undecodable messages.** gRPC parses a request before any handler runs; a parse failure
there is answered UNKNOWN and logs a traceback per message. Each method's deserializer is
wrapped so it never raises: the handler wrapper answers INVALID_ARGUMENT naming the message type
instead, with one rate-limited log line. Inside a stream, the bad message ends the stream with
that status once the requests read before it are answered.

**Draining without CANCELLED.** gRPC cancels every call that has reached the server but not yet
a handler when `server.stop()` begins (its pending queue), so a client sending at that moment
sees CANCELLED. The guard empties that queue first: once draining, a new call is *parked* in its
handler (so closed-loop clients stop sending), request streams stop reading, and the server
calls `stop()` only after every accepted call is answered and no new call has arrived for a
quiet period. Then — gRPC has sent GOAWAY by now, so clients reconnect and find the port closed —
the parked calls are answered UNAVAILABLE. Health probes are never parked: they answer at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from cnnserve.serving.errors import InvalidInput, ServingError
from cnnserve.serving.log_limit import RateLimitedLog, shown

_LOGGER = logging.getLogger(__name__)
_BAD_MESSAGES = RateLimitedLog(_LOGGER)

# Probes answer at once while draining (they report "not ready"); everything else is parked.
PROBE_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
        "/inference.GRPCInferenceService/ModelReady",
    }
)
SHUTTING_DOWN = "server is shutting down; retry on another replica"


@dataclass(frozen=True)
class Undecodable:
    """What a wrapped deserializer returns instead of raising."""

    message_type: str
    error: str

    def describe(self, method: str) -> str:
        return f"{method}: could not parse the request as {self.message_type}: {shown(self.error, 200)}"


class CallGuard:
    """Knows which calls are in the server, parks new ones while draining, and ends streams."""

    def __init__(self) -> None:
        self.draining = False
        self._active = 0  # calls inside a handler, parked ones excluded
        self._parked = 0
        self._last_arrival_ns = 0
        self._released: asyncio.Future[None] | None = None  # parked calls may answer
        self._streams_closed: asyncio.Future[None] | None = None  # server-streams must end
        self._reading: set[GuardedRequests] = set()  # request streams waiting for a message

    def _future(self, name: str) -> asyncio.Future[None]:
        future = getattr(self, name)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            setattr(self, name, future)
        return future

    @staticmethod
    def _resolve(future: asyncio.Future[None]) -> None:
        if not future.done():
            future.set_result(None)

    # ------------------------------------------------------------------ shutdown sequence

    def start_draining(self) -> None:
        """New calls park from now on; request streams stop reading after their current message."""
        self.draining = True
        self._last_arrival_ns = time.monotonic_ns()
        for requests in list(self._reading):
            requests.cut()

    async def quiesce(self, deadline_ns: int, quiet_s: float) -> bool:
        """Wait until no accepted call is running and none has arrived for `quiet_s`; False on timeout."""
        quiet_ns = int(quiet_s * 1e9)
        while True:
            now = time.monotonic_ns()
            if self._active == 0 and now - self._last_arrival_ns >= quiet_ns:
                return True
            if now >= deadline_ns:
                return False
            await asyncio.sleep(min(0.01, (deadline_ns - now) / 1e9))

    def close_streams(self) -> None:
        """End the server-streaming calls that would otherwise stay open (health Watch)."""
        self._resolve(self._future("_streams_closed"))

    def release(self) -> int:
        """Answer every parked call UNAVAILABLE; returns how many were parked."""
        self._resolve(self._future("_released"))
        return self._parked

    @property
    def active(self) -> int:
        return self._active

    # ------------------------------------------------------------------ per call

    async def park(self, context: grpc.aio.ServicerContext) -> None:
        """Hold a call that arrived while draining until it may be refused, then refuse it."""
        self._last_arrival_ns = time.monotonic_ns()
        self._parked += 1
        remaining_s = context.time_remaining()
        # Answer just before the client's own deadline, so it learns why rather than timing out.
        timeout_s = None if remaining_s is None else max(0.0, remaining_s - 0.05)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._future("_released")), timeout_s)
        await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    async def refuse_undecodable(
        self, method: str, message: Undecodable, context: grpc.aio.ServicerContext
    ) -> None:
        details = message.describe(method)
        _BAD_MESSAGES.warning(
            f"undecodable {method}", "INVALID_ARGUMENT from %s: %s", context.peer(), details
        )
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, details)

    def enter(self) -> None:
        self._active += 1

    def leave(self) -> None:
        self._active -= 1


class GuardedRequests:
    """A request stream that ends when the server drains and turns undecodable messages into errors.

    A read waits on gRPC alone: draining cancels the reads in progress (`cut`) instead of every
    read racing a drain future, which cost a task and a wait per message on the loop's thread."""

    def __init__(self, inner: AsyncIterator[Any], guard: CallGuard, method: str) -> None:
        self._inner = inner
        self._guard = guard
        self._method = method
        self._reader: asyncio.Task[Any] | None = None  # the task waiting for the next message
        self.cut_by_drain = False
        self.undecodable: Undecodable | None = None

    def __aiter__(self) -> GuardedRequests:
        return self

    async def __anext__(self) -> Any:
        if self._guard.draining:
            self.cut_by_drain = True
            raise StopAsyncIteration
        self._reader = asyncio.current_task()
        reading = self._guard._reading
        reading.add(self)
        try:
            message = await self._inner.__anext__()  # StopAsyncIteration when the client half-closed
        except asyncio.CancelledError:
            # Ours (the drain) unless someone else cancelled the task too.
            if self.cut_by_drain and self._reader is not None and self._reader.uncancel() == 0:
                raise StopAsyncIteration from None
            raise
        finally:
            reading.discard(self)
            self._reader = None
        if isinstance(message, Undecodable):
            self.undecodable = message
            raise InvalidInput(message.describe(self._method))
        return message

    def cut(self) -> None:
        """Stop the read in progress: the stream ends after the messages already read.

        A message gRPC has taken in whose read has not yet resumed is dropped with the read; like
        the messages still on the wire, it was never read and gets no answer: the stream ends
        UNAVAILABLE once every message read before is answered, so the client sends the rest to
        another replica."""
        if self._reader is not None and not self.cut_by_drain:
            self.cut_by_drain = True
            self._reader.cancel()


def _safe_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message_type = getattr(descriptor, "full_name", "the request message")

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as error:  # protobuf's DecodeError, or whatever a deserializer raises
            return Undecodable(message_type, f"{type(error).__name__}: {error}")

    return parse


def _bytes_pass_through(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """The response serializer, except that a handler may answer with the message already
    serialized (V2 ModelInfer and ModelStreamInfer build their bytes from a cached head:
    v2_converters)."""
    if serialize is None:
        return None

    def encode(response: Any) -> bytes:
        return response if type(response) is bytes else serialize(response)

    return encode


def guard_handler(method: str, handler: grpc.RpcMethodHandler, guard: CallGuard) -> grpc.RpcMethodHandler:
    """`handler` with a deserializer that never raises and the guard around its behaviour."""
    parks = method not in PROBE_METHODS
    if not handler.request_streaming and not handler.response_streaming:
        unary = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                await guard.refuse_undecodable(method, request, context)
            if guard.draining and parks:
                await guard.park(context)
            guard.enter()
            try:
                return await unary(request, context)
            finally:
                guard.leave()

        return handler._replace(
            unary_unary=unary_unary,
            request_deserializer=_safe_deserializer(handler.request_deserializer),
            response_serializer=_bytes_pass_through(handler.response_serializer),
        )
    if not handler.request_streaming:
        streaming = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> None:
            if isinstance(request, Undecodable):
                await guard.refuse_undecodable(method, request, context)
            if guard.draining:
                await guard.park(context)
            await _until_streams_close(guard, _write_all(streaming(request, context), context), context)

        return handler._replace(
            unary_stream=unary_stream, request_deserializer=_safe_deserializer(handler.request_deserializer)
        )
    behaviour = handler.stream_stream if handler.response_streaming else handler.stream_unary

    async def streaming_requests(
        request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> Any:
        if guard.draining:
            await guard.park(context)
        requests = GuardedRequests(request_iterator, guard, method)
        guard.enter()
        try:
            result = behaviour(requests, context)
            if inspect.isasyncgen(result):
                await _write_all(result, context)
                response = None
            else:
                response = await result
        except ServingError as error:
            await context.abort(error.code, str(error))
        finally:
            guard.leave()
        if requests.undecodable is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, requests.undecodable.describe(method))
        if requests.cut_by_drain:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "server is shutting down: every request read from this stream was answered; "
                "send the rest to another replica",
            )
        return response

    replaced = {"stream_stream" if handler.response_streaming else "stream_unary": streaming_requests}
    return handler._replace(
        request_deserializer=_safe_deserializer(handler.request_deserializer),
        response_serializer=_bytes_pass_through(handler.response_serializer),
        **replaced,
    )


async def _write_all(result: Any, context: grpc.aio.ServicerContext) -> None:
    """Run a server-streaming behaviour: an async generator's items are written as they come."""
    if inspect.isasyncgen(result):
        async for response in result:
            await context.write(response)
    else:
        await result


async def _until_streams_close(guard: CallGuard, stream: Any, context: grpc.aio.ServicerContext) -> None:
    task = asyncio.ensure_future(stream)
    closed = guard._future("_streams_closed")
    try:
        await asyncio.wait((task, closed), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task.done():
        task.result()
        return
    task.cancel()
    await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)


class _GuardedGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, guard: CallGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, guard_handler(method, handler, self._guard))
            self._wrapped[method] = cached
        return cached[1]


class GuardedServer:
    """What generated `add_*Servicer_to_server` functions register on: wraps, then forwards."""

    def __init__(self, server: grpc.aio.Server, guard: CallGuard) -> None:
        self._server = server
        self._guard = guard

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GuardedGenericHandler(h, self._guard) for h in handlers))

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        wrapped = {
            name: guard_handler(f"/{service}/{name}", handler, self._guard)
            for name, handler in handlers.items()
        }
        self._server.add_registered_method_handlers(service, wrapped)
