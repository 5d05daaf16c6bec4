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
clear error instead of a stack trace from deep inside Keras. The typed records here (`RunInfo`,
its `RunProvenance`, the report's `FoldSection`) read and write today's files key for key.
Standard library and the numpy-only parity record.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.parity import PARITY_LIMIT, Parity

RUN_INFO_FILE = "run.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
TRAIN_CONFIG_FILE = "train_config.json"
FOLDED_DIR = "inference.savedmodel"
REPORT_FILE = "export_report.json"
REPORT_LOCK = ".export_report.lock"
FORMAT_VERSION = 1
# The sections of RUN/export_report.json and their one writer each.
FOLD_SECTION = "fold"  # training: `cnnserve fold` (cnnserve.training.fold_run)
EXPORTS_SECTION = "exports"  # export: one entry per exported version (cnnserve.export.run_report)


@dataclass(frozen=True)
class RunProvenance:
    """How the run got its data: run.json's `extra` object, typed.

    Read by the later stages to load the same test and training images again."""

    data_dir: str | None = None  # --data-dir, resolved; None: the dataset's default location
    val_size: int = 0
    synthetic_size: int | None = None  # --synthetic-size, for the synthetic dataset only
    train_size: int = 0
    distribute: str = "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: object) -> RunProvenance | None:
        """None for an empty `extra` (a run written without one)."""
        if not isinstance(raw, Mapping):
            raise TypeError(f"extra: expected an object, received {raw!r}")
        if not raw:
            return None
        data_dir, synthetic = raw.get("data_dir"), raw.get("synthetic_size")
        return cls(
            data_dir=None if data_dir is None else str(data_dir),
            val_size=int(raw.get("val_size") or 0),
            synthetic_size=None if synthetic is None else int(synthetic),
            train_size=int(raw.get("train_size") or 0),
            distribute=str(raw.get("distribute") or "none"),
        )


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
    provenance: RunProvenance | None = None  # written as "extra" ({} when None)
    format_version: int = FORMAT_VERSION

    def save(self, run_dir: Path) -> None:
        extra = self.provenance.to_dict() if self.provenance is not None else {}
        fields = {key: value for key, value in asdict(self).items() if key != "format_version"}
        fields = {**fields, "extra": extra, "format_version": self.format_version}
        del fields["provenance"]
        (run_dir / RUN_INFO_FILE).write_text(json.dumps(fields, indent=2) + "\n")


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
        raw["provenance"] = RunProvenance.from_dict(raw.pop("extra", {}))
        info = RunInfo(**raw)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
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


# --------------------------------------------------------------------------- the fold section


class FoldKind(StrEnum):
    """Where a BatchNorm's per-channel affine went."""

    BACKWARD = "backward"  # into the conv/dense in front of it
    FORWARD = "forward"  # into the next conv/dense, through layers it commutes with
    AFFINE = "affine"  # kept as one per-channel multiply-add


@dataclass(frozen=True)
class BatchNormFold:
    """Where one BatchNorm went, and why: one entry of the fold section's `batchnorm` list."""

    layer: str
    kind: FoldKind
    destination: str  # "into conv1", "forward into fc1 through pool1, flatten", "kept as affine"
    reason: str
    epsilon: float
    target: str | None = None
    through: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {**asdict(self), "kind": self.kind.value, "through": list(self.through)}

    @classmethod
    def from_dict(cls, raw: Mapping) -> BatchNormFold:
        target = raw.get("target")
        return cls(
            layer=str(raw["layer"]),
            kind=FoldKind(raw["kind"]),
            destination=str(raw["destination"]),
            reason=str(raw["reason"]),
            epsilon=float(raw["epsilon"]),
            target=None if target is None else str(target),
            through=tuple(str(name) for name in raw.get("through", ())),
        )


@dataclass(frozen=True)
class FoldSection:
    """The `fold` section of RUN/export_report.json: what `cnnserve fold` did and verified."""

    model: str
    savedmodel: str  # folder name inside RUN
    layers_before: int
    layers_after: int
    batchnorm_ops_before: int  # BN ops found on the trained model's inference graph
    batchnorm: tuple[BatchNormFold, ...]
    parity: Parity  # folded against trained, on real test images
    test_accuracy: float  # folded model, full test split
    test_images: int
    created: str  # ISO 8601, UTC
    batchnorm_ops_after: int = 0
    parity_limit: str = PARITY_LIMIT

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "savedmodel": self.savedmodel,
            "layers_before": self.layers_before,
            "layers_after": self.layers_after,
            "batchnorm_ops_before": self.batchnorm_ops_before,
            "batchnorm_ops_after": self.batchnorm_ops_after,
            "batchnorm": [fold.to_dict() for fold in self.batchnorm],
            "parity": {**self.parity.to_dict(), "limit": self.parity_limit},
            "test_accuracy": self.test_accuracy,
            "test_images": self.test_images,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, raw: Mapping) -> FoldSection:
        return cls(
            model=str(raw["model"]),
            savedmodel=str(raw["savedmodel"]),
            layers_before=int(raw["layers_before"]),
            layers_after=int(raw["layers_after"]),
            batchnorm_ops_before=int(raw["batchnorm_ops_before"]),
            batchnorm=tuple(BatchNormFold.from_dict(entry) for entry in raw["batchnorm"]),
            parity=Parity.from_dict(raw["parity"]),
            test_accuracy=float(raw["test_accuracy"]),
            test_images=int(raw["test_images"]),
            created=str(raw["created"]),
            batchnorm_ops_after=int(raw.get("batchnorm_ops_after", 0)),
            parity_limit=str(raw["parity"].get("limit", PARITY_LIMIT)),
        )


def read_fold_section(run_dir: Path) -> FoldSection | None:
    """The fold section of RUN/export_report.json; None when the run was never folded or the
    section is damaged (the caller folds again)."""
    section = read_report(run_dir).get(FOLD_SECTION)
    try:
        return FoldSection.from_dict(section) if isinstance(section, Mapping) else None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
