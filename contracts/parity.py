"""Logit parity: how an exported or folded model's logits must agree with the model it came from.

One tolerance for every stage (the fold, each export format, bench's checks) and the record the
reports and config.json carry. numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

MAX_ABS_LOGIT_DIFF = 1e-4
# float32 rounding grows with the logits' magnitude: an overfit model with |logit| ≈ 170 differs by
# 4e-4 from summation order alone. numpy.allclose's rule: |Δ| ≤ 1e-4 + 1e-5·|logit|.
REL_LOGIT_DIFF = 1e-5
PARITY_LIMIT = f"{MAX_ABS_LOGIT_DIFF:g} + {REL_LOGIT_DIFF:g}·|logit|"
# Verified on this many real test images, at each batch size (batch size against batch size:
# oneDNN picks a different summation order per batch size). The fold and export CLIs default to it.
PARITY_IMAGES = 1000
PARITY_BATCH_SIZES = (1, 256)


@dataclass(frozen=True)
class Parity:
    """Logit agreement between a reference and a candidate, over every batch size run."""

    images: int
    batch_sizes: tuple[int, ...]
    max_abs_logit_diff: float
    top1_agreement: float
    max_abs_logit: float = 0.0
    within_tolerance: bool = True  # every logit within MAX_ABS_LOGIT_DIFF + REL_LOGIT_DIFF·|logit|

    @property
    def ok(self) -> bool:
        return self.within_tolerance and self.top1_agreement == 1.0

    @classmethod
    def of(
        cls, pairs: Iterable[tuple[np.ndarray, np.ndarray]], images: int, batch_sizes: Sequence[int]
    ) -> Parity:
        """Parity over (reference, candidate) logit pairs, one pair per batch size."""
        worst, largest, agreement, within = 0.0, 0.0, 1.0, True
        for expected, got in pairs:
            expected, got = expected.astype(np.float64), got.astype(np.float64)
            diff = np.abs(got - expected)
            worst = max(worst, float(diff.max()))
            largest = max(largest, float(np.abs(expected).max()))
            within &= bool(np.all(diff <= MAX_ABS_LOGIT_DIFF + REL_LOGIT_DIFF * np.abs(expected)))
            agreement = min(agreement, float(np.mean(got.argmax(1) == expected.argmax(1))))
        return cls(images, tuple(batch_sizes), worst, agreement, largest, within)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping) -> Parity:
        """Reads a report's or config.json's parity (extra keys such as `limit` are ignored)."""
        return cls(
            images=int(raw["images"]),
            batch_sizes=tuple(int(b) for b in raw["batch_sizes"]),
            max_abs_logit_diff=float(raw["max_abs_logit_diff"]),
            top1_agreement=float(raw["top1_agreement"]),
            max_abs_logit=float(raw.get("max_abs_logit", 0.0)),
            within_tolerance=bool(raw.get("within_tolerance", True)),
        )
