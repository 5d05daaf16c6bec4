"""Keras layers the source models need and Keras lacks: in-graph preprocessing and LRN.

Every model takes uint8 images, so all preprocessing lives here, inside the graph, and a client
never needs to know the scaling, the mean image or the crop. All layers are serializable, so
`model.keras` reloads without custom code beyond importing this module.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

PACKAGE = "cnnserve"


@keras.saving.register_keras_serializable(package=PACKAGE)
class MeanImageSubtraction(keras.layers.Layer):
    """x − mean training image (CS231n). The mean is a baked-in constant, not a parameter."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mean_image = None

    def build(self, input_shape) -> None:
        self.mean_image = self.add_weight(
            name="mean_image", shape=tuple(input_shape[1:]), initializer="zeros", trainable=False
        )

    def set_mean(self, images: np.ndarray) -> None:
        """Sets the constant from training images (uint8 NHWC), in float64 then float32."""
        self.mean_image.assign(images.astype(np.float64).mean(axis=0).astype(np.float32))

    def call(self, inputs):
        return tf.cast(inputs, self.compute_dtype) - self.mean_image


@keras.saving.register_keras_serializable(package=PACKAGE)
class PerImageStandardization(keras.layers.Layer):
    """tf.image.per_image_standardization: zero mean, unit variance per image."""

    def call(self, inputs):
        return tf.image.per_image_standardization(tf.cast(inputs, self.compute_dtype))


@keras.saving.register_keras_serializable(package=PACKAGE)
class LocalResponseNormalization(keras.layers.Layer):
    """tf.nn.local_response_normalization across channels (AlexNet / cuda-convnet).

    `decomposed=True` computes the same function from ops XNNPACK runs: x² → a 1x1 convolution
    with a banded weight → x / d^β, for converters whose own LRN kernel is slow (TFLite's is a
    serial reference kernel XNNPACK cannot take). It is a tracing choice, not part of the
    model: it is not saved, and `with_decomposed_lrn` builds the decomposed copy of a model.
    """

    def __init__(
        self,
        depth_radius: int = 4,
        bias: float = 1.0,
        alpha: float = 0.001 / 9.0,
        beta: float = 0.75,
        decomposed: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.depth_radius = depth_radius
        self.bias = bias
        self.alpha = alpha
        self.beta = beta
        self.decomposed = decomposed

    def call(self, inputs):
        if self.decomposed:
            return self._decomposed(inputs)
        return tf.nn.local_response_normalization(
            inputs, depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha, beta=self.beta
        )

    def _decomposed(self, inputs):
        """sqr_sum[c] = Σ x[c−r..c+r]² (TensorFlow's α is not divided by the window size)."""
        channels, radius = int(inputs.shape[-1]), self.depth_radius
        band = np.zeros((1, 1, channels, channels), np.float32)
        for out in range(channels):
            band[0, 0, max(0, out - radius) : out + radius + 1, out] = self.alpha
        denominator = self.bias + tf.nn.conv2d(inputs * inputs, band, strides=1, padding="VALID")
        if self.beta == 0.75:  # d^0.75 = √d·√√d: two square roots, cheaper than a power
            root = tf.sqrt(denominator)
            return inputs / (root * tf.sqrt(root))
        return inputs * tf.pow(denominator, -self.beta)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "depth_radius": self.depth_radius,
            "bias": self.bias,
            "alpha": self.alpha,
            "beta": self.beta,
        }


def with_decomposed_lrn(model: keras.Model) -> keras.Model:
    """A copy of `model` (same layer names and weights) whose LRN layers are decomposed; `model`
    itself is left as it is."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, LocalResponseNormalization):
            return LocalResponseNormalization(**layer.get_config(), decomposed=True)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


@keras.saving.register_keras_serializable(package=PACKAGE)
class CifarAugmentation(keras.layers.Layer):
    """The TensorFlow CIFAR-10 tutorial's distortions, in training only; a central crop otherwise.

    Training: a random `crop`×`crop` window, a random left-right flip, brightness + U(−δ, δ)
    with δ = `max_brightness`, and contrast × U(lower, upper) around each image's channel
    means, all per image and in float32 on the 0–255 scale (no clipping, as in the tutorial).
    Inference: the central window only, so serving is deterministic.
    """

    def __init__(
        self,
        crop: int = 24,
        max_brightness: float = 63.0,
        contrast_range: tuple[float, float] = (0.2, 1.8),
        seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.crop = crop
        self.max_brightness = max_brightness
        self.contrast_range = tuple(contrast_range)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.crop, self.crop, input_shape[3])

    def call(self, inputs, training=None):
        images = tf.cast(inputs, self.compute_dtype)
        if not training:
            return self._central_crop(images)
        return self._distort(images)

    def _central_crop(self, images):
        top = (images.shape[1] - self.crop) // 2
        left = (images.shape[2] - self.crop) // 2
        return images[:, top : top + self.crop, left : left + self.crop, :]

    def _distort(self, images):
        batch = tf.shape(images)[0]
        height, width = images.shape[1], images.shape[2]

        def uniform(minval, maxval, shape=None, dtype="float32"):
            return keras.random.uniform(
                shape if shape is not None else (batch,), minval, maxval, dtype, self.seed_generator
            )

        tops = tf.cast(uniform(0, height - self.crop + 1, dtype="float32"), tf.int32)
        lefts = tf.cast(uniform(0, width - self.crop + 1, dtype="float32"), tf.int32)
        steps = tf.range(self.crop)
        rows = tops[:, None] + steps[None, :]  # (B, crop)
        cols = lefts[:, None] + steps[None, :]
        images = tf.gather(images, rows, axis=1, batch_dims=1)  # (B, crop, W, C)
        images = tf.gather(images, cols, axis=2, batch_dims=1)  # (B, crop, crop, C)

        flip = uniform(0.0, 1.0) < 0.5
        images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)

        images = images + uniform(-self.max_brightness, self.max_brightness)[:, None, None, None]
        lower, upper = self.contrast_range
        factor = uniform(lower, upper)[:, None, None, None]
        means = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
        return (images - means) * factor + means

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "crop": self.crop,
            "max_brightness": self.max_brightness,
            "contrast_range": list(self.contrast_range),
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras's BatchNormalization whose training steps on NHWC feature maps run TensorFlow's
    fused kernel (FusedBatchNormV3, oneDNN's on CPU) and its fused gradient.

    Keras 3 computes a training step's moments and the normalisation as separate ops; the fused
    kernel does both in one pass over the maps: 1.13× the examples/s on cs231n_complex, 1.03× on
    alexnet_bn and no change on inception_bn (`cnnserve bench train --batchnorm both`,
    BENCHMARKS.md). The statistics are Keras's: the moving variance is updated with the batch's
    biased variance (the kernel returns the unbiased one, which is rescaled), with the same
    momentum formula. Inference, masks, renorm, synchronised (multi-worker) BN, other dtypes and
    inputs that are not 4-D channels-last take Keras's own path, and the layer is a
    `BatchNormalization` to everything that folds, recalibrates or counts it.
    """

    def _fusable(self, inputs, training, mask) -> bool:
        return bool(
            training
            and self.trainable
            and mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and inputs.dtype == tf.float32
            and self.compute_dtype == "float32"
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones([channels], tf.float32)
        beta = self.beta if self.center else tf.zeros([channels], tf.float32)
        outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
        )
        count = tf.cast(tf.size(inputs) // channels, tf.float32)
        variance = unbiased_variance * (count - 1.0) / tf.maximum(count, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return outputs
