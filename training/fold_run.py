"""`cnnserve fold RUN`: fold RUN/model.keras, verify it, write RUN/inference.savedmodel and the report.

The SavedModel is written to a staging directory and renamed into place, so a failed fold never
leaves a half-written model behind; RUN/export_report.json is replaced atomically, one section
at a time (`fold` here, `exports` from `cnnserve export`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cnnserve.contracts.names import INPUT_NAME, LOGITS, PROBABILITIES, SERVING_SIGNATURE
from cnnserve.contracts.run_dir import FOLDED_DIR, MODEL_FILE, load_run_info, make_readable, update_report
from cnnserve.training.data import Split, load_dataset
from cnnserve.training.fold import BatchNormFold, FoldError, fold_model
from cnnserve.training.fold_check import (
    PARITY_BATCH_SIZES,
    PARITY_IMAGES,
    PARITY_LIMIT,
    Parity,
    batchnorm_arithmetic,
    keras_predictor,
    run_batched,
    verify_fold,
)

# --------------------------------------------------------------------------- SavedModel


def save_inference_savedmodel(model: keras.Model, path: Path) -> None:
    """serving_default: uint8 `images` [-1, H, W, C] → float32 `logits`, `probabilities`."""
    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.uint8, name=INPUT_NAME)

    def serve(images):
        logits = model(images, training=False)
        return {LOGITS: logits, PROBABILITIES: tf.nn.softmax(logits, axis=-1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SERVING_SIGNATURE, fn=serve, input_signature=[spec])
    archive.write_out(str(path), verbose=False)


def _replace_dir(staging: Path, final: Path) -> None:
    """Moves `staging` to `final`, replacing a previous `final` only once the new one exists."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class FoldReport:
    run_dir: Path
    model: str
    savedmodel: Path
    folds: tuple[BatchNormFold, ...]
    parity: Parity
    test_accuracy: float  # folded model, full test split
    test_images: int
    layers_before: int
    layers_after: int
    bn_ops_before: int  # BN ops found on the trained model's inference graph

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "savedmodel": self.savedmodel.name,
            "layers_before": self.layers_before,
            "layers_after": self.layers_after,
            "batchnorm_ops_before": self.bn_ops_before,
            "batchnorm_ops_after": 0,
            "batchnorm": [asdict(fold) for fold in self.folds],
            "parity": {**asdict(self.parity), "limit": PARITY_LIMIT},
            "test_accuracy": self.test_accuracy,
            "test_images": self.test_images,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def load_test_split(run_dir: Path, data_dir: Path | None = None, train: bool = False) -> Split:
    """The run's real test images (or training images, for calibration)."""
    info = load_run_info(run_dir)
    if data_dir is None and info.extra.get("data_dir"):
        data_dir = Path(info.extra["data_dir"])
    synthetic = (
        {"synthetic_size": int(info.extra["synthetic_size"])} if info.extra.get("synthetic_size") else {}
    )
    dataset = load_dataset(
        info.dataset, data_dir=data_dir, synthetic_shape=tuple(info.input_shape), seed=info.seed, **synthetic
    )
    return dataset.train if train else dataset.test


def fold_run(
    run_dir: Path,
    *,
    data_dir: Path | None = None,
    parity_images: int = PARITY_IMAGES,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    print_table: bool = True,
    test: Split | None = None,
) -> FoldReport:
    """Folds RUN/model.keras into RUN/inference.savedmodel and writes RUN/export_report.json.

    Verifies on `parity_images` real test images (all when fewer) at each batch size and
    raises FoldError (a CnnserveError) naming the layer when the folded model disagrees.
    `test` is the run's test split when the caller already holds it (`cnnserve train`);
    otherwise it is read again from the run's dataset.
    """
    run_dir = Path(run_dir)
    info = load_run_info(run_dir)
    try:
        original = keras.models.load_model(run_dir / MODEL_FILE, compile=False)
    except (ValueError, TypeError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise FoldError(
            f"cannot load {run_dir / MODEL_FILE} ({first_line}); retrain with 'cnnserve train'"
        ) from None
    folded = fold_model(original)
    if test is None:
        test = load_test_split(run_dir, data_dir)
    images = test.images[:parity_images]
    parity = verify_fold(folded, original, images, batch_sizes)
    logits = run_batched(keras_predictor(folded.model), test.images, 256)
    accuracy = float(np.mean(logits.argmax(1) == test.labels))
    bn_names = [fold.layer for fold in folded.folds]
    staging = Path(tempfile.mkdtemp(prefix=f".{FOLDED_DIR}.", dir=run_dir))
    try:
        save_inference_savedmodel(folded.model, staging / "model")
        make_readable(staging / "model")
        _replace_dir(staging / "model", run_dir / FOLDED_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = FoldReport(
        run_dir=run_dir,
        model=info.model,
        savedmodel=run_dir / FOLDED_DIR,
        folds=tuple(folded.folds),
        parity=parity,
        test_accuracy=accuracy,
        test_images=len(test),
        layers_before=len(original.layers),
        layers_after=len(folded.model.layers),
        bn_ops_before=len(batchnorm_arithmetic(original, bn_names)),
    )
    update_report(run_dir, "fold", report.to_dict())
    if print_table:
        print_fold_table(report)
    return report


def print_fold_table(report: FoldReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"BatchNorm folding: {report.model} ({report.run_dir})")
    for column in ("BatchNorm", "ε", "destination", "why"):
        table.add_column(column, overflow="fold")
    for fold in report.folds:
        table.add_row(fold.layer, f"{fold.epsilon:g}", fold.destination, fold.reason)
    if not report.folds:
        table.add_row("(none)", "", "nothing to fold", "the model has no BatchNormalization")
    console = Console()
    console.print(table)
    parity = report.parity
    console.print(
        f"layers {report.layers_before} → {report.layers_after}; BatchNorm ops on the graph "
        f"{report.bn_ops_before} → 0; parity on {parity.images} test images, batch sizes "
        f"{', '.join(map(str, parity.batch_sizes))}: max |Δlogit| "
        f"{parity.max_abs_logit_diff:.2e} (limit {PARITY_LIMIT}), top-1 agreement "
        f"{parity.top1_agreement:.2%}; folded test accuracy {report.test_accuracy:.4f}; "
        f"wrote {report.savedmodel}"
    )
