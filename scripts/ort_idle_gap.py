"""ONNX Runtime's batch-1 `run` back to back against after an idle gap, as a server sees it.

A server at concurrency 1 runs the model once per request, with the client's round trip in
between; in-process benchmarks run it back to back. This prints the p50 of both, for each thread
setting, so the two figures can be told apart on the machine at hand, and the p50 after the same
gap spent busy-waiting instead of asleep: what the sleep itself costs, apart from whatever else
ran on the core in between.

    .venv/bin/python scripts/ort_idle_gap.py bench_results/models/mnist_cnn/1/model.onnx
"""

from __future__ import annotations

import sys
import time

import numpy as np
import onnxruntime as ort

RUNS = 1000
WARMUP = 200


def p50_us(session: ort.InferenceSession, feed: dict, gap_s: float, busy: bool = False) -> float:
    times = []
    for _ in range(RUNS):
        if busy:
            until = time.perf_counter() + gap_s
            while time.perf_counter() < until:
                pass
        elif gap_s:
            time.sleep(gap_s)
        start = time.perf_counter_ns()
        session.run(None, feed)
        times.append(time.perf_counter_ns() - start)
    return float(np.percentile(times, 50)) / 1e3


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: ort_idle_gap.py MODEL.onnx", file=sys.stderr)
        return 2
    for threads, spinning in ((1, "0"), (2, "0"), (2, "1")):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        session = ort.InferenceSession(argv[0], options, providers=["CPUExecutionProvider"])
        spec = session.get_inputs()[0]
        shape = [1, *(int(d) for d in spec.shape[1:])]
        feed = {spec.name: np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)}
        for _ in range(WARMUP):
            session.run(None, feed)
        back_to_back, after_gap = p50_us(session, feed, 0.0), p50_us(session, feed, 0.001)
        after_busy_wait = p50_us(session, feed, 0.001, busy=True)
        print(
            f"intra-op threads {threads}, spinning {'on' if spinning == '1' else 'off'}: "
            f"p50 {back_to_back:.0f} µs back to back, {after_gap:.0f} µs after a 1 ms idle gap, "
            f"{after_busy_wait:.0f} µs after a 1 ms busy wait"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
