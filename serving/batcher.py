"""The adaptive batcher: one asyncio task per model version that batches *images*, not requests.

Requests queue with one Future each. The task forms a batch when `max_batch_size` images are
waiting or the oldest request has waited `max_queue_delay`, whichever comes first; a request
larger than the batch is split across consecutive batches, and requests of different sizes
share a batch. ONNX Runtime runs in a one-thread executor off the event loop, and every
caller gets back exactly its own rows. A full queue is refused at once (the caller never
blocks), a request whose deadline passes while queued is dropped before compute, and a
cancelled request frees its queue slot immediately. Times come from `time.monotonic_ns`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cnnserve.serving.config import BatchingConfig
from cnnserve.serving.errors import DeadlineExceeded, InferenceFailed, QueueFull, ShuttingDown

_LOGGER = logging.getLogger(__name__)

RunFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]
Clock = Callable[[], int]


@dataclass(frozen=True)
class BatchRecord:
    """One model execution, as reported to the statistics."""

    size: int  # images
    requests: int
    input_ns: int  # gathering the requests' rows into one array
    infer_ns: int  # ONNX Runtime
    output_ns: int  # scattering the outputs back


@dataclass(frozen=True)
class BatchedResult:
    """What one request gets back: its own output rows and how it was served."""

    outputs: dict[str, np.ndarray]
    queue_ns: int  # enqueue → start of the batch that took its last rows
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int
    batch_sizes: tuple[int, ...]  # the batches it rode in, in order


class _Pending:
    """A queued request; `next_row` rows have been put into batches, `done_rows` computed."""

    __slots__ = (
        "batch_sizes",
        "chunks",
        "deadline_ns",
        "done_rows",
        "enqueued_ns",
        "future",
        "images",
        "infer_ns",
        "input_ns",
        "next_row",
        "output_ns",
        "queue_ns",
        "queued",
    )

    def __init__(
        self,
        images: np.ndarray,
        future: asyncio.Future[BatchedResult],
        enqueued_ns: int,
        deadline_ns: int | None,
    ) -> None:
        self.images = images
        self.future = future
        self.enqueued_ns = enqueued_ns
        self.deadline_ns = deadline_ns
        self.next_row = 0
        self.done_rows = 0
        self.chunks: list[dict[str, np.ndarray]] = []
        self.batch_sizes: list[int] = []
        self.queue_ns = self.input_ns = self.infer_ns = self.output_ns = 0
        self.queued = True  # counted against max_queue_size

    @property
    def rows(self) -> int:
        return int(self.images.shape[0])

    @property
    def live(self) -> bool:
        return not self.future.done()


Slice = tuple[_Pending, int, int]  # request, first row, end row


def plan_batch(
    queue: deque[_Pending], max_batch_size: int, now_ns: int
) -> tuple[list[Slice], list[_Pending]]:
    """Take up to `max_batch_size` rows from the head of `queue`, oldest first.

    Returns the slices of the batch and the requests whose deadline has passed (removed, not
    computed). Requests fully placed in the batch are popped; a request that does not fit
    keeps its remaining rows at the head for the next batch.
    """
    slices: list[Slice] = []
    expired: list[_Pending] = []
    rows = 0
    while queue and rows < max_batch_size:
        pending = queue[0]
        if not pending.live:
            queue.popleft()
            continue
        if pending.deadline_ns is not None and now_ns >= pending.deadline_ns:
            queue.popleft()
            expired.append(pending)
            continue
        take = min(pending.rows - pending.next_row, max_batch_size - rows)
        slices.append((pending, pending.next_row, pending.next_row + take))
        pending.next_row += take
        rows += take
        if pending.next_row == pending.rows:
            queue.popleft()
    return slices, expired


class Batcher:
    """Dynamic batching for one model version. Start it, `submit` from request handlers, `close`."""

    def __init__(
        self,
        name: str,
        run: RunFn,
        config: BatchingConfig,
        on_batch: Callable[[BatchRecord], None] | None = None,
        clock: Clock = time.monotonic_ns,
    ) -> None:
        self.name = name
        self.config = config
        self._run = run
        self._on_batch = on_batch
        self._clock = clock
        self._queue: deque[_Pending] = deque()
        self._queued_requests = 0
        self._queued_images = 0
        self._wakeup = asyncio.Event()
        self._draining = False
        self._closed = False
        # One thread: one batch at a time per model; ONNX Runtime parallelises inside it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{name}")
        # Held so the task is not garbage-collected mid-flight, and awaited by close().
        self._task: asyncio.Task[None] | None = None

    @property
    def queued_requests(self) -> int:
        """Requests waiting for their (last) batch: Triton's pending request count."""
        return self._queued_requests

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    def drain(self) -> None:
        """Stop waiting for batches to fill: run whatever is queued now (used on SIGTERM)."""
        self._draining = True
        self._wakeup.set()

    async def close(self) -> None:
        """Refuse new requests, finish every queued one, then stop the task and its thread."""
        self._closed = True
        self.drain()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, images: np.ndarray, deadline_ns: int | None = None) -> BatchedResult:
        """Queue `images` (N, ...) and wait for their outputs; N may exceed max_batch_size."""
        if self._closed:
            raise ShuttingDown(f"model {self.name!r} is shutting down; retry on another replica")
        if self._queued_requests >= self.config.max_queue_size:
            raise QueueFull(
                f"model {self.name!r} queue is full ({self.config.max_queue_size} requests "
                "waiting); retry later or raise --max-queue-size"
            )
        now = self._clock()
        if deadline_ns is not None and deadline_ns <= now:
            raise DeadlineExceeded(f"deadline passed before the request reached {self.name!r}")
        pending = _Pending(images, asyncio.get_running_loop().create_future(), now, deadline_ns)
        self._queue.append(pending)
        self._queued_requests += 1
        self._queued_images += pending.rows
        self._wakeup.set()
        try:
            if deadline_ns is None:
                return await pending.future
            return await asyncio.wait_for(pending.future, (deadline_ns - now) / 1e9)
        except TimeoutError:
            self._withdraw(pending)
            waited_ms = (self._clock() - pending.enqueued_ns) / 1e6
            raise DeadlineExceeded(
                f"deadline exceeded after {waited_ms:.1f} ms waiting for model {self.name!r}"
            ) from None
        except asyncio.CancelledError:
            self._withdraw(pending)  # the caller is gone: free its slot now
            raise

    def _withdraw(self, pending: _Pending) -> None:
        """The caller gave up: cancel its future and free its queue slot now."""
        if not pending.future.done():
            pending.future.cancel()
        self._uncount(pending)

    def _fail(self, pending: _Pending, error: Exception) -> None:
        self._uncount(pending)
        if not pending.future.done():
            pending.future.set_exception(error)

    def _uncount(self, pending: _Pending) -> None:
        """Stop counting a request against the queue; its remaining rows are skipped."""
        if pending.queued:
            pending.queued = False
            self._queued_requests -= 1
            self._queued_images -= pending.rows - pending.next_row

    async def _loop(self) -> None:
        try:
            while (batch := await self._next_batch()) is not None:
                await self._execute(batch)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug here must not leave callers waiting forever
            _LOGGER.exception("batcher for %s stopped", self.name)
            for pending in self._queue:
                self._fail(pending, InferenceFailed(f"batcher for {self.name!r} failed: {error}"))
            self._queue.clear()
            self._closed = True

    async def _next_batch(self) -> list[Slice] | None:
        delay_ns = int(self.config.max_queue_delay_s * 1e9)
        while True:
            while self._queue and not self._queue[0].live:
                self._queue.popleft()
            if not self._queue:
                if self._closed:
                    return None
                await self._wait(None)
                continue
            now = self._clock()
            wait_ns = self._queue[0].enqueued_ns + delay_ns - now
            if self._queued_images < self.config.max_batch_size and wait_ns > 0 and not self._draining:
                await self._wait(wait_ns / 1e9)
                continue
            slices, expired = plan_batch(self._queue, self.config.max_batch_size, now)
            for pending in expired:
                waited_ms = (now - pending.enqueued_ns) / 1e6
                self._fail(
                    pending,
                    DeadlineExceeded(
                        f"deadline exceeded after {waited_ms:.1f} ms waiting for model "
                        f"{self.name!r}; dropped before compute"
                    ),
                )
            for pending, start, stop in slices:
                self._queued_images -= stop - start
                if stop == pending.rows and pending.queued:
                    pending.queued = False
                    self._queued_requests -= 1
                    pending.queue_ns = now - pending.enqueued_ns
            if slices:
                return slices

    async def _wait(self, timeout_s: float | None) -> None:
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout_s)

    async def _execute(self, slices: list[Slice]) -> None:
        rows = sum(stop - start for _, start, stop in slices)
        started = self._clock()
        try:
            if len(slices) == 1:
                pending, start, stop = slices[0]
                batch = pending.images[start:stop]
            else:
                batch = np.concatenate([p.images[start:stop] for p, start, stop in slices])
            gathered = self._clock()
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self._executor, self._run, batch)
            computed = self._clock()
            for output, value in outputs.items():
                if not isinstance(value, np.ndarray) or value.ndim == 0 or value.shape[0] != rows:
                    shape = list(getattr(value, "shape", []))
                    raise InferenceFailed(
                        f"model {self.name!r} returned {output!r} with shape {shape} "
                        f"for a batch of {rows} images"
                    )
        except Exception as error:
            failure = (
                error
                if isinstance(error, InferenceFailed)
                else InferenceFailed(f"model {self.name!r} failed on a batch of {rows} images: {error}")
            )
            _LOGGER.error("%s", failure)
            for pending, _, _ in slices:
                self._fail(pending, failure)
            return
        offset = 0
        for pending, start, stop in slices:
            count = stop - start
            if pending.live:
                pending.chunks.append({k: v[offset : offset + count] for k, v in outputs.items()})
                pending.batch_sizes.append(rows)
                pending.done_rows += count
                pending.input_ns += gathered - started
                pending.infer_ns += computed - gathered
            offset += count
        scattered = self._clock()
        for pending, _, _ in slices:
            if pending.live:
                pending.output_ns += scattered - computed
                if pending.done_rows == pending.rows:
                    pending.future.set_result(_result(pending))
        if self._on_batch is not None:
            self._on_batch(
                BatchRecord(rows, len(slices), gathered - started, computed - gathered, scattered - computed)
            )


def _result(pending: _Pending) -> BatchedResult:
    if len(pending.chunks) == 1:
        outputs = pending.chunks[0]
    else:
        outputs = {k: np.concatenate([c[k] for c in pending.chunks]) for k in pending.chunks[0]}
    return BatchedResult(
        outputs=outputs,
        queue_ns=pending.queue_ns,
        compute_input_ns=pending.input_ns,
        compute_infer_ns=pending.infer_ns,
        compute_output_ns=pending.output_ns,
        batch_sizes=tuple(pending.batch_sizes),
    )
