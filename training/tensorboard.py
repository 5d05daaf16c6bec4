"""RUN/tensorboard/: Keras's own TensorBoard callback, plus the end-of-run pictures.

Scalars: `batch_*` every step and `epoch_*` every epoch in `train/`, the validation figures of
the serving copy (see `validation.py`) in `validation/`. The confusion matrix and the error grid
of the test set go to `test/` as images, the same PNGs the run directory holds.
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

TENSORBOARD_DIR = "tensorboard"


class RunTensorBoard(keras.callbacks.TensorBoard):
    """Per-step and per-epoch scalars, numbered by the optimizer's global step.

    Keras numbers batch summaries from 0 at each `fit`; a run resumed from a checkpoint, or fed
    in several `fit` calls, continues from the optimizer's iteration count instead.
    """

    def __init__(self, run_dir: Path) -> None:
        super().__init__(log_dir=str(run_dir / TENSORBOARD_DIR), update_freq=1, write_graph=False)

    def on_train_begin(self, logs=None) -> None:
        super().on_train_begin(logs)
        self._global_train_batch = int(self.model.optimizer.iterations.numpy())


def write_images(run_dir: Path, step: int, pictures: dict[str, Path]) -> None:
    """Writes PNG files as image summaries (name → file) at `step` in RUN/tensorboard/test."""
    writer = tf.summary.create_file_writer(str(run_dir / TENSORBOARD_DIR / "test"))
    with writer.as_default():
        for name, path in pictures.items():
            image = tf.io.decode_png(tf.io.read_file(str(path)), channels=4)
            tf.summary.image(name, image[tf.newaxis], step=step)
    writer.close()
