"""The small real-data run the resume and multi-worker tests train, as CLI arguments."""

from __future__ import annotations

import pytest

from cnnserve.training.data import FASHION_MNIST_SYSTEM_DIR

# mnist_cnn on 4,000 real Fashion-MNIST images: 63 steps an epoch, 3 epochs, 189 steps.
SMALL_RUN = ["--model", "mnist_cnn", "--train-size", "4000", "--val-size", "1000", "--epochs", "3",
             "--lr", "1e-3", "--no-progress"]  # fmt: skip
STEPS_PER_EPOCH = 63
TOTAL_STEPS = 189

needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="make setup installs dataset-fashion-mnist",
)
