"""Per-epoch validation of the model as it will be served, not of the one being trained.

Keras's own validation runs the training model in inference mode, i.e. with BatchNorm's moving
averages. With momentum 0.99 those still carry much of their initial (0, 1) after an epoch or
two, so a run that will end well prints chance-level validation accuracy until the end, where
precise BatchNorm replaces them. Here each epoch ends by copying the weights into a second
model, recomputing its BN statistics exactly as training's last step will (same images, same
order), and evaluating that copy: the figure printed is the figure the served model would get
if training stopped there. The trained model is never touched, so training is unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import keras
import numpy as np

from cnnserve.training.data import Split
from cnnserve.training.fold_check import keras_predictor, run_batched
from cnnserve.training.precise_bn import batchnorm_layers, recalibrate_batchnorm

EVAL_BATCH_SIZE = 256

LossFunction = Callable[[np.ndarray, np.ndarray], object]


def statistics_label(model: keras.Model, precise_bn_batches: int) -> str:
    """Which BatchNorm statistics the served model (and so every validation figure) uses."""
    if not batchnorm_layers(model):
        return "no BatchNorm"
    if precise_bn_batches <= 0:
        return "BN moving averages"
    return f"precise BN, {precise_bn_batches}x256 training images"


class ServingCopy:
    """A second instance of the architecture that receives the trained weights on demand."""

    def __init__(self, build: Callable[[], keras.Model], images: np.ndarray, batches: int, seed: int):
        self.model = build()
        self._images = images
        self._batches = batches
        self._seed = seed
        self._predict = keras_predictor(self.model)

    def refresh(self, trained: keras.Model) -> int:
        """Copies the weights, then recomputes BN statistics; returns the images used for them."""
        self.model.set_weights(trained.get_weights())
        return recalibrate_batchnorm(self.model, self._images, self._batches, seed=self._seed)

    def logits(self, images: np.ndarray) -> np.ndarray:
        return run_batched(self._predict, images, EVAL_BATCH_SIZE)


class ServedValidation(keras.callbacks.Callback):
    """Adds `val_loss` and `val_accuracy` of the serving copy to each epoch's logs.

    Place it before the callbacks that read epoch logs (progress, TensorBoard, checkpoints).
    """

    def __init__(self, copy: ServingCopy, val: Split, loss: LossFunction) -> None:
        super().__init__()
        self.copy = copy
        self.val = val
        self.loss = loss
        self.seconds: list[float] = []

    def on_epoch_end(self, epoch, logs=None) -> None:
        if logs is None:
            return
        started = time.perf_counter()
        self.copy.refresh(self.model)
        logits = self.copy.logits(self.val.images)
        logs["val_accuracy"] = float((logits.argmax(axis=1) == self.val.labels).mean())
        logs["val_loss"] = float(np.mean(keras.ops.convert_to_numpy(self.loss(self.val.labels, logits))))
        self.seconds.append(time.perf_counter() - started)
