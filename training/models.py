"""The model zoo: the seven CNNs of the source tutorials, layer for layer as SEEDS.md states them.

Each builder returns a Keras functional model that takes uint8 NHWC `images` and returns
`logits`; preprocessing is in the graph. Layers are named by role (`conv1`, `conv1_bn`, ...),
which keeps summaries readable and lets the folder pair each BatchNorm with its neighbours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
from keras import initializers, layers, regularizers

from cnnserve.contracts.errors import CnnserveError
from cnnserve.training.layers import (
    CifarAugmentation,
    FusedBatchNormalization,
    LocalResponseNormalization,
    MeanImageSubtraction,
    PerImageStandardization,
)

NUM_CLASSES = 10
INPUT_NAME = "images"
# tf.layers.batch_normalization / Keras default; SEEDS.md gives others where the source did.
BN_EPSILON = 1e-3


@dataclass(frozen=True)
class TrainDefaults:
    """What the source tutorial trained with; every field can be overridden on the CLI."""

    optimizer: str
    learning_rate: float
    batch_size: int
    epochs: int | None = None
    steps: int | None = None
    loss: str = "cross_entropy"
    # (every_n_steps, factor): staircase exponential decay, as tf.train.exponential_decay.
    lr_decay: tuple[int, float] | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple[int, int, int]
    dataset: str
    description: str
    defaults: TrainDefaults
    builder: Callable[[], keras.Model]

    def build(self) -> keras.Model:
        return self.builder()


def _input(shape: tuple[int, int, int]) -> keras.KerasTensor:
    return keras.Input(shape=shape, dtype="uint8", name=INPUT_NAME)


def _truncated(stddev: float) -> initializers.Initializer:
    return initializers.TruncatedNormal(stddev=stddev)


def _bn(name: str, momentum: float = 0.99) -> layers.BatchNormalization:
    # Keras's BatchNormalization, trained with TensorFlow's fused kernel (layers.py says why).
    return FusedBatchNormalization(momentum=momentum, epsilon=BN_EPSILON, name=name)


# --------------------------------------------------------------------------- 1. mnist_cnn


def mnist_cnn() -> keras.Model:
    """Two conv layers with pooling *before* ReLU, fc 128, fc 10 (Hvass-Labs tutorial #02)."""
    init = {"kernel_initializer": _truncated(0.05), "bias_initializer": initializers.Constant(0.05)}
    images = _input((28, 28, 1))
    x = layers.Rescaling(1.0 / 255.0, name="scale")(images)
    x = layers.Conv2D(16, 5, padding="same", name="conv1", **init)(x)
    x = layers.MaxPooling2D(2, 2, padding="same", name="pool1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.Conv2D(36, 5, padding="same", name="conv2", **init)(x)
    x = layers.MaxPooling2D(2, 2, padding="same", name="pool2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc1", **init)(x)
    logits = layers.Dense(NUM_CLASSES, name="logits", **init)(x)
    return keras.Model(images, logits, name="mnist_cnn")


# --------------------------------------------------------------------------- 2-4. CS231n


def cs231n_simple() -> keras.Model:
    images = _input((32, 32, 3))
    x = MeanImageSubtraction(name="mean_image")(images)
    x = layers.Conv2D(32, 7, strides=2, padding="valid", activation="relu", name="conv1")(x)
    x = layers.Flatten(name="flatten")(x)
    logits = layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(images, logits, name="cs231n_simple")


def cs231n_complex() -> keras.Model:
    """BatchNorm *after* the ReLU: it cannot fold into the conv in front of it."""
    images = _input((32, 32, 3))
    x = MeanImageSubtraction(name="mean_image")(images)
    x = layers.Conv2D(32, 7, padding="valid", activation="relu", name="conv1")(x)
    x = _bn("conv1_bn", momentum=0.9997)(x)
    x = layers.MaxPooling2D(2, 2, padding="valid", name="pool1")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(1024, activation="relu", name="fc1")(x)
    logits = layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(images, logits, name="cs231n_complex")


def cs231n_custom() -> keras.Model:
    images = _input((32, 32, 3))
    x = MeanImageSubtraction(name="mean_image")(images)
    x = layers.Conv2D(64, 5, padding="same", name="conv1")(x)
    for index in range(2, 5):
        x = _bn(f"conv{index}_pre_bn")(x)
        x = layers.ReLU(name=f"conv{index}_pre_relu")(x)
        x = layers.Conv2D(32, 5, strides=2, padding="same", name=f"conv{index}")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dense(100, activation="relu", name="fc1")(x)
    logits = layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(images, logits, name="cs231n_custom")


# --------------------------------------------------------------------------- 5. cifar10_convnet


def cifar10_convnet() -> keras.Model:
    """The TensorFlow CIFAR-10 tutorial network; tf.nn.l2_loss(w)·wd equals Keras L2(wd/2)."""
    lrn = {"depth_radius": 4, "bias": 1.0, "alpha": 0.001 / 9.0, "beta": 0.75}
    decay = regularizers.L2(0.004 / 2)
    images = _input((32, 32, 3))
    x = CifarAugmentation(crop=24, name="augment_crop")(images)
    x = PerImageStandardization(name="standardize")(x)
    x = layers.Conv2D(
        64, 5, padding="same", activation="relu", kernel_initializer=_truncated(5e-2),
        bias_initializer="zeros", name="conv1",
    )(x)  # fmt: skip
    x = layers.MaxPooling2D(3, 2, padding="same", name="pool1")(x)
    x = LocalResponseNormalization(**lrn, name="norm1")(x)
    x = layers.Conv2D(
        64, 5, padding="same", activation="relu", kernel_initializer=_truncated(5e-2),
        bias_initializer=initializers.Constant(0.1), name="conv2",
    )(x)  # fmt: skip
    x = LocalResponseNormalization(**lrn, name="norm2")(x)
    x = layers.MaxPooling2D(3, 2, padding="same", name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    for units, name in ((384, "local3"), (192, "local4")):
        x = layers.Dense(
            units, activation="relu", kernel_initializer=_truncated(0.04),
            bias_initializer=initializers.Constant(0.1), kernel_regularizer=decay, name=name,
        )(x)  # fmt: skip
    logits = layers.Dense(
        NUM_CLASSES, kernel_initializer=_truncated(1 / 192.0), bias_initializer="zeros",
        name="logits",
    )(x)  # fmt: skip
    return keras.Model(images, logits, name="cifar10_convnet")


# --------------------------------------------------------------------------- 6. alexnet_bn


def alexnet_bn() -> keras.Model:
    lrn = {"depth_radius": 4, "bias": 1.0, "alpha": 0.001 / 9.0, "beta": 0.75}
    images = _input((32, 32, 3))
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(images)
    x = layers.Conv2D(48, 3, padding="same", activation="relu", name="conv1")(x)
    x = LocalResponseNormalization(**lrn, name="norm1")(x)
    x = layers.MaxPooling2D(2, 2, name="pool1")(x)
    x = layers.Conv2D(96, 3, padding="same", name="conv2")(x)
    x = _bn("conv2_bn")(x)
    x = layers.ReLU(name="conv2_relu")(x)
    x = layers.MaxPooling2D(2, 2, name="pool2")(x)
    x = layers.Conv2D(192, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(192, 3, padding="same", activation="relu", name="conv4")(x)
    x = layers.Conv2D(96, 3, padding="same", name="conv5")(x)
    x = _bn("conv5_bn")(x)
    x = layers.ReLU(name="conv5_relu")(x)
    x = layers.MaxPooling2D(2, 2, name="pool5")(x)
    x = layers.Flatten(name="flatten")(x)
    for index in (1, 2):
        x = layers.Dense(1024, name=f"fc{index}")(x)
        # The source's hand-written BN: ExponentialMovingAverage(decay=0.9), epsilon 0.001.
        x = _bn(f"fc{index}_bn", momentum=0.9)(x)
        x = layers.ReLU(name=f"fc{index}_relu")(x)
    logits = layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(images, logits, name="alexnet_bn")


# --------------------------------------------------------------------------- 7. inception_bn


def conv_bn_relu(x, filters: int, name: str, kernel_size: int = 3, strides: int = 1):
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", name=f"{name}_conv")(x)
    x = _bn(f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def inception_block(x, filters: int, strides: int, name: str):
    branch1 = conv_bn_relu(x, filters, f"{name}_b1", strides=strides)
    branch2 = conv_bn_relu(x, filters, f"{name}_b2", strides=strides)
    branch3 = conv_bn_relu(x, filters, f"{name}_b3a", strides=strides)
    branch3 = conv_bn_relu(branch3, filters, f"{name}_b3b", strides=1)
    branch4 = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    branch4 = conv_bn_relu(branch4, filters, f"{name}_b4", strides=strides)
    return layers.Concatenate(axis=-1, name=f"{name}_concat")([branch1, branch2, branch3, branch4])


def inception_bn() -> keras.Model:
    images = _input((28, 28, 1))
    x = layers.Rescaling(1.0 / 255.0, offset=-0.5, name="scale")(images)
    x = conv_bn_relu(x, 16, "stem")
    filters = 16
    for block in (1, 2):
        x = inception_block(x, filters, strides=2, name=f"block{block}a")
        x = inception_block(x, filters, strides=1, name=f"block{block}b")
        filters *= 2
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(images, logits, name="inception_bn")


# --------------------------------------------------------------------------- the zoo

ZOO: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "mnist_cnn", (28, 28, 1), "mnist", "two-conv MNIST tutorial network",
            TrainDefaults("adam", 1e-4, 64, epochs=10), mnist_cnn,
        ),
        ModelSpec(
            "cs231n_simple", (32, 32, 3), "cifar10", "CS231n simple_model (hinge loss)",
            TrainDefaults("adam", 5e-4, 64, epochs=1, loss="hinge"), cs231n_simple,
        ),
        ModelSpec(
            "cs231n_complex", (32, 32, 3), "cifar10", "CS231n complex_model, BN after ReLU",
            TrainDefaults("rmsprop", 1e-3, 64, epochs=1), cs231n_complex,
        ),
        ModelSpec(
            "cs231n_custom", (32, 32, 3), "cifar10", "CS231n custom model, BN-ReLU-conv x3, GAP",
            TrainDefaults("adam", 1e-2, 64, epochs=7, lr_decay=(750, 0.96)), cs231n_custom,
        ),
        ModelSpec(
            "cifar10_convnet", (32, 32, 3), "cifar10", "TensorFlow CIFAR-10 tutorial, LRN, L2",
            TrainDefaults("adam", 1e-3, 128, steps=3000), cifar10_convnet,
        ),
        ModelSpec(
            "alexnet_bn", (32, 32, 3), "cifar10", "AlexNet-style with LRN and BatchNorm",
            TrainDefaults("adam", 1e-3, 20, steps=10000), alexnet_bn,
        ),
        ModelSpec(
            "inception_bn", (28, 28, 1), "fashion_mnist", "small Inception with BatchNorm",
            TrainDefaults("adam", 1e-3, 512, epochs=20), inception_bn,
        ),
    )
}  # fmt: skip


def get_spec(name: str) -> ModelSpec:
    try:
        return ZOO[name]
    except KeyError:
        raise CnnserveError(
            f"unknown model {name!r}; choose one of {', '.join(ZOO)} (see 'cnnserve models')"
        ) from None


def build_model(name: str) -> keras.Model:
    return get_spec(name).build()


# --------------------------------------------------------------------------- size and cost

PARAM_LAYERS = (
    layers.Conv2D,
    layers.DepthwiseConv2D,
    layers.Dense,
    layers.BatchNormalization,
)


def count_params(model: keras.Model) -> int:
    """Parameters of conv, dense and BN layers: what the sources count (no baked-in constants)."""
    return sum(layer.count_params() for layer in model.layers if isinstance(layer, PARAM_LAYERS))


def flops_per_image(model: keras.Model) -> int:
    """Multiply-adds × 2 of the conv and dense layers for one image."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            _, out_h, out_w, out_c = layer.output.shape
            kernel_h, kernel_w = layer.kernel_size
            total += 2 * kernel_h * kernel_w * out_h * out_w * out_c
        elif isinstance(layer, layers.Conv2D):
            _, out_h, out_w, out_c = layer.output.shape
            kernel_h, kernel_w = layer.kernel_size
            in_c = layer.input.shape[-1]
            total += 2 * kernel_h * kernel_w * in_c * out_h * out_w * out_c
        elif isinstance(layer, layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return total


def zoo_flops_per_image(name: str) -> int | None:
    """`flops_per_image` of zoo model `name` as defined (None for a name not in the zoo)."""
    return flops_per_image(build_model(name)) if name in ZOO else None
