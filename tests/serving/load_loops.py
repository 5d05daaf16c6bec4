"""Closed-loop clients for the shutdown and reliability tests: each loop on its own connection.

Every loop sends one call, waits for its status, and sends the next, as a real client does; the
status of every call sent is counted, so a test can check that OK + UNAVAILABLE = all sent.
Channels use a local subchannel pool, or gRPC would share one TCP connection between them.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Awaitable, Callable

import grpc

Call = Callable[[grpc.aio.Channel], Awaitable[object]]
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def raw_unary(method: str, request: bytes, timeout_s: float = 30) -> Call:
    """A unary call that sends pre-serialized bytes (no protobuf classes needed in the test)."""

    async def call(channel: grpc.aio.Channel) -> object:
        return await channel.unary_unary(method)(request, timeout=timeout_s)

    return call


class ClosedLoops:
    """`count` loops in a background event loop until `stop()`; statuses counted per code."""

    def __init__(self, target: str, call: Call, count: int) -> None:
        self.target = target
        self._call = call
        self._count = count
        self.codes: Counter[grpc.StatusCode] = Counter()
        self.ok_per_loop = [0] * count
        self.details: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> ClosedLoops:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 60) -> None:
        self._stopping.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "client loops did not finish"

    @property
    def sent(self) -> int:
        return sum(self.codes.values())

    async def _run(self) -> None:
        await asyncio.gather(*(self._loop(i) for i in range(self._count)))

    async def _loop(self, index: int) -> None:
        async with grpc.aio.insecure_channel(self.target, options=OWN_CONNECTION) as channel:
            while not self._stopping.is_set():
                try:
                    await self._call(channel)
                    code = grpc.StatusCode.OK
                    self.ok_per_loop[index] += 1
                except grpc.aio.AioRpcError as error:
                    code = error.code()
                    self.details[f"{code.name}: {error.details()}"] += 1
                self.codes[code] += 1
                if code != grpc.StatusCode.OK:
                    await asyncio.sleep(0.01)  # as clients back off; the server may be gone
