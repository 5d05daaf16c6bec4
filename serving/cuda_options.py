"""CUDA execution provider options, validated where they are built, so a bad value is a one-line
error at start-up on any machine, not an ONNX Runtime failure on the GPU box.

Standard library only: the server, `bench local` and the GPU check build these before ONNX
Runtime is imported, and the tests check them on machines without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnnserve.contracts.errors import CnnserveError

# ONNX Runtime's cudnn_conv_algo_search values: EXHAUSTIVE benchmarks every cuDNN algorithm
# for each new input shape (slow first call per batch size, fastest after: what a server that
# warms its batch sizes wants), HEURISTIC asks cuDNN's heuristics, DEFAULT takes algorithm 0.
CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
ARENA_EXTEND = ("kNextPowerOfTwo", "kSameAsRequested")
MAX_DEVICE_ID = 1023
MIB = 1 << 20


@dataclass(frozen=True)
class CudaOptions:
    device_id: int = 0
    cudnn_conv_algo_search: str = "EXHAUSTIVE"
    gpu_mem_limit_bytes: int | None = None  # None: ONNX Runtime's default (no limit)
    arena_extend_strategy: str = "kNextPowerOfTwo"
    # Copies on the compute stream: no race between a batch's upload and the previous batch.
    copy_in_default_stream: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.device_id, bool) or not isinstance(self.device_id, int):
            raise CnnserveError(f"CUDA device id must be an integer, received {self.device_id!r}")
        if not 0 <= self.device_id <= MAX_DEVICE_ID:
            raise CnnserveError(f"CUDA device id must be 0..{MAX_DEVICE_ID}, received {self.device_id}")
        if self.cudnn_conv_algo_search not in CONV_ALGO_SEARCH:
            raise CnnserveError(
                f"unknown cuDNN conv algorithm search {self.cudnn_conv_algo_search!r}; "
                f"choose one of {', '.join(CONV_ALGO_SEARCH)}"
            )
        limit = self.gpu_mem_limit_bytes
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < MIB):
            raise CnnserveError(f"GPU memory limit must be at least 1 MiB, received {limit!r} bytes")
        if self.arena_extend_strategy not in ARENA_EXTEND:
            raise CnnserveError(
                f"unknown arena extend strategy {self.arena_extend_strategy!r}; "
                f"choose one of {', '.join(ARENA_EXTEND)}"
            )

    @classmethod
    def from_flags(
        cls, device_id: int = 0, conv_algo_search: str = "exhaustive", gpu_mem_limit_mb: float | None = None
    ) -> CudaOptions:
        """From command-line spellings: lower-case search names, the memory limit in MiB."""
        search = str(conv_algo_search).upper()
        if gpu_mem_limit_mb is not None and not gpu_mem_limit_mb > 0:
            raise CnnserveError(f"--gpu-mem-limit-mb must be > 0, received {gpu_mem_limit_mb:g}")
        limit = None if gpu_mem_limit_mb is None else int(gpu_mem_limit_mb * MIB)
        return cls(device_id=device_id, cudnn_conv_algo_search=search, gpu_mem_limit_bytes=limit)

    def provider_options(self) -> dict[str, str]:
        """The CUDAExecutionProvider option dict, as ONNX Runtime takes it (strings)."""
        options = {
            "device_id": str(self.device_id),
            "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
            "arena_extend_strategy": self.arena_extend_strategy,
            "do_copy_in_default_stream": "1" if self.copy_in_default_stream else "0",
        }
        if self.gpu_mem_limit_bytes is not None:
            options["gpu_mem_limit"] = str(self.gpu_mem_limit_bytes)
        return options

    def describe(self) -> str:
        limit = "none" if self.gpu_mem_limit_bytes is None else f"{self.gpu_mem_limit_bytes / MIB:g} MiB"
        return f"cuda:{self.device_id}, cuDNN search {self.cudnn_conv_algo_search}, memory limit {limit}"
