"""The adaptive batcher: one worker thread per model instance that batches *images*, not requests.

Requests queue with one Future each. The worker forms a batch when `max_batch_size` images are
waiting or the oldest request has waited `max_queue_delay`, whichever comes first; a request
larger than the batch is split across consecutive batches, and requests of different sizes
share a batch. Every caller gets back exactly its own rows. A full queue is refused at once (the
caller never blocks), a request whose deadline passes while queued is dropped before compute,
and a cancelled request frees its queue slot immediately. Times come from `time.monotonic_ns`.

Why a thread that pulls its own batches rather than an asyncio task handing each batch to an
executor: the hand-over waits for the event loop to let go of the GIL, and under load (the loop
busy decoding other requests) that wait left ONNX Runtime idle for part of every batch. The
worker goes from one `run` straight to the next batch with no hand-over, and completions reach
the loop in one `call_soon_threadsafe` per batch. The queue, its counters and the flags are
shared under one lock; futures are only ever touched on the event loop's thread.

An idle model may run a request inline, on the event loop's thread, and skip both hops: when
nothing is queued or running, its recent runs of that many images took at most
`max_inline_run_s` (the median of the last `RECENT_RUNS`), and at least that long has passed
since its last run ended. The last condition keeps batching under load: a request that comes
sooner than the model runs waits for a worker (and for company), while a server that answers one
request at a time, or whose loop costs more per request than the model does, saves the two
thread wake-ups. The loop is blocked while it runs, so `max_inline_run_s` is kept small.

Under load (`inline_under_load`), batches form on the loop's thread too: a queued request asks
for one call at the loop's next turn (`_run_queued`), by which time the requests read in the same
turn have queued beside it. If no worker is running, the batch's recent runs took at most
`max_inline_run_s` and the cores are busy (under `SPARE_CORES_FOR_WORKER` idle), it runs there,
and a worker that finds such a batch leaves it to the loop; otherwise a worker takes it, beside
the loop. On a machine whose cores the server shares (the 2-core VM, with the load generator
beside it) the two hand-overs a worker's batch costs — a wake-up to the worker and
`call_soon_threadsafe` back — were what left cores idle while threads queued for them, and small
batches run on one thread for less CPU per image (BENCHMARKS.md, "Batches on the event loop's
thread under load").

With several instances (sessions) of one version, each has a worker on the same queue: the
first takes whatever waits, the others (helpers) only `SHARE_MIN_ROWS` images or more, and a
large batch is split into equal shares while instances are idle. A request's rows may then
finish out of order on different workers; they are joined by their first row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cnnserve.serving.config import BatchingConfig
from cnnserve.serving.errors import DeadlineExceeded, InferenceFailed, QueueFull, ShuttingDown

_LOGGER = logging.getLogger(__name__)

RunFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]
# A request split across batches may finish them out of order on two instances: each share of its
# output rows is kept with its first row (and the size of the batch it rode in), joined in order.
Chunk = tuple[int, int, dict[str, np.ndarray]]  # first row, batch size, output rows
Clock = Callable[[], int]
# Rows worth a second instance (or max_batch_size, if smaller): fewer wait for the first
# instance's next batch instead (one instance batching small requests beats two racing for them:
# BENCHMARKS.md), and a large batch is split across idle instances in shares no smaller than this.
SHARE_MIN_ROWS = 8
# The inline decision reads the median of this many recent runs of a batch size: one slow run (a
# preempted thread, a busy neighbour) moves it not at all, a model that turned slow leaves the
# inline path within three runs.
RECENT_RUNS = 5
# Idle cores (of this process's) from which a busy model's small batches go to a worker, which
# runs them beside the loop, rather than onto the loop's thread (inline_under_load).
SPARE_CORES_FOR_WORKER = 0.5


@dataclass(frozen=True)
class BatchRecord:
    """One model execution, as reported to the statistics."""

    size: int  # images
    requests: int
    input_ns: int  # gathering the requests' rows into one array
    infer_ns: int  # ONNX Runtime
    output_ns: int  # scattering the outputs back
    inline: bool = False  # run on the event loop's thread, not by a worker


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
    """A queued request; `next_row` rows have been put into batches, `done_rows` computed.

    `abandoned` (set under the batcher's lock) means nobody waits for it any more: the caller
    gave up, or it was failed. The worker reads it instead of the future, which belongs to the
    event loop's thread.
    """

    __slots__ = (
        "abandoned",
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
        self.chunks: list[Chunk] = []
        self.queue_ns = self.input_ns = self.infer_ns = self.output_ns = 0
        self.queued = True  # counted against max_queue_size
        self.abandoned = False

    @property
    def rows(self) -> int:
        return int(self.images.shape[0])

    @property
    def live(self) -> bool:
        return not self.abandoned


Slice = tuple[_Pending, int, int]  # request, first row, end row


class _RecentRuns:
    """The last `RECENT_RUNS` run times of one batch size and their median (upper, if even)."""

    __slots__ = ("_times", "median_ns")

    def __init__(self) -> None:
        self._times: deque[int] = deque(maxlen=RECENT_RUNS)
        self.median_ns = 0

    def add(self, infer_ns: int) -> None:
        self._times.append(infer_ns)
        ordered = sorted(self._times)
        self.median_ns = ordered[len(ordered) // 2]


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
        run: RunFn | Sequence[RunFn],
        config: BatchingConfig,
        on_batch: Callable[[BatchRecord], None] | None = None,
        clock: Clock = time.monotonic_ns,
        inline_run: RunFn | None = None,
        spare_cores: Callable[[], float | None] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        # One worker thread per run function (a model instance: its own session); they take
        # batches from the one queue, so instances run different batches at the same time.
        self._runs: tuple[RunFn, ...] = (run,) if callable(run) else tuple(run)
        if not self._runs:
            raise ValueError("a batcher needs at least one run function")
        # Inline runs use instance 0's session, through this function (default: its worker's).
        self._inline_run = inline_run or self._runs[0]
        self._on_batch = on_batch
        self._clock = clock
        # Guards the queue, the counters and the flags; the first instance's worker waits on it
        # for work, the other instances' workers (helpers) on `_helper_wake`, over the same lock.
        mutex = threading.RLock()
        self._lock = threading.Condition(mutex)
        self._helper_wake = threading.Condition(mutex)
        self._helpers_waiting = 0
        self._busy = 0  # runs in progress: workers between taking a batch and asking for the next
        self._max_inline_ns = config.inline_run_limit_ns
        self._inline_under_load = config.inline_under_load and bool(self._max_inline_ns)
        self._run_scheduled = False  # a `_run_queued` call is waiting for the loop's next turn (lock)
        self._spare_cores = spare_cores  # idle cores of this process's lately (core_load.SpareCores)
        # Recent run times by batch size, and when the last run ended: what the inline decision
        # reads. Written by whichever thread ran; a stale read only costs a hop.
        self._recent_runs: dict[int, _RecentRuns] = {}
        self._last_end_ns = 0
        self._share_min = min(SHARE_MIN_ROWS, config.max_batch_size)  # rows worth a helper
        self._queue: deque[_Pending] = deque()
        self._queued_requests = 0
        self._queued_images = 0
        self._draining = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # One batch at a time per instance; ONNX Runtime parallelises inside it.
        self._workers: list[threading.Thread] = []
        self._running = 0  # workers not yet exited (under the lock)
        self._stopped: asyncio.Future[None] | None = None  # resolved when the last worker exits

    @property
    def queued_requests(self) -> int:
        """Requests waiting for their (last) batch: Triton's pending request count."""
        return self._queued_requests

    @property
    def queued_images(self) -> int:
        return self._queued_images

    @property
    def instances(self) -> int:
        return len(self._runs)

    def start(self) -> None:
        """Start the workers; call from the event loop that will `submit`."""
        if not self._workers:
            self._loop = asyncio.get_running_loop()
            self._stopped = self._loop.create_future()
            self._running = len(self._runs)
            for index, run in enumerate(self._runs):
                suffix = f"#{index}" if len(self._runs) > 1 else ""
                self._workers.append(
                    threading.Thread(
                        target=self._work,
                        args=(run, index > 0),
                        name=f"batcher-{self.name}{suffix}",
                        daemon=True,
                    )
                )
            for worker in self._workers:
                worker.start()

    def drain(self) -> None:
        """Stop waiting for batches to fill: run whatever is queued now (used on SIGTERM)."""
        with self._lock:
            self._draining = True
            self._wake_all()

    async def close(self) -> None:
        """Refuse new requests, finish every queued one, then stop the worker."""
        with self._lock:
            self._closed = self._draining = True
            self._wake_all()
        if self._stopped is not None:
            await self._stopped
        for worker in self._workers:
            # A thread ends a moment after the last one resolves `_stopped`; until then it holds
            # its instance's `run` (and so its session), which a caller may be about to free.
            await asyncio.to_thread(worker.join)

    async def submit(self, images: np.ndarray, deadline_ns: int | None = None) -> BatchedResult:
        """Queue `images` (N, ...) and wait for their outputs; N may exceed max_batch_size."""
        now = self._clock()
        if deadline_ns is not None and deadline_ns <= now:
            raise DeadlineExceeded(f"deadline passed before the request reached {self.name!r}")
        loop = asyncio.get_running_loop()
        rows = int(images.shape[0])
        with self._lock:
            if self._closed:
                raise ShuttingDown(f"model {self.name!r} is shutting down; retry on another replica")
            if self._queued_requests >= self.config.max_queue_size:
                raise QueueFull(
                    f"model {self.name!r} queue is full ({self.config.max_queue_size} requests "
                    "waiting); retry later or raise --max-queue-size"
                )
            inline = self._inline_now(rows, now)
            if inline:
                self._busy += 1  # the workers leave instance 0's session alone meanwhile
            else:
                pending = _Pending(images, loop.create_future(), now, deadline_ns)
                self._queue.append(pending)
                self._queued_requests += 1
                self._queued_images += rows
                if self._inline_under_load and not self._busy:
                    self._schedule_run_queued(loop.call_soon)
                else:
                    self._wake_for_queue()
        if inline:
            return self._run_inline(images, rows, now)
        # One timer per request with a deadline (asyncio.wait_for would add a waiter future
        # and two callbacks to every call on the loop's thread).
        timer = (
            None if deadline_ns is None else loop.call_later((deadline_ns - now) / 1e9, self._expire, pending)
        )
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._withdraw(pending)  # the caller is gone: free its slot now
            raise
        finally:
            if timer is not None:
                timer.cancel()

    # ----------------------------------------------------------------- event loop's thread

    def _inline_now(self, rows: int, now_ns: int) -> bool:
        """Run this request on the loop's thread (hold the lock)? See the module docstring."""
        if not self._max_inline_ns or self._queue or self._busy:
            return False
        recent = self._recent_runs.get(rows)
        if recent is None:
            return False  # no run of this many images seen yet: the cost is unknown
        cost = recent.median_ns
        return cost <= self._max_inline_ns and now_ns - self._last_end_ns >= cost

    def _loop_takes_queue(self) -> bool:
        """Whether the next batch is the loop's to run under load (hold the lock): its recent runs
        took at most `max_inline_run_s` and the cores are busy — fewer than
        `SPARE_CORES_FOR_WORKER` of this process's idle lately, or unknown. With cores to spare,
        a worker runs it beside the loop instead."""
        if not self._inline_under_load or self._closed or self._draining:
            return False
        recent = self._recent_runs.get(min(self._queued_images, self.config.max_batch_size))
        if recent is None or recent.median_ns > self._max_inline_ns:
            return False
        spare = self._spare_cores() if self._spare_cores is not None else None
        return spare is None or spare < SPARE_CORES_FOR_WORKER

    def _schedule_run_queued(self, call_soon: Callable[[Callable[[], None]], object]) -> None:
        """Ask the loop for one `_run_queued` at its next turn, unless one is already asked for
        (hold the lock): `call_soon` on the loop's thread, `call_soon_threadsafe` from a worker."""
        if not self._run_scheduled:
            self._run_scheduled = True
            call_soon(self._run_queued)

    def _run_queued(self) -> None:
        """The loop's turn after requests were queued under load: run what waits as one batch
        here when no worker is running and `_loop_takes_queue`, else leave it to the workers.

        A running worker is not woken: when its batch is answered (`_deliver`, as this one's is)
        the loop looks again. Nothing can be queued while this runs (only this blocked thread
        submits)."""
        with self._lock:
            self._run_scheduled = False
            if not self._queue or self._busy:
                return
            if not self._loop_takes_queue():
                self._wake_for_queue()
                return
            slices = self._take_batch(self.config.max_batch_size)
            if not slices:
                return
            self._busy += 1  # the workers leave instance 0's session alone meanwhile
        self._execute(slices, self._inline_run, on_loop=True)

    def _run_inline(self, images: np.ndarray, rows: int, submitted_ns: int) -> BatchedResult:
        """`images` (`rows` of them) as a batch of their own on instance 0, here and now."""
        started = self._clock()
        try:
            outputs = self._inline_run(images)
            computed = self._clock()
            self._check_outputs(outputs, rows)
        except Exception as error:
            failure = self._failure(error, rows)
            _LOGGER.error("%s", failure)
            raise failure from error
        finally:
            with self._lock:
                self._busy -= 1  # nothing queued meanwhile: submit runs on this blocked thread
        self._note_run(rows, computed - started, computed)
        record = BatchRecord(rows, 1, 0, computed - started, 0, inline=True)
        if self._on_batch is not None:
            self._on_batch(record)
        return BatchedResult(outputs, started - submitted_ns, 0, computed - started, 0, (rows,))

    def _note_run(self, rows: int, infer_ns: int, end_ns: int) -> None:
        recent = self._recent_runs.get(rows)
        if recent is None:
            recent = self._recent_runs[rows] = _RecentRuns()
        recent.add(infer_ns)
        self._last_end_ns = end_ns

    def _expire(self, pending: _Pending) -> None:
        """The request's deadline passed before its outputs came: answer DEADLINE_EXCEEDED now;
        its queue slot is freed and rows not yet batched are skipped."""
        if pending.future.done():
            return
        waited_ms = (self._clock() - pending.enqueued_ns) / 1e6
        self._withdraw(
            pending,
            DeadlineExceeded(f"deadline exceeded after {waited_ms:.1f} ms waiting for model {self.name!r}"),
        )

    def _withdraw(self, pending: _Pending, error: Exception | None = None) -> None:
        """Nobody waits for `pending` any more: free its queue slot now (rows not yet batched are
        skipped) and end its future with `error`, or cancel it if the caller is gone."""
        with self._lock:
            pending.abandoned = True
            self._uncount(pending)
        if pending.future.done():
            return
        if error is None:
            pending.future.cancel()
        else:
            pending.future.set_exception(error)

    def _deliver(
        self, outcomes: list[tuple[_Pending, BatchedResult | Exception]], record: BatchRecord | None
    ) -> None:
        for pending, outcome in outcomes:
            if pending.future.done():
                continue
            if isinstance(outcome, Exception):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
        if record is not None and self._on_batch is not None:
            self._on_batch(record)
        if self._inline_under_load:  # what queued meanwhile, or was left: the loop looks again
            with self._lock:
                if self._queue and not self._busy:
                    self._schedule_run_queued(asyncio.get_running_loop().call_soon)

    # ----------------------------------------------------------------- worker thread

    def _uncount(self, pending: _Pending) -> None:
        """Stop counting a request against the queue (hold the lock)."""
        if pending.queued:
            pending.queued = False
            self._queued_requests -= 1
            self._queued_images -= pending.rows - pending.next_row

    def _fail(self, failures: list[tuple[_Pending, Exception]]) -> None:
        """Stop counting these requests and answer each with its error."""
        with self._lock:  # re-entrant: callers may already hold it
            for pending, _ in failures:
                pending.abandoned = True
                self._uncount(pending)
        self._post(failures)

    def _post(
        self, outcomes: list[tuple[_Pending, BatchedResult | Exception]], record: BatchRecord | None = None
    ) -> None:
        """Hand results to the event loop's thread, which owns the futures."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver, outcomes, record)
        except RuntimeError:  # the loop is closed: nobody is left to answer
            with self._lock:
                self._closed = True

    def _work(self, run: RunFn, helper: bool) -> None:
        try:
            while (batch := self._next_batch(helper)) is not None:
                self._execute(batch, run)
        except Exception as error:  # a bug here must not leave callers waiting forever
            _LOGGER.exception("batcher for %s stopped", self.name)
            failure = InferenceFailed(f"batcher for {self.name!r} failed: {error}")
            with self._lock:
                self._closed = True
                failed = list(self._queue)
                self._queue.clear()
                self._wake_all()  # the other instances stop too
            self._fail([(pending, failure) for pending in failed])
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0
            stopped = self._stopped
            assert self._loop is not None and stopped is not None
            if last:
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody awaits the stop
                    self._loop.call_soon_threadsafe(lambda: stopped.done() or stopped.set_result(None))

    def _next_batch(self, helper: bool = False) -> list[Slice] | None:
        """The next batch for one worker: the first instance takes whatever waits, a helper
        only `SHARE_MIN_ROWS` images or more (small requests keep batching on one instance)."""
        delay_ns = int(self.config.max_queue_delay_s * 1e9)
        wake = self._helper_wake if helper else self._lock
        with self._lock:
            while True:
                while self._queue and not self._queue[0].live:
                    self._queue.popleft()
                if not self._queue:
                    if self._closed:
                        self._wake_all()  # the other instances see the end too
                        return None
                    self._wait(wake, helper)
                    continue
                if helper and self._queued_images < self._share_min:
                    self._wait(wake, helper)
                    continue
                wait_ns = self._queue[0].enqueued_ns + delay_ns - self._clock()
                if self._queued_images < self.config.max_batch_size and wait_ns > 0 and not self._draining:
                    self._wait(wake, helper, wait_ns / 1e9)
                    continue
                if self._busy == 0 and self._loop_takes_queue():
                    # The loop runs it (a `_run_queued` is asked for), without two hand-overs.
                    assert self._loop is not None
                    try:
                        self._schedule_run_queued(self._loop.call_soon_threadsafe)
                    except RuntimeError:  # the loop is closed: nobody is left to answer
                        self._closed = True
                        continue
                    self._wait(wake, helper)
                    continue
                slices = self._take_batch(self._batch_limit())
                if slices:
                    self._busy += 1
                    if len(self._runs) > 1:
                        self._wake_for_queue()  # what is left, for an idle instance
                    return slices

    def _take_batch(self, limit: int) -> list[Slice]:
        """Up to `limit` rows from the queue's head, counted out of it; requests whose deadline
        passed are failed instead (hold the lock)."""
        now = self._clock()
        slices, expired = plan_batch(self._queue, limit, now)
        if expired:
            self._fail([(pending, DeadlineExceeded(
                f"deadline exceeded after {(now - pending.enqueued_ns) / 1e6:.1f} ms waiting "
                f"for model {self.name!r}; dropped before compute"
            )) for pending in expired])  # fmt: skip
        for pending, start, stop in slices:
            self._queued_images -= stop - start
            if stop == pending.rows and pending.queued:
                pending.queued = False
                self._queued_requests -= 1
                pending.queue_ns = now - pending.enqueued_ns
        return slices

    def _batch_limit(self) -> int:
        """Rows for the batch being formed (hold the lock): all of `max_batch_size`, or an equal
        share when idle instances can run the rest at the same time (a large request is split
        across instances instead of running on one while the others wait)."""
        ready = min(self._queued_images, self.config.max_batch_size)
        # The other idle instances: waiting, or back from a batch and about to look at the queue
        # (where they find the rest); the caller is not busy yet.
        idle_others = len(self._runs) - 1 - self._busy
        parts = min(idle_others + 1, ready // self._share_min)
        return self.config.max_batch_size if parts < 2 else -(-ready // parts)

    def _wait(self, wake: threading.Condition, helper: bool, timeout_s: float | None = None) -> None:
        if helper:
            self._helpers_waiting += 1
        try:
            wake.wait(timeout_s)
        finally:
            if helper:
                self._helpers_waiting -= 1

    def _wake_for_queue(self) -> None:
        """A request arrived or rows remain (hold the lock): wake the first instance, and a
        helper when there is enough for one."""
        if not self._queue:
            return
        self._lock.notify()
        if self._helpers_waiting and self._queued_images >= self._share_min:
            self._helper_wake.notify()

    def _wake_all(self) -> None:
        self._lock.notify_all()
        self._helper_wake.notify_all()

    def _execute(self, slices: list[Slice], run: RunFn, on_loop: bool = False) -> None:
        """Run one batch and answer the requests it completes: through the loop from a worker,
        directly when it runs on the loop's thread (`on_loop`)."""
        rows = sum(stop - start for _, start, stop in slices)
        started = self._clock()
        try:
            if len(slices) == 1:
                pending, start, stop = slices[0]
                batch = pending.images[start:stop]
            else:
                batch = np.concatenate([p.images[start:stop] for p, start, stop in slices])
            gathered = self._clock()
            outputs = run(batch)
            computed = self._clock()
            self._check_outputs(outputs, rows)
        except Exception as error:
            failure = self._failure(error, rows)
            _LOGGER.error("%s", failure)
            with self._lock:
                self._busy -= 1
                self._fail([(pending, failure) for pending, _, _ in slices])
            return
        self._note_run(rows, computed - gathered, computed)
        chunks = []
        offset = 0
        for _, start, stop in slices:
            count = stop - start
            chunks.append((start, rows, {k: v[offset : offset + count] for k, v in outputs.items()}))
            offset += count
        scattered = self._clock()
        finished: list[tuple[_Pending, BatchedResult | Exception]] = []
        # Under the lock: another instance may be finishing other rows of the same request. The
        # worker is idle from here: a share of the next batch, or an inline run, may use it.
        with self._lock:
            self._busy -= 1
            for (pending, start, stop), chunk in zip(slices, chunks, strict=True):
                if not pending.live:
                    continue
                pending.chunks.append(chunk)
                pending.done_rows += stop - start
                pending.input_ns += gathered - started
                pending.infer_ns += computed - gathered
                pending.output_ns += scattered - computed
                if pending.done_rows == pending.rows:
                    finished.append((pending, _result(pending)))
        record = BatchRecord(
            rows, len(slices), gathered - started, computed - gathered, scattered - computed, inline=on_loop
        )
        if on_loop:
            self._deliver(finished, record)
        else:
            self._post(finished, record)

    def _check_outputs(self, outputs: Mapping[str, np.ndarray], rows: int) -> None:
        for output, value in outputs.items():
            if not isinstance(value, np.ndarray) or value.ndim == 0 or value.shape[0] != rows:
                shape = list(getattr(value, "shape", []))
                raise InferenceFailed(
                    f"model {self.name!r} returned {output!r} with shape {shape} for a batch of {rows} images"
                )

    def _failure(self, error: Exception, rows: int) -> InferenceFailed:
        if isinstance(error, InferenceFailed):
            return error
        return InferenceFailed(f"model {self.name!r} failed on a batch of {rows} images: {error}")


def _result(pending: _Pending) -> BatchedResult:
    ordered = sorted(pending.chunks, key=lambda chunk: chunk[0])
    if len(ordered) == 1:
        outputs = ordered[0][2]
    else:
        outputs = {k: np.concatenate([rows[k] for _, _, rows in ordered]) for k in ordered[0][2]}
    return BatchedResult(
        outputs=outputs,
        queue_ns=pending.queue_ns,
        compute_input_ns=pending.input_ns,
        compute_infer_ns=pending.infer_ns,
        compute_output_ns=pending.output_ns,
        batch_sizes=tuple(size for _, size, _ in ordered),
    )
