"""This machine's single-precision matrix-multiply peak, measured in the same run as the models.

Dividing a model's GFLOP/s by a peak measured minutes apart on the same machine gives a ratio
that survives noisy or throttled machines far better than either absolute figure.

numpy's BLAS fixes its thread count when it is loaded, so the measurement runs in a child
process whose OPENBLAS/OMP/MKL thread variables equal the backends' intra-op thread count.
Warm-up, then the best of N: the fastest run is the least disturbed estimate of what the
cores can do.

The same matmul also runs through ONNX Runtime (MLAS, which picks its kernels from the CPU at
run time), and the peak is the faster of the two. numpy alone can understate the machine badly:
an OpenBLAS pinned to an older core type (OPENBLAS_CORETYPE=Haswell on this project's AVX-512
machines) runs AVX2 kernels, and models then show "more than 100 % of peak".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.names import CPU_PROVIDER

DEFAULT_SIZE = 2048
DEFAULT_REPEATS = 10
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class MatmulPeak:
    gflops: float  # best of `repeats` at sizes 512, 1024 and `size`, the faster library
    median_gflops: float
    size: int
    repeats: int
    threads: int
    dtype: str = "float32"
    numpy_gflops: float = 0.0
    onnxruntime_gflops: float = 0.0


def matmul_gflops(size: int, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """(best, median) GFLOP/s of `size`×`size` float32 numpy matmuls in this process."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty_like(a)
    return _best_and_median(lambda: np.matmul(a, b, out=out), size, repeats, warmup)


def _best_and_median(run, size: int, repeats: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        run()
    durations = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        run()
        durations.append(time.perf_counter_ns() - start)
    flops = 2.0 * size**3
    durations.sort()
    return flops / durations[0], flops / durations[len(durations) // 2]  # flop/ns == GFLOP/s


def onnxruntime_matmul_gflops(size: int, repeats: int, threads: int, warmup: int = 2) -> tuple[float, float]:
    """(best, median) GFLOP/s of the same matmul as one ONNX Runtime MatMul node."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = numpy_helper.from_array(rng.standard_normal((size, size), dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])], [b],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=[CPU_PROVIDER])
    return _best_and_median(lambda: session.run(None, {"a": a}), size, repeats, warmup)


def measure_peak(threads: int, size: int = DEFAULT_SIZE, repeats: int = DEFAULT_REPEATS) -> MatmulPeak:
    """Runs `matmul_gflops` in a child process with the BLAS thread count set to `threads`."""
    if threads < 1 or size < 1 or repeats < 1:
        raise CnnserveError(
            f"matmul peak needs positive threads/size/repeats, received {threads}/{size}/{repeats}"
        )
    env = {**os.environ, **{name: str(threads) for name in BLAS_THREAD_VARIABLES}}
    command = [sys.executable, "-m", "cnnserve.bench.peak", "--size", str(size), "--repeats", str(repeats),
               "--threads", str(threads)]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise CnnserveError(f"matmul peak measurement failed: {result.stderr.strip()[-300:]}")
    (np_best, np_median), (ort_best, ort_median) = json.loads(result.stdout)
    best, median = max((np_best, np_median), (ort_best, ort_median))
    return MatmulPeak(best, median, size, repeats, threads, numpy_gflops=np_best, onnxruntime_gflops=ort_best)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="float32 matmul GFLOP/s (best, median) as JSON")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    # Square sizes up to --size: which one a library runs fastest varies with its blocking and
    # this machine's caches, so the peak is the best of them.
    sizes = sorted({min(size, args.size) for size in (512, 1024, args.size)})
    numpy_figures = max(matmul_gflops(size, args.repeats) for size in sizes)
    ort_figures = max(onnxruntime_matmul_gflops(size, args.repeats, args.threads) for size in sizes)
    print(json.dumps([numpy_figures, ort_figures]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
