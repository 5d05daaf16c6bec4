"""How one request reaches the server: a unary call, or a message on a ModelStreamInfer stream.

Both raise RequestFailed with the gRPC status name, so the load loops count a failure the same
way whichever path it took. A stream multiplexes every caller of its channel: each message
carries its own `id`, and the answers (which come back as they finish, not in order) are matched
to their callers by it, as tritonclient's streaming client does.
"""

from __future__ import annotations

import asyncio
import itertools

import grpc

from cnnserve.bench import protocol_adapter


class RequestFailed(Exception):
    """One request that got no answer: `code` is the gRPC status name (UNAVAILABLE, ...)."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code


class UnarySender:
    def __init__(self, channel: grpc.aio.Channel, protocol: str, request, timeout_s: float,
                 clock: protocol_adapter.CodecClock) -> None:  # fmt: skip
        self._call = protocol_adapter.infer_call(channel, protocol, request, timeout_s, clock)

    async def send(self) -> None:
        try:
            await self._call()
        except grpc.aio.AioRpcError as error:
            raise RequestFailed(error.code().name, error.details() or "") from None

    async def close(self) -> None:
        return None


class StreamSender:
    """One V2 ModelStreamInfer stream on `channel`, opened on the first send and again after
    the server ends one (a drain ends every stream with UNAVAILABLE)."""

    def __init__(self, channel: grpc.aio.Channel, request, timeout_s: float,
                 clock: protocol_adapter.CodecClock) -> None:  # fmt: skip
        self._channel, self._template, self._timeout_s, self._clock = channel, request, timeout_s, clock
        self._ids = itertools.count()
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._outbox: asyncio.Queue | None = None
        self._reader: asyncio.Task[None] | None = None

    def _open(self) -> asyncio.Queue:
        outbox: asyncio.Queue = asyncio.Queue()

        async def messages():
            while (message := await outbox.get()) is not None:
                yield message

        call = protocol_adapter.open_stream(self._channel, messages(), self._clock)
        self._outbox = outbox
        # Kept so the task is not collected mid-stream; awaited in close().
        self._reader = asyncio.ensure_future(self._read(call, outbox))
        return outbox

    async def _read(self, call, outbox: asyncio.Queue) -> None:
        failure = RequestFailed("UNAVAILABLE", "the server ended the stream")
        try:
            async for answer in call:
                waiter = self._pending.pop(answer.infer_response.id, None)
                if waiter is None or waiter.done():
                    continue
                if answer.error_message:
                    waiter.set_exception(RequestFailed("STREAM_ERROR", answer.error_message))
                else:
                    waiter.set_result(None)
        except grpc.aio.AioRpcError as error:
            failure = RequestFailed(error.code().name, error.details() or "")
        except asyncio.CancelledError:
            failure = RequestFailed("CANCELLED", "the load generator closed the stream")
        finally:
            if self._outbox is outbox:
                self._outbox = None
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(failure)
            self._pending.clear()

    async def send(self) -> None:
        outbox = self._outbox or self._open()
        message = type(self._template)()
        message.CopyFrom(self._template)
        message.id = str(next(self._ids))
        waiter = asyncio.get_running_loop().create_future()
        self._pending[message.id] = waiter
        outbox.put_nowait(message)
        try:
            await asyncio.wait_for(waiter, self._timeout_s)
        except TimeoutError:
            self._pending.pop(message.id, None)
            message_text = f"no answer on the stream within {self._timeout_s:g} s"
            raise RequestFailed("DEADLINE_EXCEEDED", message_text) from None

    async def close(self) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(None)  # half-close: the server answers what it read, then ends
        if self._reader is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), self._timeout_s)
            except TimeoutError:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)


def make_sender(channel: grpc.aio.Channel, protocol: str, request, timeout_s: float, streaming: bool,
                clock: protocol_adapter.CodecClock) -> UnarySender | StreamSender:  # fmt: skip
    if streaming:
        return StreamSender(channel, request, timeout_s, clock)
    return UnarySender(channel, protocol, request, timeout_s, clock)
