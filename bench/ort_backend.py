"""ONNX Runtime: the backend the server uses, with its session options exposed as flags."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cnnserve.bench.backends import BackendUnavailable
from cnnserve.bench.options import RuntimeOptions
from cnnserve.contracts.names import CPU_PROVIDER as CPU
from cnnserve.contracts.names import CUDA_PROVIDER as CUDA
from cnnserve.serving.nchwc_padding import PaddedConv, cpu_session_model
from cnnserve.serving.session import SessionSettings, providers, session_options

_LOGGER = logging.getLogger(__name__)
# ONNX Runtime logs an ERROR when the CUDA provider fails to load; with --device auto that is
# expected on CPU machines, and the fallback is reported by us from session.get_providers().
_FATAL_ONLY = 4
_WARNING = 2


def session_settings(options: RuntimeOptions, provider: str) -> SessionSettings:
    """`options` as the server's session settings, so bench opens sessions as the server does."""
    return SessionSettings(
        provider,
        cpu_threads=options.threads,
        graph_optimization=options.graph_optimization,
        allow_spinning=options.allow_spinning,
        cuda=options.cuda,
        io_binding=options.io_binding,
        inter_op_threads=options.inter_op_threads,
        execution_mode=options.execution_mode,
        quiet=False,  # the default logger decides: silenced while CUDA is tried (--device auto)
    )


class OrtBackend:
    variant = "onnxruntime"

    def __init__(self, path: Path, options: RuntimeOptions, variant: str = "onnxruntime") -> None:
        import onnxruntime as ort

        self.variant = variant  # "onnxruntime_int8" for the QDQ export: the same runtime
        self.options = options
        wants_cuda = options.device in ("auto", "cuda") and CUDA in ort.get_available_providers()
        asked = CUDA if wants_cuda else CPU
        settings = session_settings(options, asked)
        # The server pads filters to ONNX Runtime's channel blocks on CPU; measure what it runs.
        source: str | bytes = str(path)
        self.padded_convs: list[PaddedConv] = []
        if not wants_cuda:
            source, self.padded_convs = cpu_session_model(path, options.graph_optimization)
        if options.device == "auto":
            ort.set_default_logger_severity(_FATAL_ONLY)
        try:
            self.session = ort.InferenceSession(
                source, session_options(settings), providers=providers(asked, options.cuda)
            )
        finally:
            ort.set_default_logger_severity(_WARNING)
        # get_available_providers() lists CUDA whenever the GPU build is installed; only the
        # session knows whether it could really load it.
        self.engine = self.session.get_providers()[0]
        if wants_cuda and self.engine == CPU:  # CUDA did not stick: reopen as the CPU server would
            source, self.padded_convs = cpu_session_model(path, options.graph_optimization)
            if self.padded_convs:
                self.session = ort.InferenceSession(
                    source, session_options(settings), providers=providers(CPU)
                )
        self.device = "cuda" if self.engine == CUDA else "cpu"
        if options.device == "cuda" and self.device != "cuda":
            raise BackendUnavailable(
                f"--device cuda: ONNX Runtime ran on {self.engine} (no usable CUDA); use --device cpu or auto"
            )
        if wants_cuda and self.device != "cuda":
            _LOGGER.info("ONNX Runtime could not use CUDA here; measuring %s", self.engine)
        self.input_name = self.session.get_inputs()[0].name

    def prepare(self, batch_size: int) -> None:
        return None  # ONNX Runtime sizes its buffers per call

    def run(self, images: np.ndarray) -> np.ndarray:
        if self.options.io_binding:
            # As the server runs CUDA sessions: the batch bound from host memory, copied to the
            # device by ONNX Runtime, the logits bound back to host memory; one call.
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, np.ascontiguousarray(images))
            binding.bind_output("logits", "cpu")
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self.session.run(["logits"], {self.input_name: images})[0]

    def settings(self) -> dict[str, object]:
        return {
            "intra_op_threads": self.options.threads,
            "inter_op_threads": self.options.inter_op_threads,
            "graph_optimization": self.options.graph_optimization,
            "execution_mode": self.options.execution_mode,
            "allow_spinning": self.options.allow_spinning,
            "providers": self.session.get_providers(),
            "io_binding": self.options.io_binding,
            **({"cuda": self.options.cuda.provider_options()} if self.device == "cuda" else {}),
            "nchwc_padded": [f"{c.name}: {c.filters}→{c.padded_to}" for c in self.padded_convs],
        }
