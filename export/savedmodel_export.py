"""Folded SavedModel → `model.savedmodel/`: the run's inference SavedModel, reloaded and verified."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnserve.contracts.names import OUTPUT_NAMES, SERVING_SIGNATURE
from cnnserve.export.source import ExportSource
from cnnserve.export.verify import ExportError, Parity, check_parity


@dataclass(frozen=True)
class SavedModelExport:
    path: Path
    parity: Parity
    test_accuracy: float  # the folded model's: the files are the folded SavedModel's own
    size_bytes: int = field(init=False)  # of the files as written, before they move into place

    def __post_init__(self) -> None:
        size = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        object.__setattr__(self, "size_bytes", size)

    # Nothing is converted or quantized: the fields the other formats report do not apply.
    @property
    def accuracy_drop_points(self) -> None:
        return None

    @property
    def float_test_accuracy(self) -> None:
        return None

    @property
    def nodes(self) -> None:
        return None

    @property
    def int8_ops(self) -> tuple[str, ...]:
        return ()

    @property
    def float_ops(self) -> tuple[str, ...]:
        return ()

    def to_dict(self) -> dict:
        return {"file": self.path.name, "bytes": self.size_bytes, "parity": self.parity.to_dict(),
                "test_accuracy": self.test_accuracy}  # fmt: skip


def export_savedmodel(source: ExportSource, path: Path) -> SavedModelExport:
    import tensorflow as tf

    shutil.copytree(source.savedmodel_dir, path)
    loaded = tf.saved_model.load(str(path))
    if SERVING_SIGNATURE not in loaded.signatures:
        raise ExportError(f"{path} has no {SERVING_SIGNATURE} signature; refold the run")
    serve = loaded.signatures[SERVING_SIGNATURE]
    inputs = serve.structured_input_signature[1]
    if list(inputs) != ["images"] or inputs["images"].dtype != tf.uint8:
        raise ExportError(f"{path}: serving_default takes {inputs}, expected uint8 images")
    if sorted(serve.structured_outputs) != sorted(OUTPUT_NAMES):
        raise ExportError(f"{path}: serving_default returns {sorted(serve.structured_outputs)}")

    def predict(images: np.ndarray) -> np.ndarray:
        # Through `loaded`: a signature alone only holds weak references to the variables.
        signature = loaded.signatures[SERVING_SIGNATURE]
        return signature(images=tf.constant(images))["logits"].numpy()

    return SavedModelExport(path, check_parity("SavedModel", source, predict), source.test_accuracy)
