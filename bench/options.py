"""Runtime settings shared by every in-process backend, validated where they are built."""

from __future__ import annotations

from dataclasses import dataclass, field

from cnnserve.bench.system import usable_cores
from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.names import DEVICES
from cnnserve.serving.cuda_options import CudaOptions

GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")
EXECUTION_MODES = ("sequential", "parallel")


@dataclass(frozen=True)
class RuntimeOptions:
    device: str = "auto"
    # 0 = one thread per usable core, the same for every backend and the matmul peak, so the
    # backends are compared on equal cores and pct_of_peak divides like by like.
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    graph_optimization: str = "all"  # ONNX Runtime's GraphOptimizationLevel
    execution_mode: str = "sequential"  # ONNX Runtime's ExecutionMode
    # ONNX Runtime's worker threads spin between ops; on a machine shared with other busy
    # processes (or a server sharing cores with its client) spinning steals their cores.
    allow_spinning: bool = True
    cuda: CudaOptions = field(default_factory=CudaOptions)  # ONNX Runtime's CUDA provider options
    # ONNX Runtime only: feed and fetch through an IO binding, as the server does on CUDA.
    io_binding: bool = False

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise CnnserveError(f"unknown --device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.intra_op_threads < 0:
            raise CnnserveError(f"--intra-op-threads must be >= 0, received {self.intra_op_threads}")
        if self.inter_op_threads < 1:
            raise CnnserveError(f"--inter-op-threads must be >= 1, received {self.inter_op_threads}")
        if self.graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise CnnserveError(
                f"unknown --graph-optimization {self.graph_optimization!r}; "
                f"choose one of {', '.join(GRAPH_OPTIMIZATIONS)}"
            )
        if self.execution_mode not in EXECUTION_MODES:
            raise CnnserveError(
                f"unknown --execution-mode {self.execution_mode!r}; "
                f"choose one of {', '.join(EXECUTION_MODES)}"
            )

    @property
    def threads(self) -> int:
        """The intra-op thread count actually applied."""
        return self.intra_op_threads or usable_cores()
