"""TensorFlow: the folded inference SavedModel and the unfolded training model, side by side.

Thread counts are passed through TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS, which
TensorFlow reads when its runtime starts; `configure_threads` must run before the first import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

import numpy as np

from cnnserve.bench.backends import BackendUnavailable
from cnnserve.bench.options import RuntimeOptions
from cnnserve.contracts.names import SERVING_SIGNATURE

_LOGGER = logging.getLogger(__name__)
# Whether TensorFlow's runtime was started after our thread settings: recorded with results.
_threads_applied = {"value": False}


def configure_threads(options: RuntimeOptions) -> None:
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(options.threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(options.inter_op_threads)
    _threads_applied["value"] = "tensorflow" not in sys.modules
    if not _threads_applied["value"]:
        _LOGGER.warning("TensorFlow was already loaded; its thread settings may not be %s", options.threads)


def _device(options: RuntimeOptions) -> str:
    import tensorflow as tf

    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if options.device == "cuda" and not has_gpu:
        raise BackendUnavailable("--device cuda: TensorFlow sees no GPU (tensorflow-cpu is installed)")
    return "cuda" if has_gpu and options.device != "cpu" else "cpu"


class _TensorflowBackend:
    variant = ""

    def __init__(self, options: RuntimeOptions) -> None:
        from cnnserve.training.quiet_tf import import_tensorflow_quietly

        import_tensorflow_quietly()
        self.options = options
        self.device = _device(options)
        self.engine = "tensorflow-" + self.device

    def _placement(self):
        import tensorflow as tf

        return tf.device("/CPU:0") if self.device == "cpu" else contextlib.nullcontext()

    def prepare(self, batch_size: int) -> None:
        return None

    def settings(self) -> dict[str, object]:
        return {
            "intra_op_threads": int(os.environ.get("TF_NUM_INTRAOP_THREADS", "0")),
            "inter_op_threads": int(os.environ.get("TF_NUM_INTEROP_THREADS", "0")),
            "threads_applied_before_start": _threads_applied["value"],
        }


class SavedModelBackend(_TensorflowBackend):
    """`model.savedmodel/`'s serving signature: exactly what the exporter verified and wrote."""

    variant = "tensorflow_folded"

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        super().__init__(options)
        import tensorflow as tf

        with self._placement():
            # Kept: a signature holds only weak references to the loaded object's variables.
            self.loaded = tf.saved_model.load(str(path))
        if SERVING_SIGNATURE not in self.loaded.signatures:
            raise BackendUnavailable(f"{path} has no {SERVING_SIGNATURE} signature; re-export it")
        self.signature = self.loaded.signatures[SERVING_SIGNATURE]

    def run(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        with self._placement():
            return self.signature(images=tf.constant(images))["logits"].numpy()


class KerasBackend(_TensorflowBackend):
    """The run's `model.keras` with its BatchNorm layers, in a traced tf.function."""

    variant = "tensorflow_unfolded"

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        super().__init__(options)
        import keras
        import tensorflow as tf

        import cnnserve.training.layers  # noqa: F401  registers the zoo's custom layers

        with self._placement():
            self.model = keras.saving.load_model(str(path), compile=False)
        spec = tf.TensorSpec([None, *self.model.inputs[0].shape[1:]], tf.uint8, name="images")
        self.function = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])

    def run(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        with self._placement():
            return self.function(tf.constant(images)).numpy()
