"""The in-process backends: names, how a `--backends` list expands, and one factory.

A backend *family* on the command line expands to the *variants* it covers, so a user who asks
for `tensorflow` sees folding's effect (folded SavedModel beside the unfolded training model)
and one who asks for `tflite` gets int8 too when the repository has it. int8 ONNX is asked for
by name (`--backends onnxruntime,onnxruntime_int8`): it needs its own export, which plain
`onnxruntime` users should not be told is missing.
Every backend reports the device that really ran, never the one that was requested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from cnnserve.bench.options import RuntimeOptions
from cnnserve.contracts.errors import CnnserveError

FAMILIES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime",),
    "onnxruntime_int8": ("onnxruntime_int8",),
    "tensorflow": ("tensorflow_folded", "tensorflow_unfolded"),
    "tflite": ("tflite_float32", "tflite_int8"),
}
VARIANTS = tuple(variant for variants in FAMILIES.values() for variant in variants)
DEFAULT_BACKENDS = "onnxruntime,tensorflow,tflite"


class BackendUnavailable(CnnserveError):
    """This backend cannot run here as asked (for example CUDA requested, none present)."""


class Backend(Protocol):
    variant: str
    device: str  # "cpu" or "cuda": what really ran
    engine: str  # e.g. "CPUExecutionProvider", "XNNPACK"

    def prepare(self, batch_size: int) -> None:
        """Sizes buffers for `batch_size` outside the timed region."""

    def run(self, images: np.ndarray) -> np.ndarray:
        """Logits for uint8 NHWC `images`, as a numpy array (the copy back is part of the cost)."""

    def settings(self) -> dict[str, object]:
        """Thread and optimization settings actually applied, for the record."""


def expand_backends(text: str) -> tuple[str, ...]:
    """`onnxruntime,tensorflow` → the variants, in order, without duplicates."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise CnnserveError("--backends is empty; choose from " + ", ".join((*FAMILIES, *VARIANTS)))
    variants: list[str] = []
    for name in names:
        if name in FAMILIES:
            expanded = FAMILIES[name]
        elif name in VARIANTS:
            expanded = (name,)
        else:
            raise CnnserveError(
                f"unknown backend {name!r}; choose from {', '.join(FAMILIES)} "
                f"or the variants {', '.join(VARIANTS)}"
            )
        variants.extend(v for v in expanded if v not in variants)
    return tuple(variants)


def open_backend(variant: str, path: Path, options: RuntimeOptions) -> Backend:
    """Loads `path` (the variant's artefact) into its runtime; heavy imports happen here."""
    if variant in ("onnxruntime", "onnxruntime_int8"):
        from cnnserve.bench.ort_backend import OrtBackend

        return OrtBackend(path, options, variant)
    if variant == "tensorflow_folded":
        from cnnserve.bench.tf_backends import SavedModelBackend

        return SavedModelBackend(path, options)
    if variant == "tensorflow_unfolded":
        from cnnserve.bench.tf_backends import KerasBackend

        return KerasBackend(path, options)
    if variant in ("tflite_float32", "tflite_int8"):
        from cnnserve.bench.tflite_backend import TfliteBackend

        return TfliteBackend(variant, path, options)
    raise CnnserveError(f"unknown backend variant {variant!r}")
