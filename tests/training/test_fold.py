"""BatchNorm folding: every placement rule, every zoo model, the graph check and the run API."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from cnnserve.cli import main
from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.run_dir import FOLDED_DIR, MODEL_FILE, REPORT_FILE, RunInfo
from cnnserve.training.data import load_dataset
from cnnserve.training.fold import FoldError, fold_model
from cnnserve.training.fold_check import batchnorm_arithmetic, verify_fold
from cnnserve.training.fold_run import fold_run
from cnnserve.training.models import ZOO, build_model, get_spec
from tests.training.idx_files import write_idx

EPSILON = 0.05
BATCHES = (1, 256)


def _randomize(model: keras.Model, seed: int = 0, positive: bool = True) -> keras.Model:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.epsilon = EPSILON
            layer.moving_mean.assign(rng.normal(0, 0.5, channels))
            layer.moving_variance.assign(rng.uniform(0.2, 2.0, channels))
            gamma = rng.uniform(0.5, 1.5, channels)
            layer.gamma.assign(gamma if positive else gamma * rng.choice([-1, 1], channels))
            layer.beta.assign(rng.normal(0, 0.5, channels))
    return model


def _realistic(model: keras.Model, images: np.ndarray, seed: int = 3) -> keras.Model:
    """Zoo weights: mean image set, BN statistics random around the activations' own (ε non-default)
    and the last layer scaled to a trained model's logit range (|logit| ≈ 10), as in training."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if hasattr(layer, "set_mean"):
            layer.set_mean(images)
        if isinstance(layer, layers.BatchNormalization):
            features = keras.Model(model.inputs[0], layer.input)(images[:256]).numpy()
            features = features.reshape(-1, features.shape[-1])
            channels = features.shape[-1]
            layer.epsilon = EPSILON
            layer.moving_mean.assign(features.mean(0) + rng.normal(0, 0.3, channels) * features.std(0))
            layer.moving_variance.assign(features.var(0) * rng.uniform(0.5, 2.0, channels))
            layer.gamma.assign(rng.uniform(0.5, 1.5, channels))
            layer.beta.assign(rng.normal(0, 0.5, channels))
    last = model.get_layer("logits")
    factor = 10.0 / float(np.abs(model(images[:256], training=False).numpy()).max())
    last.kernel.assign(last.kernel.numpy() * factor)
    last.bias.assign(last.bias.numpy() * factor)
    return model


def _images(shape, count=300, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *shape)).astype(np.uint8)


def _float_model(body, shape=(12, 12, 4)) -> keras.Model:
    images = keras.Input(shape, dtype="uint8", name="images")
    x = layers.Rescaling(1 / 255.0, name="scale")(images)
    return keras.Model(images, body(x))


def _folds(model):
    folded = fold_model(model)
    parity = verify_fold(folded, model, _images(model.inputs[0].shape[1:]), BATCHES)
    assert not any(isinstance(layer, layers.BatchNormalization) for layer in folded.model.layers)
    return {fold.layer: fold for fold in folded.folds}, parity


def test_backward_into_conv_dense_and_depthwise_with_and_without_bias():
    def body(x):
        x = layers.Conv2D(6, 3, strides=2, padding="valid", use_bias=False, name="conv")(x)
        x = layers.BatchNormalization(name="conv_bn")(x)
        x = layers.ReLU()(x)
        x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
        x = layers.BatchNormalization(name="dw_bn")(x)
        x = layers.ReLU()(x)
        x = layers.Flatten()(x)
        x = layers.Dense(8, name="fc")(x)
        x = layers.BatchNormalization(name="fc_bn")(x)
        return layers.Dense(3, name="logits")(layers.ReLU()(x))

    folds, parity = _folds(_randomize(_float_model(body)))
    assert {name: f.destination for name, f in folds.items()} == {
        "conv_bn": "into conv", "dw_bn": "into dw", "fc_bn": "into fc",
    }  # fmt: skip
    assert all(f.epsilon == EPSILON for f in folds.values())
    assert parity.ok and parity.batch_sizes == BATCHES


def test_forward_through_max_pool_and_flatten_into_dense():
    def body(x):
        x = layers.Conv2D(5, 3, activation="relu", name="conv")(x)
        x = layers.BatchNormalization(name="bn")(x)
        x = layers.MaxPooling2D(2, name="pool")(x)
        x = layers.Flatten(name="flatten")(x)
        return layers.Dense(3, name="fc")(x)

    folds, parity = _folds(_randomize(_float_model(body)))
    assert folds["bn"].kind == "forward"
    assert folds["bn"].destination == "forward into fc through pool, flatten"
    assert parity.max_abs_logit_diff <= 1e-4


def test_forward_into_valid_conv_and_not_into_same_conv():
    def body(x):
        x = layers.Conv2D(4, 3, activation="relu", name="c1")(x)
        x = layers.BatchNormalization(name="into_valid")(x)
        x = layers.Conv2D(4, 3, padding="valid", activation="relu", name="c2")(x)
        x = layers.BatchNormalization(name="before_same")(x)
        x = layers.Conv2D(4, 3, padding="same", name="c3")(x)
        return layers.Dense(3, name="fc")(layers.GlobalAveragePooling2D()(x))

    folds, _ = _folds(_randomize(_float_model(body)))
    assert folds["into_valid"].destination == "forward into c2"
    assert folds["before_same"].kind == "affine"
    assert "SAME zero padding" in folds["before_same"].reason


def test_never_folds_where_inexact():
    def body(x):
        shared = layers.Conv2D(4, 3, name="shared_conv")(x)  # two consumers
        a = layers.BatchNormalization(name="after_shared")(shared)
        b = layers.ReLU()(shared)
        x = layers.Concatenate()([a, b])
        x = layers.ReLU()(x)
        x = layers.BatchNormalization(name="negative_scale")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dense(3, name="fc")(layers.Flatten()(x))
        return layers.BatchNormalization(name="graph_output")(layers.ReLU()(x))

    folds, parity = _folds(_randomize(_float_model(body), positive=False))
    assert "more than one consumer" in folds["after_shared"].reason
    assert folds["negative_scale"].kind == "affine" and "scale <= 0" in folds["negative_scale"].reason
    assert folds["graph_output"].kind == "affine" and "graph output" in folds["graph_output"].reason
    assert parity.ok


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_folds_exactly(name):
    images = load_dataset("synthetic", synthetic_shape=get_spec(name).input_shape).test.images
    model = _realistic(build_model(name), images)
    folded = fold_model(model)
    bns = [layer.name for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    assert sorted(f.layer for f in folded.folds) == sorted(bns)
    assert bool(batchnorm_arithmetic(model, bns)) == bool(bns)  # the check sees real BN
    parity = verify_fold(folded, model, images[:200], BATCHES)
    assert parity.top1_agreement == 1.0 and parity.max_abs_logit_diff <= 1e-4
    destinations = {f.layer: f.destination for f in folded.folds}
    expected = {
        "cs231n_complex": {"conv1_bn": "forward into fc1 through pool1, flatten"},
        "cs231n_custom": {f"conv{i}_pre_bn": f"into conv{i - 1}" for i in (2, 3, 4)},
        "alexnet_bn": {f"{n}_bn": f"into {n}" for n in ("conv2", "conv5", "fc1", "fc2")},
    }.get(name)
    if expected is not None:
        assert destinations == expected
    if name == "inception_bn":
        assert all(d == "into " + b.removesuffix("_bn") + "_conv" for b, d in destinations.items())
    if name == "cifar10_convnet":  # the augmentation became a plain central crop
        assert type(folded.model.get_layer("augment_crop")).__name__ == "CentralCrop"


def test_graph_check_flags_kept_batchnorm_arithmetic():
    def body(x):
        x = layers.Conv2D(4, 3, name="conv")(x)
        x = layers.BatchNormalization(name="bn")(x)
        return layers.Dense(3)(layers.Flatten()(x))

    model = _randomize(_float_model(body))
    findings = batchnorm_arithmetic(model, ["bn"])
    assert any("Rsqrt" in f for f in findings) and any("bn" in f for f in findings)
    assert batchnorm_arithmetic(fold_model(model).model, ["bn"]) == []
    # A per-channel multiply-add outside a kept affine is BN arithmetic even under another name.
    images = keras.Input((12, 12, 4), dtype="float32")
    sneaky = keras.Model(images, layers.Lambda(lambda t: t * tf.ones([4]) + tf.ones([4]))(images))
    assert any("per-channel" in f for f in batchnorm_arithmetic(sneaky, []))


def test_parity_failure_names_the_layer():
    def body(x):
        x = layers.Conv2D(4, 3, name="conv")(x)
        x = layers.BatchNormalization(name="conv_bn")(x)
        return layers.Dense(3, name="fc")(layers.Flatten()(layers.ReLU()(x)))

    model = _randomize(_float_model(body))
    folded = fold_model(model)
    conv = folded.model.get_layer("conv")
    conv.bias.assign(conv.bias.numpy() + 0.5)  # a wrong fold
    with pytest.raises(FoldError, match="from layer 'conv_bn'"):
        verify_fold(folded, model, _images((12, 12, 4)), BATCHES)


def test_unknown_layer_is_one_clear_error():
    model = _float_model(lambda x: layers.Dense(3)(layers.Flatten()(layers.LayerNormalization()(x))))
    with pytest.raises(FoldError, match="LayerNormalization is not known to the folder"):
        fold_model(model)


@pytest.fixture(scope="module")
def inception_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fold") / "run"
    run.mkdir()
    model = _randomize(build_model("inception_bn"), seed=5)
    model.save(run / MODEL_FILE)
    spec = get_spec("inception_bn")
    data = load_dataset("fashion_mnist")
    RunInfo("inception_bn", "fashion_mnist", data.class_names, spec.input_shape, "adam", 1e-3,
            512, 0, 0, 0).save(run)  # fmt: skip
    return run


def test_fold_run_writes_inference_savedmodel_and_report(inception_run, capsys):
    report = fold_run(inception_run)  # 1,000 real Fashion-MNIST test images, batch 1 and 256
    assert "BatchNorm folding" in capsys.readouterr().out
    assert report.parity.images == 1000 and report.parity.batch_sizes == BATCHES
    assert report.parity.ok and len(report.folds) == 21 and report.bn_ops_before > 0
    loaded = tf.saved_model.load(str(inception_run / FOLDED_DIR))
    serve = loaded.signatures["serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    assert (spec.name, spec.dtype, spec.shape.as_list()) == ("images", tf.uint8, [None, 28, 28, 1])
    outputs = serve(images=tf.zeros([3, 28, 28, 1], tf.uint8))
    assert sorted(outputs) == ["logits", "probabilities"] and outputs["logits"].shape == (3, 10)
    written = json.loads((inception_run / REPORT_FILE).read_text())["fold"]
    assert written["batchnorm"][0]["destination"] == "into stem_conv"
    assert written["batchnorm"][0]["reason"] and written["batchnorm"][0]["epsilon"] == EPSILON
    assert written["parity"]["max_abs_logit_diff"] <= 1e-4 and written["parity"]["top1_agreement"] == 1
    assert written["batchnorm_ops_after"] == 0


def test_fold_cli(inception_run, tmp_path, capsys):
    # --data-dir with the first 1,000 real test images in the dataset's own IDX files, so the
    # folded model's test pass is a tenth of the full split (the full one ran just above).
    data = load_dataset("fashion_mnist")
    for prefix, split, count in (("train", data.train, 600), ("t10k", data.test, 1000)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", split.images[:count, ..., 0], gzipped=True)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", split.labels[:count], gzipped=True)
    assert main(["fold", str(inception_run), "--parity-images", "64", "--data-dir", str(tmp_path)]) == 0
    assert "into stem_conv" in capsys.readouterr().out
    written = json.loads((inception_run / REPORT_FILE).read_text())["fold"]
    assert written["test_images"] == 1000 and written["parity"]["images"] == 64


def test_fold_run_errors(tmp_path, capsys):
    with pytest.raises(CnnserveError, match="does not exist"):
        fold_run(tmp_path / "missing")
    with pytest.raises(CnnserveError, match="not a cnnserve run"):
        fold_run(tmp_path)
    assert main(["fold", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a cnnserve run" in err
