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
    inference.savedmodel/ the folded model (`cnnserve fold`, or `cnnserve train` at its end)
    export_report.json    `fold` (written by the fold) and `exports` (one entry per export)
Later stages read a run only through `load_run_info`, so a folder that is not a run gets one
clear error instead of a stack trace from deep inside Keras. Standard library only.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnnserve.contracts.errors import CnnserveError

RUN_INFO_FILE = "run.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
TRAIN_CONFIG_FILE = "train_config.json"
FOLDED_DIR = "inference.savedmodel"
REPORT_FILE = "export_report.json"
REPORT_LOCK = ".export_report.lock"
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


def make_readable(path: Path) -> None:
    """mkdtemp and NamedTemporaryFile create owner-only files; apply the umask as open() would."""
    mask = os.umask(0)
    os.umask(mask)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def write_json_atomic(path: Path, content: object) -> None:
    """Writes `content` as indented JSON beside `path` and renames it into place: a reader sees
    the old file or the new one, never half of one."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        handle.write(json.dumps(content, indent=2) + "\n")
    make_readable(Path(handle.name))
    Path(handle.name).replace(path)


def read_report(run_dir: Path) -> dict:
    """RUN/export_report.json as a dict ({} when missing or damaged: a report is rewritten, not trusted)."""
    path = run_dir / REPORT_FILE
    try:
        report = json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, OSError):
        return {}
    return report if isinstance(report, dict) else {}


def update_report(
    run_dir: Path, section: str, content: object = None, merge: Callable[[object], object] | None = None
) -> None:
    """Writes one section of RUN/export_report.json, keeping the others (atomic replace).

    `merge(old_section)` returns the new section (`content` replaces it otherwise). Writers
    hold RUN/.export_report.lock, so a fold and exports running side by side lose no entry."""
    with (run_dir / REPORT_LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        report = read_report(run_dir)
        report[section] = merge(report.get(section)) if merge is not None else content
        write_json_atomic(run_dir / REPORT_FILE, report)
