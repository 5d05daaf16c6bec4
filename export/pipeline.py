"""`export_run`: run directory → one verified model version in the repository."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cnnserve import __version__
from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.model_repository import (
    PLATFORM_FILES,
    ModelConfig,
    Provenance,
    TensorSpec,
    VersionPolicy,
)
from cnnserve.contracts.parity import PARITY_IMAGES
from cnnserve.contracts.run_dir import load_run_info
from cnnserve.export.leftovers import Leftover, clean_repository
from cnnserve.export.repository import RepositoryError, VersionWriter
from cnnserve.export.run_report import ExportReport, FormatExport, record_export
from cnnserve.export.source import ExportSource, load_source
from cnnserve.export.tflite_export import CALIBRATION_IMAGES, QUANTIZE_CHOICES
from cnnserve.training.api import zoo_flops_per_image

FORMATS = {
    "onnx": "onnxruntime_onnx",
    "savedmodel": "tensorflow_savedmodel",
    "tflite": "tflite",
}
DEFAULT_REPOSITORY = Path("models")
ONNX_QUANTIZE = "int8"


@dataclass(frozen=True)
class ExportResult:
    format: str
    quantize: str | None
    model_name: str
    version: int
    path: Path  # the model file or directory inside the repository
    config: ModelConfig
    report: ExportReport  # what went into RUN/export_report.json
    leftovers: tuple[Leftover, ...] = ()  # what earlier, killed exports left, and what was done


def default_model_name(model: str, fmt: str, quantize: str | None) -> str:
    """ONNX (what the server runs) gets the model's own name, int8 ONNX `<model>_int8` (its own
    model beside the float one, so a client picks by name); other formats a suffix."""
    if fmt == "onnx":
        return f"{model}_{quantize}" if quantize else model
    return "_".join(part for part in (model, fmt, quantize) if part)


def validate_options(fmt: str, quantize: str | None) -> None:
    if fmt not in FORMATS:
        raise RepositoryError(f"unsupported format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise RepositoryError(
            f"unsupported quantization {quantize!r}; choose one of {', '.join(QUANTIZE_CHOICES)}"
        )
    if quantize is not None and fmt == "savedmodel":
        raise RepositoryError("--quantize applies to --format onnx (int8) and tflite, not savedmodel")
    if quantize is not None and fmt == "onnx" and quantize != ONNX_QUANTIZE:
        raise RepositoryError(f"--format onnx quantizes to int8 only, received --quantize {quantize}")


def _current_policy(model_dir: Path) -> VersionPolicy:
    """A re-export keeps the policy the model's config.json has (a new model: latest 1)."""
    try:
        return ModelConfig.load(model_dir).version_policy
    except CnnserveError:
        return VersionPolicy()


def export_run(
    run_dir: Path,
    fmt: str,
    *,
    quantize: str | None = None,
    repository: Path = DEFAULT_REPOSITORY,
    version: int | None = None,
    overwrite: bool = False,
    name: str | None = None,
    data_dir: Path | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    max_accuracy_drop_points: float = 1.0,
    max_batch_size: int = 64,
    max_queue_delay_ms: float = 0.0,
    parity_images: int = PARITY_IMAGES,
    source: ExportSource | None = None,
    version_policy: VersionPolicy | None = None,
) -> ExportResult:
    """Converts RUN's folded SavedModel to `fmt`, verifies it and writes
    `repository/<name>/<version>/` plus `config.json`, or nothing at all.

    `source` (from `load_source`) can be passed to export several formats from one load."""
    validate_options(fmt, quantize)
    run_dir = Path(run_dir)
    info = load_run_info(run_dir)
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RepositoryError(
            f"cannot write to {run_dir}: the export records itself in {run_dir}/export_report.json; "
            "make the run directory writable or export from a copy of it"
        )
    name = name or default_model_name(info.model, fmt, quantize)
    platform = FORMATS[fmt]
    leftovers = tuple(clean_repository(Path(repository)))
    writer = VersionWriter(Path(repository), name, version, overwrite, platform)  # fails fast
    if source is None:
        source = load_source(run_dir, data_dir, parity_images)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    provenance = {
        "source_run": str(run_dir.resolve()),
        "model": info.model,
        "dataset": info.dataset,
        "cnnserve_version": __version__,
        "created": created,
        "version": str(writer.version),
    }
    with writer:
        assert writer.staging is not None
        target = writer.staging / PLATFORM_FILES[platform]
        details = _export(fmt, quantize, source, target, provenance, calibration_images,
                          max_accuracy_drop_points)  # fmt: skip
        classes = len(info.class_names)
        config = ModelConfig(
            name=name,
            platform=platform,
            inputs=(TensorSpec("images", "uint8", (-1, *info.input_shape)),),
            outputs=(
                TensorSpec("logits", "float32", (-1, classes)),
                TensorSpec("probabilities", "float32", (-1, classes)),
            ),
            class_labels=tuple(info.class_names),
            max_batch_size=max_batch_size,
            max_queue_delay_ms=max_queue_delay_ms,
            version_policy=version_policy or _current_policy(writer.model_dir),
            source_run=str(run_dir.resolve()),
            test_accuracy=details.test_accuracy,
            provenance=Provenance(
                model=info.model,
                format=fmt,
                quantize=quantize,
                version=writer.version,
                dataset=info.dataset,
                created=created,
                parity=details.parity,
                float_test_accuracy=source.test_accuracy,
                # So `cnnserve bench server` can report GFLOP/s without building the model.
                flops_per_image=zoo_flops_per_image(info.model),
            ),
        )
        final = writer.commit(config)
    report = ExportReport(fmt, quantize, details, str(Path(repository).resolve()), name,  # type: ignore[arg-type]
                          writer.version, created)  # fmt: skip
    record_export(run_dir, report)
    return ExportResult(fmt, quantize, name, writer.version, final / target.name, config, report, leftovers)


def _export(fmt, quantize, source, target, provenance, calibration_images, max_drop) -> FormatExport:
    if fmt == "onnx":
        from cnnserve.export.onnx_export import export_onnx

        return export_onnx(source, target, provenance, quantize, calibration_images, max_drop)
    if fmt == "tflite":
        from cnnserve.export.tflite_export import export_tflite

        return export_tflite(source, target, quantize, calibration_images, max_drop)
    from cnnserve.export.savedmodel_export import export_savedmodel

    return export_savedmodel(source, target)
