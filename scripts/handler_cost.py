"""The server's own cost per V2 ModelInfer request, in-process: no network, no client.

Loads one model of a cnnserve repository the way `cnnserve serve` does (ModelManager, its
sessions and batcher), then awaits `V2Service.ModelInfer` on a parsed single-image request and
serializes the response, back to back, in rounds. Back to back, each request reaches the batcher
sooner than the model's last run took, so it goes through the worker thread (the path of every
request under load). Prints per round the µs per request, one at a time, what ONNX
Runtime's `run` took of it (the model's statistics), and the difference: decoding, the data plane,
the hand-over to the worker and back, statistics and the response. The median over rounds is
what BENCHMARKS.md compares; this machine's noise moves single rounds by a fifth.

With `--stream N`, the requests go through one `V2Service.ModelStreamInfer` instead, N in flight
(a new message is read whenever an answer is taken): the path of a streamed load, where messages
share batches. It prints the wall µs per message and the process's CPU µs per message (the event
loop's thread and the batcher's worker together), the figure a loaded 2-core machine pays.

    .venv/bin/python scripts/handler_cost.py bench_results/models noop [--requests 20000] [--rounds 5]
    .venv/bin/python scripts/handler_cost.py bench_results/models noop --stream 32
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from cnnserve.contracts.errors import CnnserveError
from cnnserve.protos import grpc_service_pb2 as pb
from cnnserve.serving.config import ServerOptions
from cnnserve.serving.dataplane import DataPlane
from cnnserve.serving.lifecycle import ModelManager
from cnnserve.serving.registry import ModelRegistry
from cnnserve.serving.v2_service import V2Service


class _Context:
    """What ModelInfer asks of a grpc.aio servicer context on the success path."""

    def time_remaining(self) -> float:
        return 30.0

    def set_trailing_metadata(self, metadata: object) -> None:
        pass


def _request(model: str, input_name: str, shape: tuple[int, ...], output: str) -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=input_name, datatype="UINT8")
    tensor.shape.extend([1, *shape])
    request.raw_input_contents.append(np.zeros(shape, np.uint8).tobytes())
    request.outputs.add(name=output)
    return request.SerializeToString()


class _Feed:
    """A request stream with at most `window` messages unanswered: a closed-loop streamed client."""

    def __init__(self, wire: bytes, total: int, window: int) -> None:
        self._wire, self._total, self._window = wire, total, window
        self._sent = self.answered = 0
        self._slot = asyncio.Event()

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> pb.ModelInferRequest:
        if self._sent == self._total:
            raise StopAsyncIteration
        while self._sent - self.answered >= self._window:
            self._slot.clear()
            await self._slot.wait()
        self._sent += 1
        return pb.ModelInferRequest.FromString(self._wire)

    def answer(self) -> None:
        self.answered += 1
        self._slot.set()


async def measure(
    repository: Path, model: str, requests: int, rounds: int, stream: int = 0
) -> list[tuple[float, float]]:
    options = ServerOptions(
        repository=repository, models=(model,), model_control="none", metrics_port=None, http_port=None
    )
    registry = ModelRegistry()
    manager = ModelManager(options, registry)
    manager.check()
    await manager.start()
    try:
        served = registry.get(model, "")
        service = V2Service(DataPlane(registry, options.max_request_images), manager, _no_reports)
        config = served.config
        wire = _request(model, config.inputs[0].name, served.image_shape, config.outputs[0].name)
        context = _Context()

        async def one() -> bytes:
            response = await service.ModelInfer(pb.ModelInferRequest.FromString(wire), context)  # type: ignore[arg-type]
            return response if isinstance(response, bytes) else response.SerializeToString()

        if stream:
            return await _measure_stream(service, context, wire, requests, rounds, stream)
        for _ in range(min(requests, 1000)):
            await one()
        results = []
        for _ in range(rounds):
            before = served.stats.snapshot().compute_infer.ns
            started = time.perf_counter_ns()
            for _ in range(requests):
                await one()
            total_us = (time.perf_counter_ns() - started) / requests / 1e3
            run_us = (served.stats.snapshot().compute_infer.ns - before) / requests / 1e3
            results.append((total_us, run_us))
        return results
    finally:
        await manager.close()


async def _measure_stream(
    service: V2Service, context: _Context, wire: bytes, requests: int, rounds: int, window: int
) -> list[tuple[float, float]]:
    """(wall µs, process CPU µs) per message of one stream per round, `window` in flight."""

    async def one_stream(total: int) -> None:
        feed = _Feed(wire, total, window)
        async for answer in service.ModelStreamInfer(feed, context):  # type: ignore[arg-type]
            if not isinstance(answer, bytes):
                raise RuntimeError(f"the stream answered an error: {answer.error_message}")
            feed.answer()
        if feed.answered != total:
            raise RuntimeError(f"{total} messages sent, {feed.answered} answered")

    await one_stream(min(requests, 1000))
    results = []
    for _ in range(rounds):
        started, cpu = time.perf_counter_ns(), time.process_time_ns()
        await one_stream(requests)
        wall_us = (time.perf_counter_ns() - started) / requests / 1e3
        results.append((wall_us, (time.process_time_ns() - cpu) / requests / 1e3))
    return results


async def _no_reports() -> None:
    raise NotImplementedError("ModelStatistics is not measured here")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("model")
    parser.add_argument("--requests", type=int, default=20000, help="per round (default: 20000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--stream", type=int, default=0, metavar="N", help="one ModelStreamInfer, N messages in flight"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.requests < 1 or args.rounds < 1 or args.stream < 0:
        parser.error("--requests and --rounds must be >= 1, --stream >= 0")
    try:
        results = asyncio.run(measure(args.repository, args.model, args.requests, args.rounds, args.stream))
    except CnnserveError as error:
        print(f"handler_cost.py: {error}", file=sys.stderr)
        return 2
    if args.stream:
        for index, (wall, cpu) in enumerate(results, 1):
            print(f"round {index}: {wall:.1f} µs per message, {cpu:.1f} µs of CPU")
        wall = statistics.median(w for w, _ in results)
        cpu = statistics.median(c for _, c in results)
        print(
            f"{args.model}: median {wall:.1f} µs per message, {cpu:.1f} µs of CPU, "
            f"one stream, {args.stream} in flight"
        )
        return 0
    for index, (total, run) in enumerate(results, 1):
        rest = total - run
        print(f"round {index}: {total:.1f} µs per request, ONNX Runtime {run:.1f}, the rest {rest:.1f}")
    total = statistics.median(t for t, _ in results)
    rest = statistics.median(t - r for t, r in results)
    print(
        f"{args.model}: median {total:.1f} µs per request, one at a time, {rest:.1f} µs outside ONNX Runtime"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
