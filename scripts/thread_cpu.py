"""Per-thread CPU of a running server under `cnnserve bench server`'s load generator (Linux).

Runs one closed-loop V2 level against TARGET from this process, with the load generator of
`bench server`. Once the level's warm-up is over, it reads utime + stime of every thread of the
server's process PID (`/proc/PID/task/*/stat`) and the machine's idle time (`/proc/stat`), then
again WINDOW seconds later. It prints each thread's share of a core, the server's CPU per request
and how idle the machine was. This tells which thread limits the server (its event loop's thread
is the one whose id is PID) and what each request costs it, apart from the load generator. Each
thread's wait for a core (schedstat) is printed beside its CPU: a thread that waits about as long
as it runs is slowed by the cores being shared, not by its own work:

    .venv/bin/python scripts/thread_cpu.py --pid PID --target localhost:8500 --model noop --concurrency 32

`--streaming` sends the level over ModelStreamInfer streams instead, as `bench server --streaming`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cnnserve.bench.proc_cpu import machine_cpu_seconds, thread_cpu_seconds, thread_wait_seconds
from cnnserve.bench.server_bench import ServerPlan, run_server_bench

WARMUP_S = 1.0
SETTLE_S = 0.5  # after the warm-up, before the first reading


def core_shares(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                seconds: float) -> list[tuple[int, str, float]]:  # fmt: skip
    """(tid, name, share of one core) per thread of `after` (`thread_cpu_seconds` readings
    `seconds` apart), busiest first."""
    shares = []
    for tid, (name, cpu_s) in after.items():
        then = before.get(tid, (name, 0.0))[1]
        shares.append((tid, name, (cpu_s - then) / seconds))
    return sorted(shares, key=lambda item: -item[2])


class _LevelStarted:
    """The sweep's progress hooks: `step` comes just before the level's load begins."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def start(self, total: int) -> None:
        pass

    def step(self, label: str) -> None:
        self.event.set()

    def advance(self) -> None:
        pass


@dataclass(frozen=True)
class Measured:
    """One level: its record, each thread's share of a core and of waiting for one, the idle share."""

    record: dict
    shares: list[tuple[int, str, float]]
    waits: dict[int, float]  # tid → share of the window spent ready to run without a core
    idle: float


def wait_shares(before: dict[int, float], after: dict[int, float], seconds: float) -> dict[int, float]:
    return {tid: (wait - before.get(tid, 0.0)) / seconds for tid, wait in after.items()}


def measure(pid: int, plan: ServerPlan, window_s: float) -> Measured:
    """The level's record and each thread's CPU and run-queue wait over the window."""
    started = _LevelStarted()
    outcome: dict = {}

    def load() -> None:
        try:
            outcome["sweep"] = asyncio.run(run_server_bench(plan, progress=started))
        except Exception as error:  # the load generator's own errors name the target and the status
            outcome["error"] = error
            started.event.set()

    runner = threading.Thread(target=load, daemon=True)
    runner.start()
    if not started.event.wait(plan.connect_timeout_s + 30):
        raise SystemExit(f"thread_cpu.py: the load never started against {plan.target}")
    time.sleep(plan.warmup_s + SETTLE_S)
    waits_before = thread_wait_seconds(pid)
    before, machine_before, start = thread_cpu_seconds(pid), machine_cpu_seconds(), time.monotonic()
    time.sleep(window_s)
    after, machine_after, seconds = thread_cpu_seconds(pid), machine_cpu_seconds(), time.monotonic() - start
    waits = wait_shares(waits_before, thread_wait_seconds(pid), seconds)
    runner.join()
    if "error" in outcome:
        raise SystemExit(f"thread_cpu.py: {outcome['error']}")
    sweep = outcome["sweep"]
    if sweep.stopped or not sweep.records:
        raise SystemExit(f"thread_cpu.py: {sweep.stopped or 'no level was measured'}")
    all_s, busy_s = machine_after[0] - machine_before[0], machine_after[1] - machine_before[1]
    idle = max(0.0, (all_s - busy_s) / all_s) if all_s > 0 else 0.0  # tree_use says why
    return Measured(sweep.records[0].to_dict(), core_shares(before, after, seconds), waits, idle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int, required=True, help="the server's process (its main thread)")
    parser.add_argument("--target", required=True, help="HOST:PORT of its gRPC port")
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--window", type=float, default=4.0, help="seconds the readings are apart")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--streaming", action="store_true", help="send over V2 ModelStreamInfer streams")
    args = parser.parse_args(argv)
    if not Path(f"/proc/{args.pid}/task").is_dir():
        print(f"thread_cpu.py: no process {args.pid} to read (Linux /proc)", file=sys.stderr)
        return 2
    plan = ServerPlan(
        target=args.target, model=args.model, protocol="v2", concurrency=(args.concurrency,),
        duration_s=args.window + 2 * SETTLE_S, warmup_s=WARMUP_S, noop_model=None,
        channels=min(args.channels, args.concurrency), streaming=args.streaming,
    )  # fmt: skip
    measured = measure(args.pid, plan, args.window)
    record, shares, idle = measured.record, measured.shares, measured.idle
    rps, client = record["requests_per_s"], record["client_cpu_pct"]
    over = ", streamed" if record["streaming"] else ""  # what the load generator sent
    print(f"{args.model} at concurrency {args.concurrency}{over}: {rps:,.0f} req/s, "
          f"p50 {record['p50_ms']:.2f} ms; load generator {client:.0f}% of a core; "
          f"machine idle {100 * idle:.0f}%")  # fmt: skip
    for tid, name, share in shares:
        if share >= 0.01:
            role = "  (event loop: the main thread)" if tid == args.pid else ""
            per_request = f"{1e6 * share / rps:6.0f} µs/request"
            waited = measured.waits.get(tid)
            queued = "" if waited is None else f", waited for a core {100 * waited:5.1f}% of the window"
            print(f"  {tid:>8} {name:<16} {100 * share:5.1f}% of a core, {per_request}{queued}{role}")
    total = sum(share for _, _, share in shares)
    print(f"  server: {100 * total:.1f}% of a core, {1e6 * total / rps:.0f} µs CPU per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
