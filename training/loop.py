"""The fit calls that take a run from its current step to the end of its schedule.

One `fit` runs whole epochs of one length. A run resumed in the middle of an epoch therefore
finishes that epoch in a first, shorter `fit` (same epoch number, the remaining steps), then
runs the remaining epochs in a second one. Each call starts its own stream at its first global
step, which is what makes the data order of a resumed run the uninterrupted run's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import tensorflow as tf


@dataclass(frozen=True)
class Segment:
    """One `fit` call: epochs [initial_epoch, epochs) of `steps_per_epoch` from `start_step`."""

    initial_epoch: int
    epochs: int
    steps_per_epoch: int
    start_step: int


def plan_segments(steps_per_epoch: int, epochs: int, total_steps: int, start_step: int) -> list[Segment]:
    if start_step >= total_steps:
        return []
    epoch, offset = divmod(start_step, steps_per_epoch)
    segments = []
    if offset:
        steps = min(steps_per_epoch - offset, total_steps - start_step)
        segments.append(Segment(epoch, epoch + 1, steps, start_step))
        start_step += steps
        epoch += 1
    if start_step < total_steps:
        segments.append(Segment(epoch, epochs, steps_per_epoch, start_step))
    return segments


class StepLimit(keras.callbacks.Callback):
    """Stops after exactly `total_steps` optimizer steps (`--steps`), even mid-epoch."""

    def __init__(self, total_steps: int, steps_done: int = 0) -> None:
        super().__init__()
        self.total_steps = total_steps
        self.steps = steps_done

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.steps += 1
        if self.steps >= self.total_steps:
            self.model.stop_training = True


def run_segments(
    model: keras.Model,
    segments: Sequence[Segment],
    stream: Callable[[int], tf.data.Dataset],
    callbacks: Sequence[keras.callbacks.Callback],
) -> None:
    """Fits each segment on `stream(start_step)`; stops early when a callback stops training."""
    for segment in segments:
        model.fit(
            stream(segment.start_step),
            initial_epoch=segment.initial_epoch,
            epochs=segment.epochs,
            steps_per_epoch=segment.steps_per_epoch,
            callbacks=list(callbacks),
            shuffle=False,  # the stream is already in its seeded order
            verbose=0,
        )
        if model.stop_training:
            return
