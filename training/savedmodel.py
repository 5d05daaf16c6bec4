"""The folded model as the SavedModel every later stage reads: the serving signature contract.

`serving_default` takes uint8 `images` [-1, H, W, C] and returns float32 `logits` and
`probabilities` (the names in `cnnserve.contracts.names`); export converts from it and bench
times it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import tensorflow as tf

from cnnserve.contracts.names import INPUT_NAME, LOGITS, PROBABILITIES, SERVING_SIGNATURE


def save_inference_savedmodel(model: keras.Model, path: Path) -> None:
    """serving_default: uint8 `images` [-1, H, W, C] → float32 `logits`, `probabilities`."""
    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.uint8, name=INPUT_NAME)

    def serve(images):
        logits = model(images, training=False)
        return {LOGITS: logits, PROBABILITIES: tf.nn.softmax(logits, axis=-1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SERVING_SIGNATURE, fn=serve, input_signature=[spec])
    archive.write_out(str(path), verbose=False)


def replace_dir(staging: Path, final: Path) -> None:
    """Moves `staging` to `final`, replacing a previous `final` only once the new one exists."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
