"""Run directories for every zoo model, folded once per session and shared by the export tests.

Weights: Keras initialisation, the mean image set from the training images, and every BatchNorm
given a non-default epsilon and random moving statistics around the activations' real statistics
. 28x28 models use real Fashion-MNIST; the
CIFAR-shaped ones use the synthetic dataset, since CIFAR-10 is not on this machine.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from cnnserve.contracts.run_dir import MODEL_FILE, RunInfo
from cnnserve.export.source import ExportSource, load_source
from cnnserve.training.data import class_names_for, load_dataset
from cnnserve.training.fold_run import fold_run
from cnnserve.training.models import ZOO, build_model, get_spec

TEST_PARITY_IMAGES = 256
BN_EPSILON = 0.01  # not Keras' 1e-3 default, so a folder that ignores the layer's ε fails


def dataset_for(name: str) -> str:
    return "fashion_mnist" if get_spec(name).input_shape[0] == 28 else "synthetic"


def randomize_batchnorm(model: keras.Model, images: np.ndarray, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if hasattr(layer, "set_mean"):
            layer.set_mean(images)
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        channels = layer.moving_mean.shape[0]
        features = keras.Model(model.inputs[0], layer.input)(images[:256]).numpy()
        features = features.reshape(-1, channels)
        mean, variance = features.mean(0), features.var(0)
        layer.epsilon = BN_EPSILON
        layer.moving_mean.assign(mean + rng.normal(0, 0.3, channels) * np.sqrt(variance))
        layer.moving_variance.assign(variance * rng.uniform(0.5, 2.0, channels))
        layer.gamma.assign(rng.uniform(0.5, 1.5, channels))
        layer.beta.assign(rng.normal(0, 0.5, channels))
    # Untrained Keras weights on 0-255 inputs give logits in the hundreds, where float32
    # rounding alone exceeds 1e-4; scale the last layer to a trained model's range (|logit| ≈ 10).
    logits = model(images[:256], training=False).numpy()
    last = model.get_layer("logits")
    factor = 10.0 / max(float(np.abs(logits).max()), 1e-6)
    last.kernel.assign(last.kernel.numpy() * factor)
    last.bias.assign(last.bias.numpy() * factor)


def make_run(run_dir: Path, model: keras.Model, name: str, dataset: str, accuracy=None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / MODEL_FILE)
    spec = get_spec(name)
    RunInfo(
        model=name, dataset=dataset, class_names=class_names_for(dataset),
        input_shape=spec.input_shape, optimizer="adam", learning_rate=1e-3, batch_size=64,
        steps=0, epochs=0, seed=0, test_accuracy=accuracy,
    ).save(run_dir)  # fmt: skip
    return run_dir


def make_zoo_run(root: Path, name: str) -> Path:
    dataset = dataset_for(name)
    data = load_dataset(dataset, synthetic_shape=get_spec(name).input_shape)
    model = build_model(name)
    randomize_batchnorm(model, data.train.images[:512])
    return make_run(root / name, model, name, dataset)


@pytest.fixture(scope="session")
def zoo_runs(tmp_path_factory) -> dict[str, Path]:
    """Every zoo model as a folded run directory (each folded once)."""
    root = tmp_path_factory.mktemp("zoo_runs")
    runs = {}
    for name in ZOO:
        runs[name] = make_zoo_run(root, name)
        fold_run(runs[name], parity_images=TEST_PARITY_IMAGES, print_table=False)
    return runs


@pytest.fixture(scope="session")
def zoo_sources(zoo_runs) -> dict[str, ExportSource]:
    return {name: load_source(run, parity_images=TEST_PARITY_IMAGES) for name, run in zoo_runs.items()}


@pytest.fixture(scope="session")
def fashion_run(tmp_path_factory) -> Path:
    """mnist_cnn trained briefly on real Fashion-MNIST (about 84% test accuracy), folded."""
    keras.utils.set_random_seed(0)
    data = load_dataset("fashion_mnist")
    model = build_model("mnist_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(data.train.images[:12000], data.train.labels[:12000], batch_size=64, epochs=1, verbose=0)
    run = make_run(tmp_path_factory.mktemp("fashion") / "run", model, "mnist_cnn", "fashion_mnist")
    fold_run(run, print_table=False)
    return run


@pytest.fixture
def run_factory():
    """`make_run` for tests that build their own model (test modules do not import conftest)."""
    return make_run
