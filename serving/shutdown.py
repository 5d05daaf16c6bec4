"""SIGTERM/SIGINT and the drain that follows: every call a client sent ends OK or UNAVAILABLE.

The first SIGTERM/SIGINT sets both signals to SIG_IGN, so a second or third signal — even one
that arrives after the event loop has closed, while the interpreter tears down (Python resets
its own handlers to the default then, which would kill the process with 143) — is ignored. The
drain itself:

1. not ready: health NOT_SERVING, V2 ServerReady false (done by the caller);
2. draining: new calls park, request streams stop reading, batchers stop waiting for fuller
   batches (`CallGuard.start_draining`, `ModelRegistry.drain`);
3. quiesce: wait until every accepted call is answered and no new call has arrived for
   `QUIET_S`, within the grace period;
4. end server-streaming calls (health Watch), `server.stop()` (GOAWAY, the port closes), then
   answer the parked calls UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time

import grpc

from cnnserve.serving.call_guard import CallGuard

_LOGGER = logging.getLogger(__name__)

# How long no new call may arrive before gRPC's pending queue counts as empty. Parked
# closed-loop clients send nothing more, so this is a few round trips plus scheduling noise.
QUIET_S = 0.2
# Time for gRPC to put GOAWAY on every connection before the parked calls are answered, so
# clients learn not to send on this connection again before they see the UNAVAILABLE.
GOAWAY_S = 0.05


class ShutdownSignal:
    """Turns the first SIGTERM/SIGINT into an asyncio event; later ones are ignored."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def install(self) -> None:
        """Call from the main thread, inside the event loop that will wait."""
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        for other in self.SIGNALS:
            signal.signal(other, signal.SIG_IGN)
        if self.received.is_set():
            return
        self.received.set()
        _LOGGER.info("%s received; further SIGTERM/SIGINT are ignored", signal.Signals(signum).name)
        loop, event = self._loop, self._event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    async def wait(self) -> None:
        assert self._event is not None, "install() first"
        await self._event.wait()


async def drain_and_stop(server: grpc.aio.Server, guard: CallGuard, grace_s: float) -> None:
    """Steps 3 and 4 of the module docstring; the caller has done 1 and 2."""
    deadline_ns = time.monotonic_ns() + int(grace_s * 1e9)
    # Keep a little of the grace for gRPC's own stop, which then has nothing left to wait for.
    quiesce_by_ns = deadline_ns - int(min(1.0, grace_s / 10) * 1e9)
    if not await guard.quiesce(quiesce_by_ns, QUIET_S):
        _LOGGER.warning(
            "grace period nearly over with %d call(s) still running; they will be cancelled", guard.active
        )
    guard.close_streams()
    remaining_s = max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9)
    stopping = asyncio.create_task(server.stop(remaining_s))
    await asyncio.sleep(GOAWAY_S)
    parked = guard.release()
    if parked:
        _LOGGER.info("answered %d call(s) that arrived during the drain with UNAVAILABLE", parked)
    await stopping
