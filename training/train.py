"""`cnnserve train`: train a zoo model on a dataset and write a run directory.

Keras `fit` runs the loop so BatchNorm's moving averages are updated by the framework itself
(the trap the source documents warn about); evaluation always runs in inference mode.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np

from cnnserve import __version__
from cnnserve.errors import CnnserveError
from cnnserve.training import report
from cnnserve.training.data import Dataset, load_dataset
from cnnserve.training.fold_check import keras_predictor, run_batched
from cnnserve.training.fold_run import fold_run
from cnnserve.training.layers import MeanImageSubtraction
from cnnserve.training.models import ModelSpec, count_params, get_spec
from cnnserve.training.pipeline import evaluation_pipeline, training_pipeline
from cnnserve.training.precise_bn import recalibrate_batchnorm
from cnnserve.training.progress import EpochLogger, StepLimit
from cnnserve.training.run import METRICS_FILE, MODEL_FILE, RunInfo

EVAL_BATCH_SIZE = 256
TRAIN_ACCURACY_SAMPLE = 10_000


@dataclass(frozen=True)
class TrainConfig:
    """What to train; None means the source tutorial's default for that model."""

    model: str
    out: Path
    dataset: str = "fashion_mnist"
    data_dir: Path | None = None
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    seed: int = 0
    val_size: int | None = None
    synthetic_size: int = 4096
    # Batches of 256 training images over which BN statistics are recomputed after training.
    precise_bn_batches: int = 20
    # Fold BatchNorm into RUN/inference.savedmodel at the end, as `cnnserve fold RUN` would.
    fold: bool = True
    overwrite: bool = False
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.precise_bn_batches < 0:
            raise CnnserveError(f"--precise-bn-batches must be >= 0, received {self.precise_bn_batches}")
        for name in ("epochs", "steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise CnnserveError(f"--{name.replace('_', '-')} must be >= 1, received {value}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise CnnserveError(f"--lr must be > 0, received {self.learning_rate}")
        if self.epochs is not None and self.steps is not None:
            raise CnnserveError("give --epochs or --steps, not both")


@dataclass(frozen=True)
class Schedule:
    """The resolved training length and hyperparameters."""

    batch_size: int
    learning_rate: float
    steps_per_epoch: int
    epochs: int
    total_steps: int


@keras.saving.register_keras_serializable(package="cnnserve")
def sparse_hinge(labels, logits):
    """tf.losses.hinge_loss on one-hot labels, as the CS231n simple_model: mean(max(0, 1 − t·y))."""
    one_hot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(labels, (-1,)), "int32"), 10)
    return keras.losses.hinge(one_hot, logits)


def resolve_schedule(spec: ModelSpec, config: TrainConfig, train_images: int) -> Schedule:
    defaults = spec.defaults
    batch_size = config.batch_size or defaults.batch_size
    full_epoch = math.ceil(train_images / batch_size)
    if config.steps is not None or (config.epochs is None and defaults.steps is not None):
        total_steps = config.steps or defaults.steps
        steps_per_epoch = min(full_epoch, total_steps)
        epochs = math.ceil(total_steps / steps_per_epoch)
    else:
        epochs = config.epochs or defaults.epochs or 1
        steps_per_epoch = full_epoch
        total_steps = epochs * full_epoch
    return Schedule(
        batch_size,
        config.learning_rate or defaults.learning_rate,
        steps_per_epoch,
        epochs,
        total_steps,
    )


def _optimizer(spec: ModelSpec, learning_rate: float) -> keras.optimizers.Optimizer:
    rate: float | keras.optimizers.schedules.LearningRateSchedule = learning_rate
    if spec.defaults.lr_decay is not None:
        every, factor = spec.defaults.lr_decay
        rate = keras.optimizers.schedules.ExponentialDecay(learning_rate, every, factor, staircase=True)
    if spec.defaults.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(rate)
    return keras.optimizers.Adam(rate)


def _check_shapes(spec: ModelSpec, dataset: Dataset) -> None:
    if dataset.image_shape != spec.input_shape:
        have = "x".join(map(str, dataset.image_shape))
        want = "x".join(map(str, spec.input_shape))
        suggestion = (
            "--dataset cifar10 --data-dir DIR" if spec.input_shape == (32, 32, 3)
            else "--dataset fashion_mnist or mnist"
        )  # fmt: skip
        raise CnnserveError(
            f"model {spec.name} takes {want} images but dataset {dataset.name} has {have}; "
            f"use {suggestion} (or --dataset synthetic)"
        )


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CnnserveError(
                f"{out} already exists and is not empty; pass --overwrite or pick another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _plot_first_conv(model: keras.Model, image: np.ndarray, out: Path) -> None:
    conv = next((layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)), None)
    if conv is None:
        return
    report.plot_filters(keras.ops.convert_to_numpy(conv.kernel), conv.name, out / "filters.png")
    probe = keras.Model(model.input, conv.output)
    maps = keras.ops.convert_to_numpy(probe(image[np.newaxis], training=False))[0]
    report.plot_feature_maps(maps, image, conv.name, out / "feature_maps.png")


def train(config: TrainConfig) -> Path:
    """Trains, evaluates and writes the run directory; returns its path."""
    spec = get_spec(config.model)
    dataset = load_dataset(
        config.dataset, config.data_dir, config.val_size, synthetic_shape=spec.input_shape,
        synthetic_size=config.synthetic_size, seed=config.seed,
    )  # fmt: skip
    _check_shapes(spec, dataset)
    schedule = resolve_schedule(spec, config, len(dataset.train))
    _prepare_out_dir(config.out, config.overwrite)

    keras.utils.set_random_seed(config.seed)
    model = spec.build()
    for layer in model.layers:
        if isinstance(layer, MeanImageSubtraction):
            layer.set_mean(dataset.train.images)
    model.compile(
        optimizer=_optimizer(spec, schedule.learning_rate),
        loss=sparse_hinge if spec.defaults.loss == "hinge"
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )  # fmt: skip

    train_data, _ = training_pipeline(dataset.train, schedule.batch_size, config.seed)
    val_data = evaluation_pipeline(dataset.val, EVAL_BATCH_SIZE) if dataset.val is not None else None
    logger = EpochLogger(schedule.epochs, schedule.steps_per_epoch, schedule.batch_size,
                         show_progress=config.show_progress)  # fmt: skip
    logger.announce(spec, dataset, schedule, count_params(model))
    started = time.perf_counter()
    history = model.fit(
        train_data,
        epochs=schedule.epochs,
        steps_per_epoch=schedule.steps_per_epoch,
        validation_data=val_data,
        callbacks=[StepLimit(schedule.total_steps), logger],
        shuffle=False,  # the pipeline shuffles
        verbose=0,
    )
    training_time_s = time.perf_counter() - started
    precise_bn_images = recalibrate_batchnorm(
        model, dataset.train.images, config.precise_bn_batches, seed=config.seed
    )
    if precise_bn_images:
        logger.console.print(f"BatchNorm statistics recomputed over {precise_bn_images:,} training images")

    predict = keras_predictor(model)  # inference mode: moving (or precise) BN statistics
    test_eval = report.evaluate_logits(
        run_batched(predict, dataset.test.images, EVAL_BATCH_SIZE), dataset.test.labels, dataset.class_names
    )
    train_sample = dataset.train.take(slice(0, TRAIN_ACCURACY_SAMPLE))
    train_eval = report.evaluate_logits(
        run_batched(predict, train_sample.images, EVAL_BATCH_SIZE), train_sample.labels, dataset.class_names
    )
    steps_done = logger.steps_done
    metrics = {
        "model": spec.name,
        "dataset": dataset.name,
        "test_accuracy": test_eval.accuracy,
        "test_loss": test_eval.loss,
        "train_accuracy": train_eval.accuracy,
        "val_accuracy": (history.history.get("val_accuracy") or [None])[-1],
        "per_class_accuracy": test_eval.per_class_accuracy,
        "confusion_matrix": test_eval.confusion_matrix,
        "class_names": list(dataset.class_names),
        "training_time_s": training_time_s,
        "examples_per_s": steps_done * schedule.batch_size / training_time_s,
        "steps": steps_done,
        "epochs": len(history.history.get("loss", [])),
        "schedule": asdict(schedule),
        "history": {key: [float(v) for v in values] for key, values in history.history.items()},
        "epoch_times_s": logger.epoch_times_s,
        "precise_bn_images": precise_bn_images,
    }
    out = config.out
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    report.plot_confusion_matrix(test_eval, dataset.class_names, out / "confusion_matrix.png")
    report.plot_errors(test_eval, dataset.test, dataset.class_names, out / "errors.png")
    report.plot_history(metrics["history"], out / "history.png")
    _plot_first_conv(model, dataset.test.images[0], out)
    model.save(out / MODEL_FILE)
    RunInfo(
        model=spec.name,
        dataset=dataset.name,
        class_names=dataset.class_names,
        input_shape=spec.input_shape,
        optimizer=spec.defaults.optimizer,
        learning_rate=schedule.learning_rate,
        batch_size=schedule.batch_size,
        steps=steps_done,
        epochs=metrics["epochs"],
        seed=config.seed,
        test_accuracy=test_eval.accuracy,
        cnnserve_version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        extra={
            "data_dir": str(config.data_dir.resolve()) if config.data_dir else None,
            "val_size": len(dataset.val) if dataset.val is not None else 0,
            "synthetic_size": config.synthetic_size if dataset.name == "synthetic" else None,
        },
    ).save(out)
    logger.finish(test_eval.accuracy, test_eval.loss, train_eval.accuracy, training_time_s, out)
    if config.fold:
        fold_run(out, data_dir=config.data_dir, test=dataset.test)
    return out
