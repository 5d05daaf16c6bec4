"""uint8 NHWC arrays → tf.data pipelines. Images stay uint8 until the model's own first layer."""

from __future__ import annotations

import math

import tensorflow as tf

from cnnserve.training.data import Split

# Epoch numbers the endless training stream can reach; far more than any run takes.
MAX_EPOCHS = 1 << 30


def training_pipeline(
    split: Split, batch_size: int, seed: int, start_step: int = 0
) -> tuple[tf.data.Dataset, int]:
    """An endless stream of full batches from `start_step` on, and the steps in one epoch.

    Epoch e visits the images in a full permutation drawn from (seed, e) alone, and batches run
    across epoch boundaries, so the stream is a pure function of the seed: a run resumed at step
    s sees exactly the batches the uninterrupted run saw from step s on. Every step sees exactly
    `batch_size` images, so examples/s is exact and BatchNorm never sees a tiny remainder batch.
    """
    count = len(split)
    first_epoch, offset = divmod(start_step * batch_size, count)
    images = tf.constant(split.images)
    labels = tf.constant(split.labels)

    def permutation(epoch: tf.Tensor) -> tf.Tensor:
        key = tf.stack([tf.constant(seed, tf.int64), epoch])
        return tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), seed=key)

    def gather(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.gather(images, index), tf.gather(labels, index)

    dataset = (
        tf.data.Dataset.range(first_epoch, MAX_EPOCHS)
        .map(permutation)
        .unbatch()
        .skip(offset)
        .batch(batch_size, drop_remainder=True)
        # One gather per batch instead of one element per image through tf.data.
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    return dataset, math.ceil(count / batch_size)


def evaluation_pipeline(split: Split, batch_size: int) -> tf.data.Dataset:
    return (
        tf.data.Dataset.from_tensor_slices((split.images, split.labels))
        .batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
