"""This machine's single-precision matrix-multiply peak, measured in the same run as the models.

Dividing a model's GFLOP/s by a peak measured minutes apart on the same machine gives a ratio
that survives noisy or throttled machines far better than either absolute figure.

numpy's BLAS fixes its thread count when it is loaded, so the measurement runs in a child
process whose OPENBLAS/OMP/MKL thread variables equal the backends' intra-op thread count.
Warm-up, then the best of N: the fastest run is the least disturbed estimate of what the
cores can do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from cnnserve.errors import CnnserveError

DEFAULT_SIZE = 2048
DEFAULT_REPEATS = 10
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class MatmulPeak:
    gflops: float  # best of `repeats`
    median_gflops: float
    size: int
    repeats: int
    threads: int
    dtype: str = "float32"


def matmul_gflops(size: int, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """(best, median) GFLOP/s of `size`×`size` float32 matmuls in this process."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty_like(a)
    for _ in range(warmup):
        np.matmul(a, b, out=out)
    durations = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        np.matmul(a, b, out=out)
        durations.append(time.perf_counter_ns() - start)
    flops = 2.0 * size**3
    durations.sort()
    return flops / durations[0], flops / durations[len(durations) // 2]  # flop/ns == GFLOP/s


def measure_peak(threads: int, size: int = DEFAULT_SIZE, repeats: int = DEFAULT_REPEATS) -> MatmulPeak:
    """Runs `matmul_gflops` in a child process with the BLAS thread count set to `threads`."""
    if threads < 1 or size < 1 or repeats < 1:
        raise CnnserveError(
            f"matmul peak needs positive threads/size/repeats, received {threads}/{size}/{repeats}"
        )
    env = {**os.environ, **{name: str(threads) for name in BLAS_THREAD_VARIABLES}}
    command = [sys.executable, "-m", "cnnserve.bench.peak", "--size", str(size), "--repeats", str(repeats)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise CnnserveError(f"matmul peak measurement failed: {result.stderr.strip()[-300:]}")
    best, median = json.loads(result.stdout)
    return MatmulPeak(best, median, size, repeats, threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="float32 matmul GFLOP/s (best, median) as JSON")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    args = parser.parse_args(argv)
    print(json.dumps(matmul_gflops(args.size, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
