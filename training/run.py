"""The run directory `cnnserve train` writes, and the record that marks it as a cnnserve run.

Layout of RUN/:
    run.json              RunInfo: model, dataset, class names, input shape, training config
    model.keras           the trained model (training graph, BatchNorm included)
    metrics.json          test accuracy/loss, per-class accuracy, confusion matrix, timings
    history.png, confusion_matrix.png, errors.png
    train_config.json     the TrainConfig, read by `cnnserve train --resume RUN`
    checkpoints/step-N/   the last two checkpoints (weights + optimizer state, state.json)
    tensorboard/          train/, validation/ and test/ event files
    backup/               multi-worker only, while training: Keras's BackupAndRestore
Later stages read a run only through `load_run_info`, so a folder that is not a run gets one
clear error instead of a stack trace from deep inside Keras.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnnserve.errors import CnnserveError

RUN_INFO_FILE = "run.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RunInfo:
    model: str
    dataset: str
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    optimizer: str
    learning_rate: float
    batch_size: int
    steps: int
    epochs: int
    seed: int
    test_accuracy: float | None = None
    cnnserve_version: str = ""
    created: str = ""
    extra: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def save(self, run_dir: Path) -> None:
        (run_dir / RUN_INFO_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


def load_run_info(run_dir: Path) -> RunInfo:
    """Reads RUN/run.json, or explains why RUN is not a cnnserve run."""
    if not run_dir.is_dir():
        raise CnnserveError(f"run directory {run_dir} does not exist (create one with 'cnnserve train')")
    path = run_dir / RUN_INFO_FILE
    if not path.is_file():
        raise CnnserveError(
            f"{run_dir} is not a cnnserve run: no {RUN_INFO_FILE} (create one with 'cnnserve train')"
        )
    try:
        raw = json.loads(path.read_text())
        raw["class_names"] = tuple(raw["class_names"])
        raw["input_shape"] = tuple(raw["input_shape"])
        info = RunInfo(**raw)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CnnserveError(f"{path} is damaged ({error}); retrain with 'cnnserve train'") from None
    if not (run_dir / MODEL_FILE).is_file():
        raise CnnserveError(f"{run_dir} has no {MODEL_FILE}; the run did not finish, retrain it")
    return info
