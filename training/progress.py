"""Training progress: a live progress bar, and per-epoch lines as the tutorials print them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import keras
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from cnnserve.training.data import Dataset
    from cnnserve.training.models import ModelSpec
    from cnnserve.training.train import Schedule


class EpochLogger(keras.callbacks.Callback):
    """A progress bar while an epoch runs (on a terminal), then one summary line per epoch."""

    def __init__(
        self,
        epochs: int,
        steps_per_epoch: int,
        batch_size: int,
        show_progress: bool = True,
        validation_seconds: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.console = Console(highlight=False, soft_wrap=True)
        # Filled by the validation callback that runs before this one at each epoch's end.
        self.validation_seconds = validation_seconds if validation_seconds is not None else []
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.steps_done = 0
        self.epoch_times_s: list[float] = []
        self._epoch_steps = 0
        self._epoch_started = 0.0
        self._progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.4f}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=not (show_progress and self.console.is_terminal),
        )
        self._task = None

    def announce(
        self, spec: ModelSpec, dataset: Dataset, schedule: Schedule, params: int, statistics: str
    ) -> None:
        val = len(dataset.val) if dataset.val is not None else 0
        self.console.print(
            f"Training {spec.name} ({params:,} parameters) on {dataset.name}: "
            f"{len(dataset.train):,} train / {val:,} validation / {len(dataset.test):,} test images"
        )
        self.console.print(
            f"{spec.defaults.optimizer} lr {schedule.learning_rate:g}, batch {schedule.batch_size}, "
            f"{schedule.epochs} epoch(s) of {schedule.steps_per_epoch} steps "
            f"({schedule.total_steps} steps)"
        )
        if val:
            self.console.print(f"validation after each epoch: the model as it will be served ({statistics})")

    def on_train_begin(self, logs=None) -> None:
        self._progress.start()

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._epoch_steps = 0
        self._epoch_started = time.perf_counter()
        self._task = self._progress.add_task(
            "train",
            total=self.steps_per_epoch,
            epoch=f"{epoch + 1}/{self.epochs}",
            loss=0.0,
            acc=0.0,
        )

    def on_train_batch_end(self, batch, logs=None) -> None:
        self._epoch_steps += 1
        self.steps_done += 1
        logs = logs or {}
        self._progress.update(
            self._task,
            advance=1,
            loss=float(logs.get("loss", 0.0)),
            acc=float(logs.get("accuracy", 0.0)),
        )

    def on_epoch_end(self, epoch, logs=None) -> None:
        logs = logs or {}
        validation_s = self.validation_seconds[-1] if "val_loss" in logs else 0.0
        elapsed = time.perf_counter() - self._epoch_started - validation_s
        self.epoch_times_s.append(elapsed)
        self._progress.remove_task(self._task)
        steps = max(self._epoch_steps, 1)
        line = (
            f"epoch {epoch + 1:>3}/{self.epochs}  loss {logs.get('loss', float('nan')):.4f}  "
            f"acc {logs.get('accuracy', float('nan')):.4f}"
        )
        if "val_loss" in logs:
            line += (
                f"  val_loss {logs['val_loss']:.4f}  val_acc {logs['val_accuracy']:.4f}"
                f" ({validation_s:.1f} s)"
            )
        line += (
            f"  {steps * self.batch_size / elapsed:,.0f} examples/s  {elapsed / steps:.3f} s/batch"
            f"  ({elapsed:.1f} s)"
        )
        self.console.print(line)

    def on_train_end(self, logs=None) -> None:
        self._progress.stop()

    def finish(
        self,
        test_accuracy: float,
        test_loss: float,
        train_accuracy: float,
        seconds: float,
        out: Path,
    ) -> None:
        self.console.print(
            f"test accuracy {test_accuracy:.2%} (loss {test_loss:.4f}); train accuracy in inference "
            f"mode {train_accuracy:.2%}; trained in {seconds:.1f} s"
        )
        self.console.print(
            f"wrote {out}/model.keras, metrics.json and plots: {out}/history.png, "
            f"{out}/confusion_matrix.png, {out}/errors.png, {out}/filters.png, {out}/feature_maps.png"
        )
