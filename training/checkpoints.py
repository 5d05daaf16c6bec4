"""Checkpoints in RUN/checkpoints/ and the training state a resumed run continues from.

Each checkpoint is one folder, `step-<N>/`, holding the weights with the optimizer's state
(`model.save_weights` includes the optimizer's iteration count and moments, so the learning-rate
schedule resumes where it was) and `state.json`: the step, the finished epochs, their history
and timings. A folder is written under a temporary name and renamed when complete, so a run
killed at any instant leaves only whole checkpoints. The data order needs no state: the
training stream is a function of the seed and the step (see `pipeline.training_pipeline`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras

from cnnserve.contracts.errors import CnnserveError

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"
WEIGHTS_FILE = "model.weights.h5"
KEEP = 2


@dataclass(frozen=True)
class TrainState:
    """Where a run stands: optimizer steps done, epochs finished and what they logged."""

    step: int = 0
    epochs_done: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    epoch_times_s: list[float] = field(default_factory=list)
    validation_times_s: list[float] = field(default_factory=list)
    training_time_s: float = 0.0


def _step_dirs(run_dir: Path) -> list[Path]:
    root = run_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))


def save_checkpoint(run_dir: Path, model: keras.Model, state: TrainState) -> Path:
    root = run_dir / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:09d}"
    for stale in root.glob(".staging-*"):  # left by a run killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    staging = root / f".staging-{state.step:09d}"
    staging.mkdir()
    model.save_weights(staging / WEIGHTS_FILE)
    (staging / STATE_FILE).write_text(json.dumps(asdict(state), indent=1) + "\n")
    if final.exists():  # the epoch's last step: the epoch-end state supersedes the step one
        shutil.rmtree(final)
    os.replace(staging, final)
    for old in _step_dirs(run_dir)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> tuple[Path, TrainState] | None:
    dirs = _step_dirs(run_dir)
    if not dirs:
        return None
    path = dirs[-1]
    try:
        state = TrainState(**json.loads((path / STATE_FILE).read_text()))
    except (json.JSONDecodeError, TypeError) as error:
        raise CnnserveError(
            f"{path / STATE_FILE} is damaged ({error}); delete {path} to resume from the one before"
        ) from None
    return path, state


def restore_checkpoint(model: keras.Model, path: Path) -> None:
    """Loads weights and optimizer state into a compiled model of the same architecture."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(path / WEIGHTS_FILE)


class TrainingRecord(keras.callbacks.Callback):
    """Accumulates the resumable state across fit calls and sessions; optionally checkpoints.

    Reads the epoch logs, so it must come after the callbacks that add to them (validation).
    """

    def __init__(
        self,
        state: TrainState,
        run_dir: Path | None,
        every_steps: int | None = None,
        state_path: Path | None = None,
        validation_seconds: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.step = state.step
        self.epochs_done = state.epochs_done
        self.history = {key: list(values) for key, values in state.history.items()}
        self.epoch_times_s = list(state.epoch_times_s)
        self.validation_times_s = list(state.validation_times_s)
        self._previous_time_s = state.training_time_s
        self._session_started = time.perf_counter()
        self._epoch_started = 0.0
        self.run_dir = run_dir
        self.every_steps = every_steps
        self.state_path = state_path
        # Filled by the validation callback that runs before this one at each epoch's end.
        self.validation_seconds = validation_seconds if validation_seconds is not None else []

    @property
    def training_time_s(self) -> float:
        return self._previous_time_s + time.perf_counter() - self._session_started

    def state(self) -> TrainState:
        return TrainState(
            self.step, self.epochs_done, self.history, self.epoch_times_s,
            self.validation_times_s, self.training_time_s,
        )  # fmt: skip

    def save(self) -> None:
        if self.run_dir is not None:
            save_checkpoint(self.run_dir, self.model, self.state())
        if self.state_path is not None:  # beside a weights backup someone else writes
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            staging = self.state_path.with_suffix(".staging")
            staging.write_text(json.dumps(asdict(self.state())) + "\n")
            os.replace(staging, self.state_path)

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.step += 1
        if self.every_steps and self.step % self.every_steps == 0:
            self.save()

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.epochs_done = epoch + 1
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.epoch_times_s.append(time.perf_counter() - self._epoch_started)
        if "val_loss" in (logs or {}) and self.validation_seconds:
            self.validation_times_s.append(self.validation_seconds[-1])
        self.save()
