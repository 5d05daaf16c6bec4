"""`cnnserve fold RUN`: fold RUN/model.keras, verify it, write RUN/inference.savedmodel and the
report's `fold` section (`FoldSection`, the one writer of that section).

The SavedModel is written to a staging directory and renamed into place, so a failed fold never
leaves a half-written model behind; RUN/export_report.json is replaced atomically, one section
at a time (`fold` here, `exports` from `cnnserve export`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np

from cnnserve.contracts.parity import PARITY_BATCH_SIZES, PARITY_IMAGES, PARITY_LIMIT, Parity
from cnnserve.contracts.run_dir import (
    FOLD_SECTION,
    FOLDED_DIR,
    MODEL_FILE,
    BatchNormFold,
    FoldSection,
    load_run_info,
    make_readable,
    update_report,
)
from cnnserve.training.data import Split
from cnnserve.training.fold import FoldError, fold_model
from cnnserve.training.fold_check import (
    batchnorm_arithmetic,
    keras_predictor,
    run_batched,
    verify_fold,
)
from cnnserve.training.fold_table import print_fold_table
from cnnserve.training.run_data import load_split
from cnnserve.training.savedmodel import replace_dir, save_inference_savedmodel


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

    def section(self) -> FoldSection:
        """What RUN/export_report.json records of this fold."""
        return FoldSection(
            model=self.model,
            savedmodel=self.savedmodel.name,
            layers_before=self.layers_before,
            layers_after=self.layers_after,
            batchnorm_ops_before=self.bn_ops_before,
            batchnorm=self.folds,
            parity=self.parity,
            test_accuracy=self.test_accuracy,
            test_images=self.test_images,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            parity_limit=PARITY_LIMIT,
        )

    def to_dict(self) -> dict:
        return self.section().to_dict()


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
    original = load_trained_model(run_dir)
    folded = fold_model(original)
    if test is None:
        test = load_split(run_dir, "test", data_dir)
    parity = verify_fold(folded, original, test.images[:parity_images], batch_sizes)
    logits = run_batched(keras_predictor(folded.model), test.images, 256)
    accuracy = float(np.mean(logits.argmax(1) == test.labels))
    bn_names = [fold.layer for fold in folded.folds]
    staging = Path(tempfile.mkdtemp(prefix=f".{FOLDED_DIR}.", dir=run_dir))
    try:
        save_inference_savedmodel(folded.model, staging / "model")
        make_readable(staging / "model")
        replace_dir(staging / "model", run_dir / FOLDED_DIR)
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
    update_report(run_dir, FOLD_SECTION, report.to_dict())
    if print_table:
        print_fold_table(report)
    return report


def load_trained_model(run_dir: Path) -> keras.Model:
    """RUN/model.keras, or one FoldError that says to retrain."""
    try:
        return keras.models.load_model(run_dir / MODEL_FILE, compile=False)
    except (ValueError, TypeError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise FoldError(
            f"cannot load {run_dir / MODEL_FILE} ({first_line}); retrain with 'cnnserve train'"
        ) from None


def fold_saved_run(run_dir: Path) -> keras.Model:
    """The folded Keras model of RUN/model.keras, built again (nothing written, nothing checked):
    for exporters that trace the folded graph another way than the SavedModel does."""
    return fold_model(load_trained_model(Path(run_dir))).model
