"""FusedBatchNormalization: Keras's BatchNormalization trained through TensorFlow's fused kernel.
Everything Keras's layer computes must come out the same: outputs, moving statistics (Keras's
biased variance, not the kernel's unbiased one) and gradients, in training and in inference."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cnnserve.training.layers import FusedBatchNormalization
from cnnserve.training.models import build_model
from cnnserve.training.precise_bn import batchnorm_layers


def _pair(shape: tuple[int, ...], momentum: float = 0.9):
    rng = np.random.default_rng(0)
    keras_bn = keras.layers.BatchNormalization(momentum=momentum, epsilon=1e-3)
    fused = FusedBatchNormalization(momentum=momentum, epsilon=1e-3)
    gamma = rng.normal(1.0, 0.2, shape[-1]).astype(np.float32)
    beta = rng.normal(0.0, 0.2, shape[-1]).astype(np.float32)
    for layer in (keras_bn, fused):
        layer.build(shape)
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    return keras_bn, fused


def _step(layer, x: tf.Tensor):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * tf.sin(y))
    return y.numpy(), [g.numpy() for g in tape.gradient(loss, [x, layer.gamma, layer.beta])]


# (2, 1, 1, 3): 2 values per channel, where biased and unbiased variance differ by 2x.
@pytest.mark.parametrize("shape", [(2, 1, 1, 3), (8, 5, 5, 6), (32, 14, 14, 16)])
def test_a_training_step_matches_keras(shape):
    x = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, shape).astype(np.float32))
    keras_bn, fused = _pair(shape)
    (y_keras, grads_keras), (y_fused, grads_fused) = _step(keras_bn, x), _step(fused, x)
    np.testing.assert_allclose(y_fused, y_keras, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads_fused, grads_keras, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(
            getattr(fused, name).numpy(), getattr(keras_bn, name).numpy(), rtol=1e-5, atol=1e-6
        )
    assert not np.allclose(fused.moving_variance.numpy(), 1.0)  # the step did update them
    np.testing.assert_allclose(fused(x).numpy(), keras_bn(x).numpy(), rtol=1e-5, atol=1e-5)


def test_dense_inputs_and_frozen_layers_take_keras_path():
    for shape, trainable in (((16, 6), True), ((4, 3, 3, 2), False)):
        keras_bn, fused = _pair(shape)
        fused.trainable = keras_bn.trainable = trainable
        x = tf.constant(np.random.default_rng(2).normal(0, 2, shape).astype(np.float32))
        np.testing.assert_allclose(
            fused(x, training=True).numpy(), keras_bn(x, training=True).numpy(), rtol=1e-6
        )
        np.testing.assert_array_equal(fused.moving_mean.numpy(), keras_bn.moving_mean.numpy())


def test_the_zoo_uses_it_and_it_is_still_a_batchnorm(tmp_path):
    model = build_model("inception_bn")
    norms = batchnorm_layers(model)  # what precise BN, folding and counting find
    assert norms and all(type(layer) is FusedBatchNormalization for layer in norms)
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    assert [type(layer) for layer in batchnorm_layers(reloaded)] == [FusedBatchNormalization] * len(norms)
