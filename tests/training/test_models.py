"""The zoo reproduces the sources: parameter counts, layer order, preprocessing inside the graph."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from cnnserve.cli import main
from cnnserve.contracts.errors import CnnserveError
from cnnserve.training.layers import CifarAugmentation, LocalResponseNormalization
from cnnserve.training.models import ZOO, build_model, count_params, flops_per_image, get_spec

SOURCE_PARAMS = {
    "mnist_cnn": 242_062,
    "cs231n_simple": 58_826,
    "cs231n_complex": 5_553_930,
    "cs231n_custom": 112_182,
    "cifar10_convnet": 1_068_298,
    "alexnet_bn": 3_349_642,
    "inception_bn": 294_218,
}


@pytest.fixture(scope="module")
def zoo() -> dict[str, keras.Model]:
    return {name: spec.build() for name, spec in ZOO.items()}


def test_zoo_has_the_seven_source_models():
    assert set(ZOO) == set(SOURCE_PARAMS)


@pytest.mark.parametrize("name", list(SOURCE_PARAMS))
def test_parameter_counts_equal_the_sources(zoo, name):
    assert count_params(zoo[name]) == SOURCE_PARAMS[name]


@pytest.mark.parametrize("name", list(SOURCE_PARAMS))
def test_models_take_uint8_and_return_ten_logits(zoo, name):
    model = zoo[name]
    assert model.inputs[0].dtype == "uint8"
    assert tuple(model.inputs[0].shape[1:]) == ZOO[name].input_shape
    images = np.random.default_rng(0).integers(0, 256, size=(3, *ZOO[name].input_shape), dtype=np.uint8)
    logits = keras.ops.convert_to_numpy(model(images, training=False))
    assert logits.shape == (3, 10)
    assert np.isfinite(logits).all()


def test_inception_bn_matches_keras_summary_split(zoo):
    model = zoo["inception_bn"]
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert non_trainable == 992  # moving mean + variance of 496 BN channels
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 293_226


def test_mnist_cnn_pools_before_relu_and_uses_tutorial_init(zoo):
    names = [layer.name for layer in zoo["mnist_cnn"].layers]
    assert names.index("pool1") < names.index("relu1") < names.index("conv2")
    conv1 = zoo["mnist_cnn"].get_layer("conv1")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(conv1.bias), 0.05)
    assert np.abs(keras.ops.convert_to_numpy(conv1.kernel)).max() <= 2 * 0.05 + 1e-7  # truncated


def test_mnist_cnn_flops_by_hand(zoo):
    conv1 = 2 * 5 * 5 * 1 * 16 * 28 * 28
    conv2 = 2 * 5 * 5 * 16 * 36 * 14 * 14
    dense = 2 * (1764 * 128 + 128 * 10)
    assert flops_per_image(zoo["mnist_cnn"]) == conv1 + conv2 + dense


def test_cs231n_complex_batchnorm_follows_relu_with_source_decay(zoo):
    model = zoo["cs231n_complex"]
    bn = model.get_layer("conv1_bn")
    assert bn.momentum == pytest.approx(0.9997)
    assert bn.epsilon == pytest.approx(1e-3)
    assert bn.input is model.get_layer("conv1").output  # conv1 has a fused ReLU
    assert model.get_layer("conv1").activation.__name__ == "relu"
    assert model.get_layer("flatten").output.shape[-1] == 13 * 13 * 32


def test_alexnet_bn_dense_batchnorm_uses_decay_point_nine(zoo):
    model = zoo["alexnet_bn"]
    assert model.get_layer("fc1_bn").momentum == pytest.approx(0.9)
    assert model.get_layer("conv2_bn").momentum == pytest.approx(0.99)
    assert model.get_layer("flatten").output.shape[-1] == 4 * 4 * 96


def test_lrn_uses_tutorial_parameters(zoo):
    for name in ("cifar10_convnet", "alexnet_bn"):
        lrn = zoo[name].get_layer("norm1")
        assert isinstance(lrn, LocalResponseNormalization)
        assert (lrn.depth_radius, lrn.bias, lrn.beta) == (4, 1.0, 0.75)
        assert lrn.alpha == pytest.approx(0.001 / 9.0)


@pytest.mark.parametrize(
    ("channels", "radius", "alpha", "beta"),
    [(64, 4, 0.001 / 9.0, 0.75), (48, 2, 1e-4, 0.75), (5, 4, 0.01, 0.75), (16, 3, 0.002, 0.5)],
)
def test_decomposed_lrn_computes_tensorflows_lrn(channels, radius, alpha, beta):
    """The TFLite export's form: the same function, from ops XNNPACK runs; never saved."""
    layer = LocalResponseNormalization(depth_radius=radius, bias=1.0, alpha=alpha, beta=beta)
    images = np.random.default_rng(channels).uniform(0, 30, (3, 6, 6, channels)).astype(np.float32)
    fused = np.asarray(layer(images))
    layer.decomposed = True
    np.testing.assert_allclose(np.asarray(layer(images)), fused, rtol=2e-6, atol=1e-6)
    assert "decomposed" not in layer.get_config()


def test_cifar10_convnet_weight_decay_matches_tf_l2_loss(zoo):
    regularizer = zoo["cifar10_convnet"].get_layer("local3").kernel_regularizer
    weights = np.full((2, 2), 3.0, np.float32)
    # tf.nn.l2_loss(w) * 0.004 = sum(w²)/2 * 0.004
    assert float(regularizer(weights)) == pytest.approx(0.004 * (weights**2).sum() / 2)


def test_cifar_augmentation_is_random_in_training_and_a_central_crop_otherwise():
    layer = CifarAugmentation(crop=24, seed=1)
    images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3)).astype(np.uint8)
    inference = keras.ops.convert_to_numpy(layer(images, training=False))
    np.testing.assert_array_equal(inference, images[:, 4:28, 4:28, :].astype(np.float32))
    first = keras.ops.convert_to_numpy(layer(images, training=True))
    second = keras.ops.convert_to_numpy(layer(images, training=True))
    assert first.shape == (4, 24, 24, 3)
    assert not np.allclose(first, second)


def test_inception_block_concatenates_four_branches(zoo):
    model = zoo["inception_bn"]
    assert model.get_layer("block1a_concat").output.shape[1:] == (14, 14, 64)
    assert model.get_layer("block2b_concat").output.shape[1:] == (7, 7, 128)


def test_unknown_model_error_lists_zoo():
    with pytest.raises(CnnserveError, match="unknown model 'resnet50'; choose one of mnist_cnn"):
        get_spec("resnet50")


def test_models_json_cli(capsys):
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["cs231n_complex"]["params"] == SOURCE_PARAMS["cs231n_complex"]
    assert rows["cs231n_complex"]["input_shape"] == [32, 32, 3]
    assert rows["inception_bn"]["dataset"] == "fashion_mnist"
    assert rows["mnist_cnn"]["flops_per_image"] == flops_per_image(build_model("mnist_cnn"))
