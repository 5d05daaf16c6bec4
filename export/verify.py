"""Checks every exported artefact against the folded SavedModel it came from."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.parity import PARITY_BATCH_SIZES, PARITY_LIMIT, Parity
from cnnserve.export.source import ExportSource
from cnnserve.training.api import Split, run_batched

__all__ = ["ExportError", "Parity", "accuracy", "check_parity", "measure_parity"]


class ExportError(CnnserveError):
    """A converted model failed a check; nothing was written to the repository."""


def measure_parity(source: ExportSource, predict: Callable[[np.ndarray], np.ndarray]) -> Parity:
    """Logits of `predict` vs the folded SavedModel on real test images, batch sizes 1 and 256
    (the folded model's logits are computed once per batch size and reused across formats)."""
    images = source.test.images[: source.parity_images]
    pairs = (
        (source.reference_logits(batch), run_batched(predict, images, batch)) for batch in PARITY_BATCH_SIZES
    )
    return Parity.of(pairs, len(images), PARITY_BATCH_SIZES)


def check_parity(what: str, source: ExportSource, predict: Callable[[np.ndarray], np.ndarray]) -> Parity:
    parity = measure_parity(source, predict)
    if not parity.ok:
        raise ExportError(
            f"{what} model disagrees with the folded SavedModel: max |Δlogit| "
            f"{parity.max_abs_logit_diff:.3g} (limit {PARITY_LIMIT}), top-1 agreement "
            f"{parity.top1_agreement:.2%} on {parity.images} test images; nothing was written"
        )
    return parity


def accuracy(predict: Callable[[np.ndarray], np.ndarray], split: Split, batch: int = 256) -> float:
    logits = run_batched(predict, split.images, batch)
    return float(np.mean(logits.argmax(axis=1) == split.labels))
