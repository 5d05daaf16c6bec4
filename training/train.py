"""`cnnserve train`: train a zoo model on a dataset and write a run directory.

Keras `fit` runs the loop so BatchNorm's moving averages are updated by the framework itself
(the trap the source documents warn about); evaluation always runs in inference mode.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cnnserve import __version__
from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.run_dir import METRICS_FILE, MODEL_FILE, RunInfo, RunProvenance
from cnnserve.training import report
from cnnserve.training.checkpoints import TrainingRecord, TrainState, latest_checkpoint, restore_checkpoint
from cnnserve.training.data import Dataset, load_dataset
from cnnserve.training.distribute import (
    MODES,
    Cluster,
    backup_callback,
    distributed_model,
    make_cluster,
    shard_by_data,
)
from cnnserve.training.fold_run import fold_run
from cnnserve.training.layers import MeanImageSubtraction
from cnnserve.training.loop import StepLimit, plan_segments, run_segments
from cnnserve.training.models import ModelSpec, count_params, get_spec
from cnnserve.training.pipeline import training_pipeline
from cnnserve.training.progress import EpochLogger
from cnnserve.training.tensorboard import RunTensorBoard, write_images
from cnnserve.training.tutorial_figures import comparison
from cnnserve.training.validation import ServedValidation, ServingCopy, statistics_label

EVAL_BATCH_SIZE = 256
TRAIN_ACCURACY_SAMPLE = 10_000
TRAIN_CONFIG_FILE = "train_config.json"
# What a collective raises on the survivors when a worker dies or restarts.
LOST_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
    tf.errors.DeadlineExceededError,
    tf.errors.InternalError,
)
BACKUP_DIR = "backup"
BACKUP_STATE_FILE = "cnnserve_state.json"


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
    # Train on the first N training images only (quick experiments, tests).
    train_size: int | None = None
    # Batches of 256 training images over which BN statistics are recomputed after training.
    precise_bn_batches: int = 20
    # Fold BatchNorm into RUN/inference.savedmodel at the end, as `cnnserve fold RUN` would.
    fold: bool = True
    overwrite: bool = False
    show_progress: bool = True
    # Also checkpoint every K steps (every epoch always); RUN/checkpoints/.
    checkpoint_every_steps: int | None = None
    distribute: str = "none"

    def __post_init__(self) -> None:
        if self.precise_bn_batches < 0:
            raise CnnserveError(f"--precise-bn-batches must be >= 0, received {self.precise_bn_batches}")
        for name in ("epochs", "steps", "batch_size", "train_size", "checkpoint_every_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise CnnserveError(f"--{name.replace('_', '-')} must be >= 1, received {value}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise CnnserveError(f"--lr must be > 0, received {self.learning_rate}")
        if self.epochs is not None and self.steps is not None:
            raise CnnserveError("give --epochs or --steps, not both")
        if self.distribute not in MODES:
            raise CnnserveError(
                f"--distribute must be one of {', '.join(MODES)}, received {self.distribute!r}"
            )


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


def save_train_config(config: TrainConfig) -> None:
    raw = {f.name: getattr(config, f.name) for f in fields(config)}
    raw = {key: str(value) if isinstance(value, Path) else value for key, value in raw.items()}
    (config.out / TRAIN_CONFIG_FILE).write_text(json.dumps(raw, indent=2) + "\n")


def resume_config(run_dir: Path, show_progress: bool = True) -> TrainConfig:
    """The configuration a run was started with, to continue it (`cnnserve train --resume RUN`)."""
    path = run_dir / TRAIN_CONFIG_FILE
    if not path.is_file():
        raise CnnserveError(
            f"{run_dir} has no {TRAIN_CONFIG_FILE}: not a run started by 'cnnserve train', nothing to resume"
        )
    try:
        raw = json.loads(path.read_text())
        for key in ("out", "data_dir"):
            raw[key] = Path(raw[key]) if raw.get(key) else None
        raw.update(out=run_dir, overwrite=False, show_progress=show_progress)
        return TrainConfig(**raw)
    except (json.JSONDecodeError, TypeError) as error:
        raise CnnserveError(f"{path} is damaged ({error}); start the run again") from None


def _load(config: TrainConfig, spec: ModelSpec) -> Dataset:
    dataset = load_dataset(
        config.dataset, config.data_dir, config.val_size, synthetic_shape=spec.input_shape,
        synthetic_size=config.synthetic_size, seed=config.seed,
    )  # fmt: skip
    if config.train_size is not None:
        if config.train_size > len(dataset.train):
            raise CnnserveError(
                f"--train-size {config.train_size} exceeds the {len(dataset.train):,} training images"
            )
        dataset = replace(dataset, train=dataset.train.take(slice(0, config.train_size)))
    _check_shapes(spec, dataset)
    return dataset


def _keras_backup_epoch(backup: Path) -> int:
    """The epoch Keras's BackupAndRestore will restart at (0 without a backup)."""
    metadata = backup / "training_metadata.json"
    return int(json.loads(metadata.read_text())["epoch"]) if metadata.is_file() else 0


def _starting_state(config: TrainConfig, cluster: Cluster, resume: bool, backup: Path) -> TrainState:
    """Prepares RUN for a fresh run, or finds the state a resumed or restarted run continues."""
    out = config.out
    if resume:
        if cluster.mode == "multiworker":
            raise CnnserveError(
                "--resume is for single-process runs; a multi-worker run resumes from RUN/backup by "
                "restarting the same command"
            )
        found = latest_checkpoint(out)
        if found is None:
            raise CnnserveError(f"{out} has no checkpoint to resume from; start it again with --overwrite")
        return found[1]
    if cluster.mode == "multiworker" and _keras_backup_epoch(backup) > 0:
        state_path = backup / BACKUP_STATE_FILE
        state = TrainState(**json.loads(state_path.read_text())) if state_path.is_file() else TrainState()
        return state  # a restarted worker: BackupAndRestore brings the weights back
    if cluster.is_chief:
        _prepare_out_dir(out, config.overwrite)
        save_train_config(config)
    return TrainState()


def compile_for_training(
    model: keras.Model, spec: ModelSpec, learning_rate: float, jit_compile: bool | str = "auto"
):
    """Compiles with the source's optimizer, schedule and loss; returns the loss function.

    Keras's "auto" uses XLA on GPUs only; `cnnserve bench train` measures both on CPUs."""
    loss = (
        sparse_hinge if spec.defaults.loss == "hinge"
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )  # fmt: skip
    model.compile(
        optimizer=_optimizer(spec, learning_rate), loss=loss, metrics=["accuracy"], jit_compile=jit_compile
    )
    return loss


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Trains (or continues training), evaluates and writes the run directory; returns its path."""
    cluster = make_cluster(config.distribute)  # before TensorFlow's first operation
    spec = get_spec(config.model)
    dataset = _load(config, spec)
    schedule = resolve_schedule(spec, config, len(dataset.train))
    out = config.out
    backup = out / BACKUP_DIR
    state = _starting_state(config, cluster, resume, backup)

    keras.utils.set_random_seed(config.seed)
    template = spec.build()
    for layer in template.layers:
        if isinstance(layer, MeanImageSubtraction):
            layer.set_mean(dataset.train.images)
    if cluster.strategy is None:
        model = template
        loss = compile_for_training(model, spec, schedule.learning_rate)
    else:
        model = distributed_model(template, cluster)
        with cluster.strategy.scope():
            loss = compile_for_training(model, spec, schedule.learning_rate)

    serving = ServingCopy(spec.build, dataset.train.images, config.precise_bn_batches, config.seed)
    statistics = statistics_label(template, config.precise_bn_batches)
    has_val = dataset.val is not None and len(dataset.val) > 0
    validation = ServedValidation(serving, dataset.val, loss) if has_val and cluster.is_chief else None
    logger = EpochLogger(
        schedule.epochs, schedule.steps_per_epoch, schedule.batch_size, show_progress=config.show_progress,
        validation_seconds=validation.seconds if validation else None,
    )  # fmt: skip
    logger.announce(spec, dataset, schedule, count_params(template), statistics)
    if cluster.strategy is not None:
        logger.console.print(
            f"--distribute {cluster.mode}: worker {cluster.worker_index} of {cluster.num_workers}, "
            f"{cluster.replicas} replica(s), global batch {schedule.batch_size}"
        )

    callbacks: list[keras.callbacks.Callback] = []
    if cluster.mode == "multiworker":
        start_epoch = _keras_backup_epoch(backup)
        state = _truncated(state, start_epoch, schedule)
        segments = plan_segments(schedule.steps_per_epoch, schedule.epochs, schedule.total_steps, state.step)
        if start_epoch:
            logger.console.print(f"resuming at epoch {start_epoch + 1} from the backup in {backup}")
        # Keras restores the weights; the chief's record rides along in the same folder.
        state_path = backup / BACKUP_STATE_FILE if cluster.is_chief else None
        record = TrainingRecord(state, None, state_path=state_path,
                                validation_seconds=validation.seconds if validation else None)  # fmt: skip
        callbacks.append(backup_callback(cluster, str(backup)))
    else:
        if resume:
            path = latest_checkpoint(out)[0]  # type: ignore[index]
            restore_checkpoint(model, path)
            logger.console.print(f"resuming {out} at step {state.step} from {path.name}")
        segments = plan_segments(schedule.steps_per_epoch, schedule.epochs, schedule.total_steps, state.step)
        record = TrainingRecord(state, out, every_steps=config.checkpoint_every_steps,
                                validation_seconds=validation.seconds if validation else None)  # fmt: skip
    callbacks = [
        StepLimit(schedule.total_steps, state.step),
        *([validation] if validation else []),
        *([RunTensorBoard(out)] if cluster.is_chief else []),
        logger,
        record,  # after the callbacks that add to the epoch logs
        *callbacks,  # BackupAndRestore saves after the record
    ]

    def stream(start_step: int):
        data, _ = training_pipeline(dataset.train, schedule.batch_size, config.seed, start_step)
        return shard_by_data(data) if cluster.mode == "multiworker" else data

    try:
        run_segments(model, segments, stream, callbacks)
    except LOST_PEER_ERRORS as error:
        if cluster.mode != "multiworker":
            raise
        reason = str(error).strip().splitlines()[0]
        raise CnnserveError(
            f"worker {cluster.worker_index}: training stopped because a worker was lost ({reason}); "
            f"restart every worker with the same command and they resume from {backup}"
        ) from None
    if not cluster.is_chief:
        return out
    _finish(config, spec, dataset, schedule, serving, statistics, record, logger, model)
    if config.fold:
        fold_run(out, data_dir=config.data_dir, test=dataset.test)
    return out


def _truncated(state: TrainState, epochs: int, schedule: Schedule) -> TrainState:
    """The record as of `epochs` finished epochs (the record may be one epoch ahead of Keras)."""
    return TrainState(
        step=min(epochs * schedule.steps_per_epoch, schedule.total_steps),
        epochs_done=epochs,
        history={key: values[:epochs] for key, values in state.history.items()},
        epoch_times_s=state.epoch_times_s[:epochs],
        validation_times_s=state.validation_times_s[:epochs],
        training_time_s=state.training_time_s,
    )


def _finish(
    config: TrainConfig,
    spec: ModelSpec,
    dataset: Dataset,
    schedule: Schedule,
    serving: ServingCopy,
    statistics: str,
    record: TrainingRecord,
    logger: EpochLogger,
    trained: keras.Model,
) -> None:
    """The served model (trained weights, final BN statistics), its evaluation and the run files."""
    training_time_s = record.training_time_s
    precise_bn_images = serving.refresh(trained)  # exactly what each epoch's validation measured
    if precise_bn_images:
        logger.console.print(f"BatchNorm statistics recomputed over {precise_bn_images:,} training images")
    model = serving.model
    test_eval = report.evaluate_logits(
        serving.logits(dataset.test.images), dataset.test.labels, dataset.class_names
    )
    train_sample = dataset.train.take(slice(0, TRAIN_ACCURACY_SAMPLE))
    train_eval = report.evaluate_logits(
        serving.logits(train_sample.images), train_sample.labels, dataset.class_names
    )
    history = record.history
    metrics = {
        "model": spec.name,
        "dataset": dataset.name,
        "test_accuracy": test_eval.accuracy,
        "test_loss": test_eval.loss,
        "train_accuracy": train_eval.accuracy,
        "val_accuracy": (history.get("val_accuracy") or [None])[-1],
        "validation_statistics": statistics,
        "per_class_accuracy": test_eval.per_class_accuracy,
        "confusion_matrix": test_eval.confusion_matrix,
        "class_names": list(dataset.class_names),
        "training_time_s": training_time_s,
        "examples_per_s": record.step * schedule.batch_size / training_time_s,
        "steps": record.step,
        "epochs": record.epochs_done,
        "schedule": asdict(schedule),
        "history": history,
        "epoch_times_s": record.epoch_times_s,
        "validation_times_s": record.validation_times_s,
        "precise_bn_images": precise_bn_images,
        "distribute": config.distribute,
    }
    out = config.out
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    report.plot_confusion_matrix(test_eval, dataset.class_names, out / "confusion_matrix.png")
    report.plot_errors(test_eval, dataset.test, dataset.class_names, out / "errors.png")
    report.plot_history(history, out / "history.png", validation_label=f"validation ({statistics})")
    write_images(
        out, record.step,
        {"confusion_matrix": out / "confusion_matrix.png", "errors": out / "errors.png"},
    )  # fmt: skip
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
        steps=record.step,
        epochs=record.epochs_done,
        seed=config.seed,
        test_accuracy=test_eval.accuracy,
        cnnserve_version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        provenance=RunProvenance(
            data_dir=str(config.data_dir.resolve()) if config.data_dir else None,
            val_size=len(dataset.val) if dataset.val is not None else 0,
            synthetic_size=config.synthetic_size if dataset.name == "synthetic" else None,
            train_size=len(dataset.train),
            distribute=config.distribute,
        ),
    ).save(out)
    logger.finish(test_eval.accuracy, test_eval.loss, train_eval.accuracy, training_time_s, out)
    logger.console.print(
        comparison(spec.name, dataset.name, test_eval.accuracy, record.epochs_done, record.step)
    )
