"""What every exporter converts from: the run's folded inference SavedModel, never the training graph.

`load_source` refolds the run when its folded SavedModel is missing or older than `model.keras`,
and loads the real test images (and training images for int8 calibration) the run was made on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import tensorflow as tf

from cnnserve.contracts.names import SERVING_SIGNATURE
from cnnserve.contracts.run_dir import FOLDED_DIR, MODEL_FILE, REPORT_FILE, RunInfo, load_run_info
from cnnserve.training.data import Split
from cnnserve.training.fold_check import PARITY_IMAGES, run_batched
from cnnserve.training.fold_run import fold_run, load_test_split


@dataclass
class ExportSource:
    run_dir: Path
    info: RunInfo
    savedmodel_dir: Path
    fold_report: dict
    data_dir: Path | None = None
    parity_images: int = PARITY_IMAGES
    _reference: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.info.input_shape)  # type: ignore[return-value]

    @property
    def input_spec(self) -> tf.TensorSpec:
        return tf.TensorSpec([None, *self.input_shape], tf.uint8, name="images")

    @cached_property
    def loaded(self):
        # Kept alive here: the signature only holds weak references to the variables.
        return tf.saved_model.load(str(self.savedmodel_dir))

    @property
    def serving(self):
        return self.loaded.signatures[SERVING_SIGNATURE]

    def serving_function(self) -> tf.types.experimental.GenericFunction:
        """A tf.function over the folded signature with an explicit uint8 `images` spec."""
        serving = self.serving

        @tf.function(input_signature=[self.input_spec])
        def serve(images):
            outputs = serving(images=images)
            return {"logits": outputs["logits"], "probabilities": outputs["probabilities"]}

        return serve

    @cached_property
    def predict_logits(self) -> Callable[[np.ndarray], np.ndarray]:
        serve = self.serving_function()
        return lambda images: serve(tf.constant(images))["logits"].numpy()

    def reference_logits(self, batch: int) -> np.ndarray:
        """The folded model's logits on the parity images, run at this batch size."""
        if batch not in self._reference:
            images = self.test.images[: self.parity_images]
            self._reference[batch] = run_batched(self.predict_logits, images, batch)
        return self._reference[batch]

    @cached_property
    def folded_model(self):
        """The folded Keras model, for exporters that must trace the graph again (TFLite's LRN)."""
        import keras

        from cnnserve.training.fold import fold_model

        return fold_model(keras.models.load_model(self.run_dir / MODEL_FILE, compile=False)).model

    @cached_property
    def has_lrn(self) -> bool:
        """Whether the folded graph contains TensorFlow's LRN op."""
        graph = self.serving.graph.as_graph_def()
        nodes = [*graph.node, *(node for function in graph.library.function for node in function.node_def)]
        return any(node.op == "LRN" for node in nodes)

    @cached_property
    def test(self) -> Split:
        return load_test_split(self.run_dir, self.data_dir)

    @cached_property
    def train(self) -> Split:
        return load_test_split(self.run_dir, self.data_dir, train=True)

    @property
    def test_accuracy(self) -> float:
        return float(self.fold_report["test_accuracy"])


def load_source(
    run_dir: Path, data_dir: Path | None = None, parity_images: int = PARITY_IMAGES
) -> ExportSource:
    """The run's folded SavedModel; folds first (printing the table) when it is missing or stale."""
    run_dir = Path(run_dir)
    info = load_run_info(run_dir)
    savedmodel = run_dir / FOLDED_DIR
    report = _fold_section(run_dir)
    stale = (
        not (savedmodel / "saved_model.pb").is_file()
        or report is None
        or (run_dir / MODEL_FILE).stat().st_mtime > (savedmodel / "saved_model.pb").stat().st_mtime
    )
    if stale:
        fold_run(run_dir, data_dir=data_dir, parity_images=parity_images)
        report = _fold_section(run_dir)
    assert report is not None
    return ExportSource(run_dir, info, savedmodel, report, data_dir, parity_images)


def _fold_section(run_dir: Path) -> dict | None:
    path = run_dir / REPORT_FILE
    try:
        return json.loads(path.read_text()).get("fold") if path.is_file() else None
    except json.JSONDecodeError:
        return None
