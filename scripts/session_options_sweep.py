"""Measure ONNX Runtime CPU session options on a model: threads, graph optimization, spinning.

    python scripts/session_options_sweep.py models/mnist_cnn/1/model.onnx --batch-sizes 1,64

The server's defaults (ORT_ENABLE_ALL, sequential, spinning off) come from runs of this script;
the numbers and the machine they came from belong in serving/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cnnserve.serving.nchwc_padding import cpu_session_model
from cnnserve.serving.session import CPU, GRAPH_OPTIMIZATION, SessionSettings, session_options


def images_per_second(session: ort.InferenceSession, batch: np.ndarray, seconds: float) -> float:
    name = session.get_inputs()[0].name
    session.run(None, {name: batch})  # warm
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        session.run(None, {name: batch})
        runs += 1
    return runs * len(batch) / elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--threads", default="1,2,0", help="intra-op threads to try (0 = ORT default)")
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    args = parser.parse_args(argv)
    probe = ort.InferenceSession(str(args.model), providers=[CPU])
    shape = [int(d) if isinstance(d, int) else 1 for d in probe.get_inputs()[0].shape[1:]]
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    print(
        f"{'threads':>7} {'graph opt':>9} {'spinning':>8} " + " ".join(f"{f'b={s} img/s':>12}" for s in sizes)
    )
    # What the server opens at each optimization level (padded filters only at "all"), read once.
    sources = {level: cpu_session_model(args.model, level)[0] for level in GRAPH_OPTIMIZATION}
    for threads, level, spinning in itertools.product(
        [int(t) for t in args.threads.split(",")], GRAPH_OPTIMIZATION, (False, True)
    ):
        options = session_options(SessionSettings(CPU, threads, level, spinning))
        session = ort.InferenceSession(sources[level], options, providers=[CPU])
        rates = []
        for size in sizes:
            batch = np.random.default_rng(0).integers(0, 256, (size, *shape), dtype=np.uint8)
            rates.append(images_per_second(session, batch, args.seconds))
        print(
            f"{threads:>7} {level:>9} {'on' if spinning else 'off':>8} "
            + " ".join(f"{r:>12.0f}" for r in rates)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
