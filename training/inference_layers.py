"""Layers that exist only in folded, inference-only models: what a BatchNorm or an augmentation
layer becomes when the fold cannot remove it outright.

Registered with Keras under the `cnnserve` package, so a folded model saved as `.keras`
reloads after importing this module.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="cnnserve")
class ChannelAffine(keras.layers.Layer):
    """`x·scale + offset` per channel: what is left of a BatchNorm that could not be folded."""

    def __init__(self, channels: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.channels = channels
        self.scale = self.add_weight(name="scale", shape=(channels,), initializer="ones", trainable=False)
        self.offset = self.add_weight(name="offset", shape=(channels,), initializer="zeros", trainable=False)

    def call(self, inputs):
        return inputs * self.scale + self.offset

    def get_config(self) -> dict:
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package="cnnserve")
class CentralCrop(keras.layers.Layer):
    """`CifarAugmentation` at inference: the central window, cast to float; no random ops."""

    def __init__(self, crop: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.crop = crop

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.crop, self.crop, input_shape[3])

    def call(self, inputs):
        top = (inputs.shape[1] - self.crop) // 2
        left = (inputs.shape[2] - self.crop) // 2
        window = inputs[:, top : top + self.crop, left : left + self.crop, :]
        return tf.cast(window, self.compute_dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "crop": self.crop}
