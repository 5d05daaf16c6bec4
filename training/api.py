"""Training's public API for the later stages: what export and bench may use of training.

Everything else in `cnnserve.training` is internal to training. Names resolve on first use, so
importing this module is instant and loads no TensorFlow: `cnnserve --help` and the export
CLI's argument checks stay fast, and TensorFlow is imported (quietly) only by a handler that
needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cnnserve.training.data import Split, synthetic_split
    from cnnserve.training.fold import FoldedModel, FoldError, fold_model
    from cnnserve.training.fold_check import (
        keras_predictor,
        run_batched,
    )
    from cnnserve.training.fold_run import FoldReport, fold_run, fold_saved_run
    from cnnserve.training.layers import LocalResponseNormalization, with_decomposed_lrn
    from cnnserve.training.models import zoo_flops_per_image
    from cnnserve.training.quiet_tf import import_tensorflow_quietly
    from cnnserve.training.run_data import SplitName, load_split
    from cnnserve.training.savedmodel import save_inference_savedmodel

# name → the module that defines it
_PUBLIC = {
    # the images of a run
    "Split": "cnnserve.training.data",
    "synthetic_split": "cnnserve.training.data",
    "SplitName": "cnnserve.training.run_data",
    "load_split": "cnnserve.training.run_data",
    # BatchNorm folding and its checks
    "FoldError": "cnnserve.training.fold",
    "FoldedModel": "cnnserve.training.fold",
    "fold_model": "cnnserve.training.fold",
    "FoldReport": "cnnserve.training.fold_run",
    "fold_run": "cnnserve.training.fold_run",
    "fold_saved_run": "cnnserve.training.fold_run",
    "keras_predictor": "cnnserve.training.fold_check",
    "run_batched": "cnnserve.training.fold_check",
    # the folded SavedModel every later stage reads
    "save_inference_savedmodel": "cnnserve.training.savedmodel",
    # tracing the folded model for converters with a slow LRN kernel
    "LocalResponseNormalization": "cnnserve.training.layers",
    "with_decomposed_lrn": "cnnserve.training.layers",
    # the zoo, as the model repository records it
    "zoo_flops_per_image": "cnnserve.training.models",
    "import_tensorflow_quietly": "cnnserve.training.quiet_tf",
}
__all__ = [
    "FoldError",
    "FoldReport",
    "FoldedModel",
    "LocalResponseNormalization",
    "Split",
    "SplitName",
    "fold_model",
    "fold_run",
    "fold_saved_run",
    "import_tensorflow_quietly",
    "keras_predictor",
    "load_split",
    "run_batched",
    "save_inference_savedmodel",
    "synthetic_split",
    "with_decomposed_lrn",
    "zoo_flops_per_image",
]


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
