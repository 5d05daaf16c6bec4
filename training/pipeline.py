"""uint8 NHWC arrays → tf.data pipelines. Images stay uint8 until the model's own first layer."""

from __future__ import annotations

import math

import tensorflow as tf

from cnnserve.training.data import Split

SHUFFLE_BUFFER = 10_000


def training_pipeline(split: Split, batch_size: int, seed: int) -> tuple[tf.data.Dataset, int]:
    """An endless shuffled stream of full batches, and the number of steps in one epoch.

    Repeating before batching means every step sees exactly `batch_size` images, so examples/s
    is exact and BatchNorm never sees a tiny remainder batch.
    """
    dataset = (
        tf.data.Dataset.from_tensor_slices((split.images, split.labels))
        .shuffle(min(len(split), SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    return dataset, math.ceil(len(split) / batch_size)


def evaluation_pipeline(split: Split, batch_size: int) -> tf.data.Dataset:
    return (
        tf.data.Dataset.from_tensor_slices((split.images, split.labels))
        .batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
