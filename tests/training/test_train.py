"""Training end to end on small data: loss falls, accuracy beats chance, BatchNorm behaves."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from cnnserve.cli import main
from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.run_dir import load_run_info
from cnnserve.training.data import load_dataset
from cnnserve.training.models import get_spec
from cnnserve.training.train import TrainConfig, resolve_schedule, train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train(tmp_path: Path, model: str, **overrides) -> Path:
    overrides.setdefault("fold", False)  # folding is tested once, on the shared inception run
    config = TrainConfig(model=model, out=tmp_path / model, dataset="synthetic", show_progress=False,
                         **overrides)  # fmt: skip
    return train(config)


@pytest.fixture(scope="module")
def inception_run(tmp_path_factory) -> Path:
    """inception_bn on the learnable synthetic task: enough steps for BN statistics to settle."""
    return _train(tmp_path_factory.mktemp("runs"), "inception_bn", steps=60, batch_size=64,
                  synthetic_size=2048, fold=True)  # fmt: skip


def test_run_directory_has_everything(inception_run: Path):
    for name in ("model.keras", "metrics.json", "run.json"):
        assert (inception_run / name).is_file(), name
    for name in ("history.png", "confusion_matrix.png", "errors.png", "filters.png", "feature_maps.png"):
        assert (inception_run / name).read_bytes()[:8] == PNG_MAGIC, name
    # `cnnserve train` ends by folding: every one of the 21 BatchNorms went into its conv.
    assert (inception_run / "inference.savedmodel" / "saved_model.pb").is_file()
    fold = json.loads((inception_run / "export_report.json").read_text())["fold"]
    assert len(fold["batchnorm"]) == 21 and all(f["kind"] == "backward" for f in fold["batchnorm"])
    assert fold["parity"]["top1_agreement"] == 1.0
    info = load_run_info(inception_run)
    assert info.model == "inception_bn" and info.steps == 60 and info.batch_size == 64
    metrics = json.loads((inception_run / "metrics.json").read_text())
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 512  # the synthetic test split
    assert metrics["test_accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert set(metrics["per_class_accuracy"]) == set(info.class_names)
    assert metrics["examples_per_s"] > 0 and metrics["training_time_s"] > 0


def test_loss_falls_and_accuracy_beats_chance(inception_run: Path):
    metrics = json.loads((inception_run / "metrics.json").read_text())
    history = metrics["history"]
    assert history["loss"][-1] < history["loss"][0]
    assert metrics["test_accuracy"] > 0.5  # chance is 0.1


def test_moving_averages_are_updated_during_training(tmp_path: Path):
    """The source documents' trap: the moving-average updates must really run in training."""
    run = _train(tmp_path, "inception_bn", steps=3, batch_size=32, synthetic_size=256, precise_bn_batches=0)
    model = keras.saving.load_model(run / "model.keras", compile=False)
    bn = model.get_layer("stem_bn")
    # Three updates with momentum 0.99 from (mean 0, variance 1): 1 − 0.99³ of the way to the batch.
    variance = keras.ops.convert_to_numpy(bn.moving_variance)
    assert np.all(variance < 1.0) and np.all(variance > 0.99**3 - 1e-6)
    assert np.abs(keras.ops.convert_to_numpy(bn.moving_mean)).max() > 0


def test_batchnorm_uses_moving_statistics_in_inference(inception_run: Path):
    """Inference uses stored statistics: batch 1 and batch 256 agree, and test ≈ train accuracy."""
    model = keras.saving.load_model(inception_run / "model.keras", compile=False)
    images = load_dataset("synthetic", synthetic_shape=(28, 28, 1), synthetic_size=256, seed=9).train.images
    batched = keras.ops.convert_to_numpy(model(images, training=False))
    # One traced graph for every single-image call (256 eager calls of inception_bn are slow).
    infer = tf.function(
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec((1, 28, 28, 1), tf.uint8)]
    )
    single = np.concatenate([infer(images[i : i + 1]).numpy() for i in range(len(images))])
    np.testing.assert_allclose(single, batched, atol=1e-4)
    assert (single.argmax(1) == batched.argmax(1)).all()
    metrics = json.loads((inception_run / "metrics.json").read_text())
    assert abs(metrics["test_accuracy"] - metrics["train_accuracy"]) < 0.1


def test_saved_model_reloads_with_identical_predictions(inception_run: Path):
    model = keras.saving.load_model(inception_run / "model.keras", compile=False)
    again = keras.saving.load_model(inception_run / "model.keras", compile=False)
    images = np.random.default_rng(1).integers(0, 256, size=(8, 28, 28, 1), dtype=np.uint8)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model(images)), keras.ops.convert_to_numpy(again(images))
    )


@pytest.mark.parametrize(
    ("model", "min_accuracy"),
    # cifar10_convnet trains on randomly cropped, flipped, brightened images: slower to learn.
    [("cs231n_simple", 0.2), ("cs231n_custom", 0.2), ("cifar10_convnet", 0.0)],
)
def test_cifar_shaped_models_train_with_their_own_loss_and_augmentation(
    tmp_path: Path, model: str, min_accuracy: float
):
    run = _train(tmp_path, model, steps=40, batch_size=32, synthetic_size=512, val_size=0, learning_rate=1e-3)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["epochs"] == 3
    assert metrics["history"]["loss"][-1] < metrics["history"]["loss"][0]
    assert metrics["test_accuracy"] > min_accuracy


def test_mean_image_is_baked_from_training_data(tmp_path: Path):
    run = _train(tmp_path, "cs231n_simple", steps=2, batch_size=16, synthetic_size=128, val_size=0)
    model = keras.saving.load_model(run / "model.keras", compile=False)
    dataset = load_dataset("synthetic", synthetic_shape=(32, 32, 3), synthetic_size=128, val_size=0)
    expected = dataset.train.images.astype(np.float64).mean(axis=0)
    mean = keras.ops.convert_to_numpy(model.get_layer("mean_image").mean_image)
    np.testing.assert_allclose(mean, expected, atol=1e-3)


def test_steps_across_epochs_stop_exactly(tmp_path: Path):
    # 256 training images at batch 32 = 8 steps per epoch; 20 steps = 2 full epochs + 4 steps.
    run = _train(tmp_path, "mnist_cnn", steps=20, batch_size=32, synthetic_size=256, val_size=0)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 20 and metrics["epochs"] == 3


def test_schedule_defaults_follow_the_sources():
    custom = resolve_schedule(get_spec("cs231n_custom"), TrainConfig("cs231n_custom", Path("x")), 49_000)
    assert (custom.batch_size, custom.learning_rate, custom.epochs) == (64, 1e-2, 7)
    assert get_spec("cs231n_custom").defaults.lr_decay == (750, 0.96)
    alexnet = resolve_schedule(get_spec("alexnet_bn"), TrainConfig("alexnet_bn", Path("x")), 49_000)
    assert (alexnet.batch_size, alexnet.total_steps, alexnet.steps_per_epoch) == (20, 10_000, 2450)
    convnet = resolve_schedule(get_spec("cifar10_convnet"), TrainConfig("cifar10_convnet", Path("x")), 49_000)
    assert (convnet.batch_size, convnet.total_steps) == (128, 3000)
    inception = resolve_schedule(
        get_spec("inception_bn"), TrainConfig("inception_bn", Path("x"), epochs=16), 55_000
    )
    assert (inception.batch_size, inception.learning_rate, inception.total_steps) == (512, 1e-3, 16 * 108)


def test_32x32x3_model_refuses_fashion_mnist_with_a_clear_error(tmp_path: Path, capsys):
    code = main(["train", "--model", "cs231n_complex", "--out", str(tmp_path / "r")])
    assert code == 2
    error = capsys.readouterr().err
    assert "cs231n_complex takes 32x32x3 images but dataset fashion_mnist has 28x28x1" in error
    assert "--dataset cifar10 --data-dir" in error
    assert not (tmp_path / "r").exists()


def test_existing_run_is_not_overwritten_without_flag(tmp_path: Path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code = main(
        ["train", "--model", "mnist_cnn", "--dataset", "synthetic", "--steps", "1", "--out", str(out)]
    )
    assert code == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "--steps must be >= 1, received 0"),
        (["--lr", "-1"], "--lr must be > 0, received -1"),
        (["--batch-size", "0"], "--batch-size must be >= 1, received 0"),
    ],
)
def test_bad_hyperparameters_get_one_line_errors(tmp_path: Path, capsys, argv, message):
    code = main(["train", "--model", "mnist_cnn", "--out", str(tmp_path / "r"), *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_unknown_model_via_cli(tmp_path: Path, capsys):
    assert main(["train", "--model", "vgg", "--out", str(tmp_path / "r")]) == 2
    assert "unknown model 'vgg'" in capsys.readouterr().err


def test_train_config_rejects_epochs_and_steps_together():
    with pytest.raises(CnnserveError, match="not both"):
        TrainConfig("mnist_cnn", Path("x"), epochs=1, steps=1)


def test_validation_figures_are_those_of_the_served_model(inception_run: Path):
    """Each epoch's val_accuracy is measured on a copy with the final BN recalibration, so the
    last epoch's figure is exactly the saved model's accuracy on the validation split."""
    metrics = json.loads((inception_run / "metrics.json").read_text())
    assert metrics["validation_statistics"] == "precise BN, 20x256 training images"
    assert len(metrics["validation_times_s"]) == metrics["epochs"]
    model = keras.saving.load_model(inception_run / "model.keras", compile=False)
    val = load_dataset("synthetic", synthetic_shape=(28, 28, 1), synthetic_size=2048).val
    logits = keras.ops.convert_to_numpy(model.predict(val.images, batch_size=256, verbose=0))
    served_accuracy = float((logits.argmax(1) == val.labels).mean())
    assert metrics["history"]["val_accuracy"][-1] == pytest.approx(served_accuracy, abs=1e-9)
    assert metrics["val_accuracy"] == metrics["history"]["val_accuracy"][-1]


def test_tensorboard_has_step_and_epoch_scalars_and_the_pictures(inception_run: Path):
    import tensorflow as tf

    def tags(folder: str) -> dict[str, set[int]]:
        found: dict[str, set[int]] = {}
        for events in (inception_run / "tensorboard" / folder).glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(events)):
                for value in event.summary.value:
                    found.setdefault(value.tag, set()).add(event.step)
        return found

    train_tags, val_tags, test_tags = tags("train"), tags("validation"), tags("test")
    assert train_tags["batch_loss"] == set(range(1, 61))  # every one of the 60 steps
    assert {"batch_accuracy", "epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= set(train_tags)
    epochs = json.loads((inception_run / "metrics.json").read_text())["epochs"]
    assert val_tags["epoch_accuracy"] == set(range(epochs))
    assert set(test_tags) == {"confusion_matrix", "errors"}
    assert (inception_run / "history.png").read_bytes()[:8] == PNG_MAGIC
