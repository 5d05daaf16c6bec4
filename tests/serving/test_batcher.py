"""The adaptive batcher on its own: real asyncio, a fake model that records every batch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

import numpy as np
import pytest

from cnnserve.contracts.errors import CnnserveError
from cnnserve.serving.batcher import Batcher, BatchRecord, plan_batch
from cnnserve.serving.config import BatchingConfig
from cnnserve.serving.errors import DeadlineExceeded, InferenceFailed, QueueFull, ShuttingDown


class RecordingModel:
    """Returns each image's first pixel as its 'logit', so every row says whose it is."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = gate  # when set, a batch blocks until the test opens the gate

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.gate is not None:
            self.gate.wait(timeout=10)
        self.batches.append(batch.copy())
        return {"logits": batch.reshape(len(batch), -1)[:, :1].astype(np.float32)}


def images(*ids: int) -> np.ndarray:
    batch = np.zeros((len(ids), 2, 2, 1), dtype=np.uint8)
    batch[:, 0, 0, 0] = ids
    return batch


def config(max_batch_size: int = 4, delay_s: float = 0.05, queue: int = 100) -> BatchingConfig:
    return BatchingConfig(max_batch_size=max_batch_size, max_queue_delay_s=delay_s, max_queue_size=queue)


async def started(model: RecordingModel, cfg: BatchingConfig, on_batch=None) -> Batcher:
    batcher = Batcher("test", model, cfg, on_batch=on_batch)
    batcher.start()
    return batcher


def ids(result_logits: np.ndarray) -> list[int]:
    return [int(x) for x in result_logits[:, 0]]


def test_config_rejects_bad_values() -> None:
    with pytest.raises(CnnserveError, match="max_batch_size must be >= 1, received 0"):
        config(max_batch_size=0)
    with pytest.raises(CnnserveError, match="max_queue_size must be >= 1"):
        config(queue=0)
    with pytest.raises(CnnserveError, match="max_queue_delay"):
        config(delay_s=-1)


def test_plan_batch_splits_and_keeps_the_rest_at_the_head() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        from cnnserve.serving.batcher import _Pending

        big = _Pending(images(1, 2, 3, 4, 5, 6), loop.create_future(), 0, None)
        small = _Pending(images(7), loop.create_future(), 1, None)
        queue = deque([big, small])
        slices, expired = plan_batch(queue, 4, now_ns=10)
        assert [(p is big, a, b) for p, a, b in slices] == [(True, 0, 4)]
        assert list(queue) == [big, small] and not expired
        slices, _ = plan_batch(queue, 4, now_ns=10)
        assert [(p is big, a, b) for p, a, b in slices] == [(True, 4, 6), (False, 0, 1)]
        assert not queue

        late = _Pending(images(8), loop.create_future(), 0, deadline_ns=5)
        queue = deque([late])
        slices, expired = plan_batch(queue, 4, now_ns=10)
        assert slices == [] and expired == [late]

    asyncio.run(scenario())


def test_concurrent_requests_share_a_batch_and_get_their_own_rows() -> None:
    async def scenario() -> None:
        model = RecordingModel()
        records: list[BatchRecord] = []
        batcher = await started(model, config(max_batch_size=8, delay_s=1.0), records.append)
        results = await asyncio.gather(*(batcher.submit(images(i)) for i in range(8)))
        await batcher.close()
        assert [ids(r.outputs["logits"]) for r in results] == [[i] for i in range(8)]
        assert [len(b) for b in model.batches] == [8]  # full batch: no waiting for the delay
        assert all(r.batch_sizes == (8,) for r in results)
        assert records[0].size == 8 and records[0].requests == 8

    asyncio.run(scenario())


def test_requests_of_different_sizes_share_batches_and_large_ones_split() -> None:
    async def scenario() -> None:
        model = RecordingModel()
        batcher = await started(model, config(max_batch_size=4, delay_s=0.01))
        a, b, c = await asyncio.gather(
            batcher.submit(images(1, 2, 3)),
            batcher.submit(images(10, 11, 12, 13, 14, 15, 16, 17, 18, 19)),
            batcher.submit(images(20)),
        )
        await batcher.close()
        assert ids(a.outputs["logits"]) == [1, 2, 3]
        assert ids(b.outputs["logits"]) == list(range(10, 20))
        assert ids(c.outputs["logits"]) == [20]
        assert [ids(batch.reshape(len(batch), -1)) for batch in model.batches] == [
            [1, 2, 3, 10],
            [11, 12, 13, 14],
            [15, 16, 17, 18],
            [19, 20],
        ]
        assert b.batch_sizes == (4, 4, 4, 2)
        assert all(len(batch) <= 4 for batch in model.batches)

    asyncio.run(scenario())


def test_a_lone_request_waits_at_most_the_queue_delay() -> None:
    async def scenario() -> None:
        model = RecordingModel()
        batcher = await started(model, config(max_batch_size=64, delay_s=0.01))
        result = await asyncio.wait_for(batcher.submit(images(5)), timeout=10)
        await batcher.close()
        assert ids(result.outputs["logits"]) == [5]
        assert result.queue_ns > 0 and result.compute_infer_ns > 0

    asyncio.run(scenario())


def test_full_queue_refuses_at_once_and_a_cancelled_request_frees_its_slot() -> None:
    async def scenario() -> None:
        model = RecordingModel()
        batcher = await started(model, config(max_batch_size=64, delay_s=30, queue=2))
        first = asyncio.ensure_future(batcher.submit(images(1)))
        second = asyncio.ensure_future(batcher.submit(images(2)))
        await asyncio.sleep(0)
        assert batcher.queued_requests == 2
        with pytest.raises(QueueFull, match="queue is full \\(2 requests waiting\\)"):
            await batcher.submit(images(3))
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert batcher.queued_requests == 1 and batcher.queued_images == 1
        third = asyncio.ensure_future(batcher.submit(images(3)))
        await asyncio.sleep(0)
        assert batcher.queued_requests == 2
        await batcher.close()  # drains: the queued ones run now
        assert ids((await second).outputs["logits"]) == [2]
        assert ids((await third).outputs["logits"]) == [3]
        assert [ids(b.reshape(len(b), -1)) for b in model.batches] == [[2, 3]]  # 1 never computed

    asyncio.run(scenario())


def test_deadline_passing_in_the_queue_drops_the_request_before_compute() -> None:
    async def scenario() -> None:
        model = RecordingModel()
        batcher = await started(model, config(max_batch_size=64, delay_s=30))
        deadline = time.monotonic_ns() + 20_000_000
        with pytest.raises(DeadlineExceeded, match="deadline exceeded after"):
            await batcher.submit(images(1), deadline_ns=deadline)
        assert batcher.queued_requests == 0
        with pytest.raises(DeadlineExceeded, match="deadline passed before"):
            await batcher.submit(images(2), deadline_ns=time.monotonic_ns() - 1)
        await batcher.close()
        assert model.batches == []

    asyncio.run(scenario())


def test_a_failing_batch_fails_every_waiter() -> None:
    def broken(batch: np.ndarray) -> dict[str, np.ndarray]:
        raise RuntimeError("kaboom")

    def wrong_rows(batch: np.ndarray) -> dict[str, np.ndarray]:
        return {"logits": np.zeros((len(batch) + 1, 1), dtype=np.float32)}

    async def scenario(run, message: str) -> None:
        batcher = Batcher("bad", run, config(max_batch_size=4, delay_s=0.01))
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(images(i)) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, InferenceFailed) and message in str(r) for r in results)
        assert batcher.queued_requests == 0
        await batcher.close()

    asyncio.run(scenario(broken, "kaboom"))
    asyncio.run(scenario(wrong_rows, "returned 'logits' with shape [4, 1] for a batch of 3 images"))


def test_close_finishes_accepted_work_and_refuses_new_requests() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        model = RecordingModel(gate)
        batcher = await started(model, config(max_batch_size=2, delay_s=30))
        pending = [asyncio.ensure_future(batcher.submit(images(i))) for i in range(5)]
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)
        with pytest.raises(ShuttingDown):
            await batcher.submit(images(9))
        gate.set()
        await closing
        assert [ids((await p).outputs["logits"]) for p in pending] == [[i] for i in range(5)]

    asyncio.run(scenario())


def test_the_worker_runs_batch_after_batch_while_the_event_loop_is_busy() -> None:
    """The next batch must not wait for the event loop (busy decoding other requests)."""

    async def scenario() -> None:
        model = RecordingModel()
        records: list[BatchRecord] = []
        batcher = await started(model, config(max_batch_size=1, delay_s=0), records.append)
        waiting = [asyncio.ensure_future(batcher.submit(images(i))) for i in range(3)]
        await asyncio.sleep(0)  # every request is queued
        deadline = time.monotonic() + 10
        while len(model.batches) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # blocks the event loop, as a long callback would
        assert len(model.batches) == 3 and records == []  # computed; delivered once the loop is free
        assert [ids((await w).outputs["logits"]) for w in waiting] == [[0], [1], [2]]
        assert [r.size for r in records] == [1, 1, 1]
        await batcher.close()

    asyncio.run(scenario())


class BarrierModel(RecordingModel):
    """A model whose batches wait until `parties` batches run at once (or fail the test)."""

    def __init__(self, barrier: threading.Barrier) -> None:
        super().__init__()
        self.barrier = barrier

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.barrier.wait(timeout=10)  # BrokenBarrierError: the batches did not overlap
        return super().__call__(batch)


def test_two_instances_split_a_large_request_and_run_both_halves_at_once() -> None:
    async def scenario() -> None:
        barrier = threading.Barrier(2)
        first, second = BarrierModel(barrier), BarrierModel(barrier)
        batcher = Batcher("test", [first, second], config(max_batch_size=32, delay_s=0))
        batcher.start()
        assert batcher.instances == 2
        await asyncio.sleep(0.05)  # both workers are waiting for work
        result = await asyncio.wait_for(batcher.submit(images(*range(1, 33))), timeout=20)
        await batcher.close()
        # The rows in order, whichever half ended first; the helper did not split its half again.
        assert ids(result.outputs["logits"]) == list(range(1, 33))
        assert [len(b) for b in first.batches] == [16] and [len(b) for b in second.batches] == [16]
        assert result.batch_sizes == (16, 16)

    asyncio.run(scenario())


def test_small_requests_stay_on_the_first_instance_while_it_is_free() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        first, second = RecordingModel(gate), RecordingModel()
        batcher = Batcher("test", [first, second], config(max_batch_size=16, delay_s=0))
        batcher.start()
        held = asyncio.ensure_future(batcher.submit(images(1)))  # the first instance blocks on it
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(batcher.submit(images(i))) for i in range(2, 5)]
        await asyncio.sleep(0.1)  # three images wait: too few for the second instance
        assert second.batches == []
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(held, *waiting), timeout=10)
        await batcher.close()
        assert [ids(r.outputs["logits"]) for r in results] == [[1], [2], [3], [4]]
        assert [len(b) for b in first.batches] == [1, 3] and second.batches == []

    asyncio.run(scenario())


def test_the_second_instance_takes_a_queue_the_busy_first_one_leaves() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        first, second = RecordingModel(gate), RecordingModel()
        batcher = Batcher("test", [first, second], config(max_batch_size=16, delay_s=0))
        batcher.start()
        held = asyncio.ensure_future(batcher.submit(images(100)))
        await asyncio.sleep(0.05)
        queued = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(images(i)) for i in range(8))), timeout=10
        )  # answered while the first instance is still blocked
        assert [ids(r.outputs["logits"]) for r in queued] == [[i] for i in range(8)]
        assert [len(b) for b in second.batches] == [8]
        gate.set()
        assert ids((await asyncio.wait_for(held, timeout=10)).outputs["logits"]) == [100]
        await batcher.close()

    asyncio.run(scenario())


def test_closing_several_instances_answers_the_queue_and_stops_every_worker() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        models = [RecordingModel(gate) for _ in range(3)]
        batcher = Batcher("test", models, config(max_batch_size=4, delay_s=30))
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(images(i, i, i, i))) for i in range(1, 7)]
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(batcher.close())
        gate.set()
        await asyncio.wait_for(closing, timeout=10)
        results = await asyncio.gather(*pending)
        assert [ids(r.outputs["logits"]) for r in results] == [[i] * 4 for i in range(1, 7)]
        assert sum(len(b) for m in models for b in m.batches) == 24
        assert not any(worker.is_alive() for worker in batcher._workers)
        with pytest.raises(ShuttingDown):
            await batcher.submit(images(9))

    asyncio.run(scenario())


class FakeClock:
    """A monotonic clock the test moves by hand (and the model, by its cost)."""

    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


class TickingClock(FakeClock):
    """Moves 1 ms at every reading, so a batcher waiting out a queue delay sees it pass."""

    def __call__(self) -> int:
        self.now += 1_000_000
        return self.now


class TimedModel(RecordingModel):
    """A RecordingModel that takes `cost_ns` on the fake clock, noting the thread that ran it."""

    def __init__(self, clock: FakeClock, cost_ns: int, gate: threading.Event | None = None) -> None:
        super().__init__(gate)
        self.clock, self.cost_ns = clock, cost_ns
        self.on_loop_thread: list[bool] = []
        self.fail_next = False

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.on_loop_thread.append(threading.current_thread() is threading.main_thread())
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("kernel exploded")
        outputs = super().__call__(batch)
        self.clock.now += self.cost_ns
        return outputs


def inline_config(
    max_inline_us: float = 1000, delay_s: float = 0.0, under_load: bool = False
) -> BatchingConfig:
    return BatchingConfig(4, delay_s, 100, max_inline_run_s=max_inline_us / 1e6, inline_under_load=under_load)


def test_an_idle_model_runs_a_request_on_the_loops_thread_once_it_knows_the_cost() -> None:
    clock = FakeClock()
    model = TimedModel(clock, cost_ns=200_000)
    records: list[BatchRecord] = []

    async def scenario() -> list:
        batcher = Batcher("test", model, inline_config(), on_batch=records.append, clock=clock)
        batcher.start()
        first = await batcher.submit(images(1))  # no run of one image seen yet: the worker
        clock.now += 1_000_000  # a quiet millisecond, longer than a run
        second = await batcher.submit(images(2))
        clock.now += 50_000  # sooner than the model runs: batching has a chance, the worker
        third = await batcher.submit(images(3))
        await batcher.close()
        return [first, second, third]

    results = asyncio.run(scenario())
    assert model.on_loop_thread == [False, True, False]
    assert [ids(r.outputs["logits"]) for r in results] == [[1], [2], [3]]
    assert results[1].batch_sizes == (1,) and results[1].compute_infer_ns == 200_000
    assert results[1].queue_ns == 0
    assert [(r.size, r.requests, r.infer_ns) for r in records] == [(1, 1, 200_000)] * 3


def test_one_slow_run_keeps_a_cheap_model_off_the_inline_path_for_two_requests_only() -> None:
    """The cost read is the median of recent runs: a first run slowed to 5 ms (a preempted thread
    under load) costs two more worker runs, not a dozen; a model that stays slow for three runs in
    a row leaves the inline path."""
    clock = FakeClock()
    model = TimedModel(clock, cost_ns=5_000_000)

    async def scenario() -> None:
        batcher = Batcher("test", model, inline_config(), clock=clock)
        batcher.start()
        for i in range(6):
            await batcher.submit(images(i))
            model.cost_ns = 200_000
            clock.now += 10_000_000  # quiet: longer than any run
        for i in range(6):
            model.cost_ns = 5_000_000  # the model turns slow (e.g. another process took the core)
            await batcher.submit(images(i))
            clock.now += 10_000_000
        await batcher.close()

    asyncio.run(scenario())
    assert model.on_loop_thread == [False, False, False, True, True, True] + [True] * 3 + [False] * 3


def test_inline_runs_go_through_their_own_run_function_when_given_one() -> None:
    """The server hands inline runs the session's every-thread `run` and the workers its
    `run_batch`: each request reaches the function of the path it took, with its own rows."""
    clock = FakeClock()
    worker, inline = TimedModel(clock, cost_ns=200_000), TimedModel(clock, cost_ns=200_000)

    async def scenario() -> list:
        batcher = Batcher("test", worker, inline_config(), clock=clock, inline_run=inline)
        batcher.start()
        first = await batcher.submit(images(1))  # cost unknown: the worker
        clock.now += 1_000_000
        second = await batcher.submit(images(2))  # idle and cheap: inline
        await batcher.close()
        return [ids(r.outputs["logits"]) for r in (first, second)]

    assert asyncio.run(scenario()) == [[1], [2]]
    assert worker.on_loop_thread == [False] and inline.on_loop_thread == [True]


def test_no_inline_run_above_the_limit_with_a_queue_delay_or_while_a_batch_runs() -> None:
    for cfg in (inline_config(max_inline_us=100), inline_config(delay_s=0.001)):
        clock = FakeClock() if cfg.max_queue_delay_s == 0 else TickingClock()
        model = TimedModel(clock, cost_ns=200_000)

        async def quiet_requests(batcher: Batcher, clock: FakeClock = clock) -> None:
            batcher.start()
            for i in range(3):
                await batcher.submit(images(i))
                clock.now += 5_000_000
            await batcher.close()

        asyncio.run(quiet_requests(Batcher("test", model, cfg, clock=clock)))
        assert model.on_loop_thread == [False] * 3, cfg

    clock = FakeClock()
    gate = threading.Event()
    model = TimedModel(clock, cost_ns=200_000)

    async def busy_worker() -> list[int]:
        batcher = Batcher("test", model, inline_config(), clock=clock)
        batcher.start()
        await batcher.submit(images(1))  # the cost is known from here on
        model.gate = gate  # the next batch blocks in the worker
        clock.now += 50_000
        running = asyncio.ensure_future(batcher.submit(images(2)))
        while len(model.on_loop_thread) < 2:
            await asyncio.sleep(0.001)
        clock.now += 5_000_000  # quiet for long, but the worker is mid-batch
        waiting = asyncio.ensure_future(batcher.submit(images(3)))
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(running, waiting)
        await batcher.close()
        return [ids(r.outputs["logits"])[0] for r in results]

    assert asyncio.run(busy_worker()) == [2, 3]
    assert model.on_loop_thread == [False, False, False]


def test_a_failing_inline_run_fails_its_request_only() -> None:
    clock = FakeClock()
    model = TimedModel(clock, cost_ns=200_000)

    async def scenario() -> list[int]:
        batcher = Batcher("test", model, inline_config(), clock=clock)
        batcher.start()
        await batcher.submit(images(1))
        clock.now += 1_000_000
        model.fail_next = True
        with pytest.raises(
            InferenceFailed, match="model 'test' failed on a batch of 1 images: kernel exploded"
        ):
            await batcher.submit(images(2))
        clock.now += 1_000_000
        after = await batcher.submit(images(3))  # the session is free again, inline as before
        await batcher.close()
        return ids(after.outputs["logits"])

    assert asyncio.run(scenario()) == [3]
    assert model.on_loop_thread == [False, True, True]


def test_inline_limit_is_validated() -> None:
    with pytest.raises(CnnserveError, match="max_inline_run must be between 0 and 10 ms, received 20 ms"):
        BatchingConfig(4, 0.0, 100, max_inline_run_s=0.02)


async def burst(batcher: Batcher, *request_ids: int) -> list[list[int]]:
    """Requests submitted in one turn of the loop (as a stream's reads are), one image each."""
    results = await asyncio.gather(*(batcher.submit(images(i)) for i in request_ids))
    return [ids(r.outputs["logits"]) for r in results]


def test_under_load_a_burst_batches_on_the_loops_thread_once_its_size_is_known() -> None:
    """Three requests queued in one turn ride one batch: the first time on the worker (the cost
    of three is unknown), then on the loop's thread, with no hand-over, each caller its own row."""
    clock = FakeClock()
    model = TimedModel(clock, cost_ns=300_000)
    records: list[BatchRecord] = []

    async def scenario() -> list[list[list[int]]]:
        batcher = Batcher("test", model, inline_config(under_load=True), on_batch=records.append, clock=clock)
        batcher.start()
        answers = [
            await burst(batcher, 1, 2, 3),
            await burst(batcher, 4, 5, 6),
            await burst(batcher, 7, 8, 9),
        ]
        await batcher.close()
        return answers

    assert asyncio.run(scenario()) == [[[1], [2], [3]], [[4], [5], [6]], [[7], [8], [9]]]
    assert model.on_loop_thread == [False, True, True]
    assert [(r.size, r.requests, r.inline) for r in records] == [(3, 3, False), (3, 3, True), (3, 3, True)]


def threads_of_three_bursts(cfg: BatchingConfig, spare: float | None = None) -> list[bool]:
    """Whether each of three bursts of three (a 300 µs model) ran on the loop's thread; each
    caller must get its own row back either way."""
    clock = FakeClock()
    model = TimedModel(clock, cost_ns=300_000)

    async def scenario() -> None:
        batcher = Batcher("test", model, cfg, clock=clock, spare_cores=lambda: spare)
        batcher.start()
        for first in (1, 4, 7):
            assert await burst(batcher, first, first + 1, first + 2) == [[first], [first + 1], [first + 2]]
        await batcher.close()

    asyncio.run(scenario())
    return model.on_loop_thread


def test_under_load_off_or_too_costly_a_burst_goes_to_the_worker() -> None:
    assert threads_of_three_bursts(inline_config()) == [False] * 3
    assert threads_of_three_bursts(inline_config(max_inline_us=200, under_load=True)) == [False] * 3


def test_under_load_a_burst_waits_for_a_running_worker_then_runs_on_the_loop() -> None:
    """While the worker is mid-batch (instance 0's session in use), a burst only queues; once the
    worker's batch is answered, the loop runs the burst as one batch (the worker leaves it)."""
    clock = FakeClock()
    gate = threading.Event()
    model = TimedModel(clock, cost_ns=300_000)

    async def scenario() -> list[list[int]]:
        batcher = Batcher("test", model, inline_config(under_load=True), clock=clock)
        batcher.start()
        await burst(batcher, 1, 2)  # the worker; the cost of two is known from here on
        model.gate = gate
        running = asyncio.ensure_future(batcher.submit(images(3)))  # one image: cost unknown
        while len(model.on_loop_thread) < 2:
            await asyncio.sleep(0.001)
        waiting = asyncio.ensure_future(burst(batcher, 4, 5))
        await asyncio.sleep(0.01)
        assert len(model.on_loop_thread) == 2, "nothing else runs while the worker's batch does"
        gate.set()
        first = ids((await running).outputs["logits"])
        rest = await waiting
        await batcher.close()
        return [first, *rest]

    assert asyncio.run(scenario()) == [[3], [4], [5]]
    assert model.on_loop_thread == [False, False, True]
    assert [len(b) for b in model.batches] == [2, 1, 2]


def test_under_load_with_cores_to_spare_a_burst_goes_to_the_worker() -> None:
    """Half a core or more of the process's idle lately: the worker runs the batch beside the
    loop; below that, or unknown, the loop runs it itself."""
    under_load = inline_config(under_load=True)
    assert threads_of_three_bursts(under_load, spare=1.5) == [False] * 3
    assert threads_of_three_bursts(under_load, spare=0.5) == [False] * 3
    assert threads_of_three_bursts(under_load, spare=0.2) == [False, True, True]
    assert threads_of_three_bursts(under_load, spare=None) == [False, True, True]


def test_under_load_a_failing_batch_on_the_loop_fails_its_requests_only() -> None:
    clock = FakeClock()
    model = TimedModel(clock, cost_ns=300_000)

    async def scenario() -> list[list[int]]:
        batcher = Batcher("test", model, inline_config(under_load=True), clock=clock)
        batcher.start()
        await burst(batcher, 1, 2)
        model.fail_next = True
        with pytest.raises(
            InferenceFailed, match="model 'test' failed on a batch of 2 images: kernel exploded"
        ):
            await burst(batcher, 3, 4)
        after = await burst(batcher, 5, 6)
        await batcher.close()
        return after

    assert asyncio.run(scenario()) == [[5], [6]]
    assert model.on_loop_thread == [False, True, True]
