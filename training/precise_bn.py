"""Precise BatchNorm statistics: replace the moving averages with exact population averages.

Keras updates BN's moving mean/variance as an exponential average with momentum 0.99 (0.9997 in
cs231n_complex) starting from mean 0, variance 1. After a short run those averages still carry
much of their initial value and inference collapses even though training accuracy looks fine —
the failure the source documents warn about. Recomputing the statistics over a few thousand
training images after training (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021) fixes
short runs and changes nothing measurable for long ones.
"""

from __future__ import annotations

import keras
import numpy as np


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def recalibrate_batchnorm(
    model: keras.Model, images: np.ndarray, batches: int, batch_size: int = 256, seed: int = 0
) -> int:
    """Sets every BN layer's moving statistics to the mean of `batches` batch statistics.

    Runs the model eagerly in training mode (so each BN sees the batch-normalised inputs it saw
    in training) with momentum k/(k+1) at step k, which makes the moving value a plain running
    mean. Returns the number of images used; 0 when the model has no BatchNorm.
    """
    layers = batchnorm_layers(model)
    if not layers or batches <= 0:
        return 0
    order = np.random.default_rng(seed).permutation(len(images))
    batch_size = min(batch_size, len(images))
    batches = min(batches, len(images) // batch_size)
    saved_momenta = [layer.momentum for layer in layers]
    try:
        for step in range(batches):
            for layer in layers:
                layer.momentum = step / (step + 1)
            model(images[order[step * batch_size : (step + 1) * batch_size]], training=True)
    finally:
        for layer, momentum in zip(layers, saved_momenta, strict=True):
            layer.momentum = momentum
    return batches * batch_size
