"""What every exporter converts from: a folded inference SavedModel, never the training graph.

Built from a run (`ExportSource.from_run`, or `load_source`, which refolds the run when its
folded SavedModel is missing or older than `model.keras`, and reads the run's real test images
and, for int8 calibration, its training images), or directly from a folded model and the
images to check and calibrate it on (`ExportSource.from_model`, for models that have no run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import tensorflow as tf

from cnnserve.contracts.names import INPUT_NAME, LOGITS, PROBABILITIES, SERVING_SIGNATURE
from cnnserve.contracts.parity import PARITY_IMAGES
from cnnserve.contracts.run_dir import (
    FOLDED_DIR,
    MODEL_FILE,
    FoldSection,
    RunInfo,
    load_run_info,
    read_fold_section,
)
from cnnserve.training.api import Split, fold_run, fold_saved_run, load_split, run_batched


@dataclass(frozen=True, eq=False)
class ExportSource:
    """The folded model, its SavedModel and the images exports are checked (and calibrated) on.

    `test` and `train` are the given splits, or the run's own, read on first use; so is the
    folded Keras model (rebuilt from RUN/model.keras) when it is not given."""

    run_dir: Path  # the run, or for a model without one the folder its SavedModel is in
    info: RunInfo
    savedmodel_dir: Path
    fold: FoldSection | None = None  # the run's fold section; None for a model without a run
    data_dir: Path | None = None
    parity_images: int = PARITY_IMAGES
    given_test: Split | None = field(default=None, repr=False)
    given_train: Split | None = field(default=None, repr=False)
    given_folded_model: object | None = field(default=None, repr=False)  # a keras.Model
    _reference: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def from_run(
        cls, run_dir: Path, data_dir: Path | None = None, parity_images: int = PARITY_IMAGES
    ) -> ExportSource:
        """The run's folded SavedModel and fold section as they are on disk (see `load_source`)."""
        run_dir = Path(run_dir)
        return cls(run_dir, load_run_info(run_dir), run_dir / FOLDED_DIR, read_fold_section(run_dir),
                   data_dir, parity_images)  # fmt: skip

    @classmethod
    def from_model(
        cls,
        info: RunInfo,
        savedmodel_dir: Path,
        folded_model: object,
        test: Split,
        train: Split,
        parity_images: int = PARITY_IMAGES,
    ) -> ExportSource:
        """A folded model without a run: `savedmodel_dir` is its `save_inference_savedmodel`,
        `test` the images exports are checked on, `train` the int8 calibration images."""
        return cls(savedmodel_dir.parent, info, savedmodel_dir, None, None, parity_images,
                   test, train, folded_model)  # fmt: skip

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.info.input_shape)  # type: ignore[return-value]

    @property
    def input_spec(self) -> tf.TensorSpec:
        return tf.TensorSpec([None, *self.input_shape], tf.uint8, name=INPUT_NAME)

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
            return {LOGITS: outputs[LOGITS], PROBABILITIES: outputs[PROBABILITIES]}

        return serve

    @cached_property
    def predict_logits(self) -> Callable[[np.ndarray], np.ndarray]:
        serve = self.serving_function()
        return lambda images: serve(tf.constant(images))[LOGITS].numpy()

    def reference_logits(self, batch: int) -> np.ndarray:
        """The folded model's logits on the parity images, run at this batch size."""
        if batch not in self._reference:
            images = self.test.images[: self.parity_images]
            self._reference[batch] = run_batched(self.predict_logits, images, batch)
        return self._reference[batch]

    @cached_property
    def folded_model(self):
        """The folded Keras model, for exporters that must trace the graph again (TFLite's LRN)."""
        if self.given_folded_model is not None:
            return self.given_folded_model
        return fold_saved_run(self.run_dir)

    @cached_property
    def has_lrn(self) -> bool:
        """Whether the folded graph contains TensorFlow's LRN op."""
        graph = self.serving.graph.as_graph_def()
        nodes = [*graph.node, *(node for function in graph.library.function for node in function.node_def)]
        return any(node.op == "LRN" for node in nodes)

    @cached_property
    def test(self) -> Split:
        return (
            self.given_test
            if self.given_test is not None
            else load_split(self.run_dir, "test", self.data_dir)
        )

    @cached_property
    def train(self) -> Split:
        if self.given_train is not None:
            return self.given_train
        return load_split(self.run_dir, "train", self.data_dir)

    @cached_property
    def test_accuracy(self) -> float:
        """The folded model's accuracy on the test split: the fold's record for a run, measured
        on the given test images otherwise."""
        if self.fold is not None:
            return self.fold.test_accuracy
        logits = run_batched(self.predict_logits, self.test.images, 256)
        return float(np.mean(logits.argmax(axis=1) == self.test.labels))


def load_source(
    run_dir: Path, data_dir: Path | None = None, parity_images: int = PARITY_IMAGES
) -> ExportSource:
    """The run's folded SavedModel; folds first (printing the table) when it is missing or stale."""
    run_dir = Path(run_dir)
    source = ExportSource.from_run(run_dir, data_dir, parity_images)
    saved = source.savedmodel_dir / "saved_model.pb"
    stale = (
        not saved.is_file()
        or source.fold is None
        or (run_dir / MODEL_FILE).stat().st_mtime > saved.stat().st_mtime
    )
    if stale:
        fold_run(run_dir, data_dir=data_dir, parity_images=parity_images)
        source = ExportSource.from_run(run_dir, data_dir, parity_images)
    assert source.fold is not None
    return source
