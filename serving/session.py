"""ONNX Runtime sessions that report the execution provider they really run on.

`onnxruntime-gpu` lists CUDAExecutionProvider in `get_available_providers()` even on a
machine without a GPU, and a session asked for CUDA silently falls back to CPU. Only
`session.get_providers()` tells the truth, so every decision here is checked against it.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cnnserve.contracts.cpu_limits import affinity_cores
from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.names import CPU_PROVIDER as CPU
from cnnserve.contracts.names import CUDA_PROVIDER as CUDA
from cnnserve.serving.core_load import SpareCores
from cnnserve.serving.cuda_options import CudaOptions
from cnnserve.serving.gap_probe import GapProbe, probe_after_gap
from cnnserve.serving.nchwc_padding import PaddedConv, cpu_session_model

_LOGGER = logging.getLogger(__name__)
_ORT_TO_NUMPY = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(int64)": "int64"}


@dataclass(frozen=True)
class DeviceChoice:
    """The provider every session will use, and a one-line reason for the log."""

    provider: str
    reason: str


GRAPH_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
EXECUTION_MODE = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL, "parallel": ort.ExecutionMode.ORT_PARALLEL}
_ERRORS_ONLY = 3  # ONNX Runtime's log severity: ERROR and FATAL
_DEFAULT_LOGGER = -1  # the session logs as `ort.set_default_logger_severity` says


@dataclass(frozen=True)
class SessionSettings:
    """Everything a session is opened with; the server's defaults, which `bench local` varies."""

    provider: str
    cpu_threads: int = 0  # 0: ONNX Runtime decides (one per physical core)
    graph_optimization: str = "all"  # a GRAPH_OPTIMIZATION key
    # Spinning threads burn the cores the gRPC and batching threads need between batches.
    allow_spinning: bool = False
    cuda: CudaOptions = field(default_factory=CudaOptions)
    # None: on CUDA only. IO binding lets ONNX Runtime copy the batch to the GPU and the outputs
    # back in one go, without an extra host staging copy per output; on CPU it buys nothing,
    # but it runs there too (so the path the GPU takes is tested on every machine).
    io_binding: bool | None = None
    # One batch runs at a time per model, so the server's parallelism comes from intra-op
    # threads only: one inter-op thread, sequential execution.
    inter_op_threads: int = 1
    execution_mode: str = "sequential"  # an EXECUTION_MODE key
    # The server logs errors only; bench leaves it to the default logger, which it silences
    # while it tries CUDA.
    quiet: bool = True


def session_options(settings: SessionSettings) -> ort.SessionOptions:
    """The one place ONNX Runtime's SessionOptions are built, for the server and for bench."""
    options = ort.SessionOptions()
    options.graph_optimization_level = GRAPH_OPTIMIZATION[settings.graph_optimization]
    options.execution_mode = EXECUTION_MODE[settings.execution_mode]
    options.inter_op_num_threads = settings.inter_op_threads
    options.intra_op_num_threads = settings.cpu_threads
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings.allow_spinning else "0"
    )
    options.log_severity_level = _ERRORS_ONLY if settings.quiet else _DEFAULT_LOGGER
    return options


def providers(provider: str, cuda: CudaOptions | None = None) -> list:
    """ONNX Runtime's provider list for `provider`: CUDA with its options, and CPU behind it."""
    if provider == CUDA:
        return [(CUDA, (cuda or CudaOptions()).provider_options()), CPU]
    return [CPU]


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what C++ code writes to fd 2 (ONNX Runtime's provider errors) into a list."""
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += sink.read().decode(errors="replace").splitlines()


def _cuda_failure_reason(log_lines: Sequence[str]) -> str:
    """The most useful sentence from ONNX Runtime's own log of a failed CUDA start."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(log_lines))
    match = re.search(r"with error: ([^\n]+)", text)
    if match:
        return match.group(1).strip()
    match = re.search(r"(Require [^\n]*?CUDA \d+(?:\.\d+)*(?:\.\*)?)", text)
    if match:
        return match.group(1).strip()
    return "ONNX Runtime could not create the CUDA execution provider"


def _probe_cuda(model: Path, cuda: CudaOptions | None = None) -> tuple[bool | None, list[str]]:
    """Open `model` asking for CUDA: True/False = CUDA did/did not stick, None = model unloadable."""
    with _captured_stderr() as log_lines:
        try:
            session = ort.InferenceSession(
                str(model), session_options(SessionSettings(CUDA)), providers(CUDA, cuda)
            )
        except Exception:  # ORT raises its own Fail/InvalidProtobuf/... types: a broken model
            session = None
    for line in log_lines:
        _LOGGER.debug("onnxruntime: %s", line)
    if session is None:
        return None, log_lines
    return session.get_providers()[0] == CUDA, log_lines


def resolve_device(
    device: str, probe_models: Sequence[Path], cuda: CudaOptions | None = None
) -> DeviceChoice:
    """Pick the provider for `--device` by opening a model with CUDA (on `cuda`'s device, with
    its options) and asking the session."""
    if device == "cpu":
        return DeviceChoice(CPU, "--device cpu")
    if CUDA not in ort.get_available_providers():
        reason = "this onnxruntime build has no CUDA execution provider"
    else:
        reason = "no model could be opened to try CUDA"
        for model in probe_models:
            on_cuda, log_lines = _probe_cuda(model, cuda)
            if on_cuda is None:
                continue  # that model is broken; its own load will report it
            if on_cuda:
                return DeviceChoice(CUDA, f"--device {device}: CUDA confirmed by session.get_providers()")
            reason = f"CUDA is not usable: {_cuda_failure_reason(log_lines)}"
            break
    if device == "cuda":
        raise CnnserveError(f"--device cuda: {reason}; use --device auto or cpu")
    return DeviceChoice(CPU, f"--device auto fell back to CPU because {reason}")


class ProviderMismatch(CnnserveError):
    """A session did not get the execution provider that was asked for."""


# Runs of fewer images than this may go to a one-thread session while the cores are busy.
SMALL_RUN_ROWS = 8
# Idle cores (of this process's) needed before a small run is split over the intra-op threads.
PARALLEL_SPARE_CORES = 0.5
# Only a model whose single-image run takes this long gets the one-thread session: a shorter run
# rarely loses its second thread to the scheduler midway, a longer one often does (BENCHMARKS.md).
SMALL_SESSION_MIN_RUN_US = 1000.0
# Runs a freshly opened session gets before any timing of it counts (allocation, first-run setup).
WARM_RUNS = 2


def _threads(settings: SessionSettings) -> int:
    """Intra-op threads a CPU session gets: as set, or (0) about one per core it may use."""
    return settings.cpu_threads or affinity_cores()


class ModelSession:
    """One ONNX Runtime session for one model version; `run` is blocking and thread-confined.

    On CPU with several intra-op threads, a second, one-thread session of the same model may
    take two kinds of small runs. With `spare` given, for a model whose single-image run takes at
    least `small_session_min_us`: the worker's runs (`run_batch`) of fewer than `SMALL_RUN_ROWS`
    images while fewer than `PARALLEL_SPARE_CORES` of this process's cores are idle (core_load.py
    says why); `has_small_session` says whether it does. For a model whose single image runs
    within `inline_max_us` (0: no inline runs): inline runs (`run_inline`) of fewer than
    `SMALL_RUN_ROWS` images, when the probe of gap_probe.py finds one thread faster after an idle
    gap; `inline_probe` holds what it measured. The second session costs a copy of the weights,
    so it is dropped again when neither kind of run takes it."""

    def __init__(
        self,
        path: Path,
        settings: SessionSettings,
        spare: SpareCores | None = None,
        small_session_min_us: float = SMALL_SESSION_MIN_RUN_US,
        inline_max_us: float = 0.0,
    ) -> None:
        # On CPU, filters are padded to ONNX Runtime's channel blocks (nchwc_padding: exact).
        source: str | bytes = str(path)
        self.padded_convs: list[PaddedConv] = []
        if settings.provider == CPU:
            source, self.padded_convs = cpu_session_model(path, settings.graph_optimization)
        try:
            self._session = ort.InferenceSession(
                source, session_options(settings), providers(settings.provider, settings.cuda)
            )
        except Exception as error:
            raise CnnserveError(f"ONNX Runtime cannot load {path}: {error}") from None
        self._spare = spare
        self._small: ort.InferenceSession | None = None
        self._small_batches = False  # the worker's small runs may take `_small`
        self.inline_probe: GapProbe | None = None
        self.small_runs = 0  # runs the one-thread session took (written by the running thread)
        used = self._session.get_providers()[0]
        if used != settings.provider:
            raise ProviderMismatch(f"{path} runs on {used}, not the requested {settings.provider}")
        self.provider = used
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise CnnserveError(f"{path} has {len(inputs)} inputs; an image classifier has 1")
        self.input_name = inputs[0].name
        self.input_dtype = _ORT_TO_NUMPY.get(inputs[0].type, inputs[0].type)
        self.input_shape = tuple(d if isinstance(d, int) else -1 for d in inputs[0].shape)
        self.output_names = tuple(output.name for output in self._session.get_outputs())
        self.io_binding = used == CUDA if settings.io_binding is None else settings.io_binding
        if settings.provider == CPU and not self.io_binding and _threads(settings) > 1:
            single_us = self.single_image_run_us()
            small_batches = spare is not None and single_us >= small_session_min_us
            may_inline = 0 < single_us <= inline_max_us
            if small_batches or may_inline:
                self._open_one_thread(path, source, settings, small_batches, may_inline)

    def _open_one_thread(
        self,
        path: Path,
        source: str | bytes,
        settings: SessionSettings,
        small_batches: bool,
        may_inline: bool,
    ) -> None:
        """The one-thread session, kept if the worker's small runs or (by the probe) inline runs
        will take it."""
        one_thread = replace(settings, cpu_threads=1)
        try:
            small = ort.InferenceSession(source, session_options(one_thread), providers(CPU))
        except Exception as error:
            raise CnnserveError(f"ONNX Runtime cannot load {path} on one thread: {error}") from None
        if may_inline:
            feed = self._zero_image_feed()
            for _ in range(WARM_RUNS):  # as single_image_run_us warmed the main session
                small.run(None, feed)
            self.inline_probe = probe_after_gap(
                lambda: self._session.run(None, feed), lambda: small.run(None, feed), _threads(settings)
            )
        self._small_batches = small_batches
        if small_batches or self.inline_on_one_thread:
            self._small = small

    def single_image_run_us(self) -> float:
        """The fastest of a few single-image runs, after two to warm up (0: image size unknown)."""
        if any(d < 0 for d in self.input_shape[1:]):
            return 0.0
        feed = self._zero_image_feed()
        times = []
        for attempt in range(WARM_RUNS + 3):
            started = time.perf_counter()
            self._session.run(None, feed)
            if attempt >= WARM_RUNS:
                times.append(time.perf_counter() - started)
        return 1e6 * min(times)

    def _zero_image_feed(self) -> dict[str, np.ndarray]:
        """One all-zero image of the model's input shape (known: no dimension but the batch's is -1)."""
        return {self.input_name: np.zeros((1, *self.input_shape[1:]), dtype=self.input_dtype)}

    @property
    def has_small_session(self) -> bool:
        """Whether the worker's small runs take a one-thread session while the cores are busy."""
        return self._small_batches

    @property
    def inline_on_one_thread(self) -> bool:
        """Whether inline runs of a few images take the one-thread session (the probe's verdict)."""
        return self.inline_probe is not None and self.inline_probe.one_thread_wins

    def run_batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """A batcher worker's run: on the one-thread session when it is small and the cores are
        busy, else as `run`."""
        if self._small_batches and images.shape[0] < SMALL_RUN_ROWS:
            spare = self._spare.spare() if self._spare is not None else None
            if spare is not None and spare < PARALLEL_SPARE_CORES:
                self.small_runs += 1
                return self._run_small(images)
        return self.run(images)

    def run_inline(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """An inline run, on the event loop's thread (after an idle gap, or a batch under load):
        on the one-thread session when it is small and the probe found one thread faster after a
        gap, else as `run`."""
        if self.inline_on_one_thread and images.shape[0] < SMALL_RUN_ROWS:
            return self._run_small(images)
        return self.run(images)

    def _run_small(self, images: np.ndarray) -> dict[str, np.ndarray]:
        assert self._small is not None
        values = self._small.run(None, {self.input_name: images})
        return dict(zip(self.output_names, values, strict=True))

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if self.io_binding:
            binding = self._session.io_binding()
            binding.bind_cpu_input(self.input_name, np.ascontiguousarray(images))
            for name in self.output_names:
                binding.bind_output(name, "cpu")
            self._session.run_with_iobinding(binding)
            return dict(zip(self.output_names, binding.copy_outputs_to_cpu(), strict=True))
        values = self._session.run(None, {self.input_name: images})
        return dict(zip(self.output_names, values, strict=True))

    def warm(self, batch_sizes: Sequence[int], image_shape: Sequence[int]) -> None:
        """Run once per batch size so first requests do not pay for allocation or autotuning."""
        for size in batch_sizes:
            images = np.zeros((size, *image_shape), dtype=self.input_dtype)
            self._session.run(None, {self.input_name: images})
            if self._small is not None and size < SMALL_RUN_ROWS:
                self._small.run(None, {self.input_name: images})
