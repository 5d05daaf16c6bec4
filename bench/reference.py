"""The source tutorials' latency figures for `cs231n_complex` at batch 64, and ratios against them.

"Measured" figures were timed by the tutorial's own notebook; "stated" ones are what its text
claims. All are for one batch of 64 CIFAR-10 images through the CS231n complex_model.
"""

from __future__ import annotations

from dataclasses import dataclass

REFERENCE_MODEL = "cs231n_complex"
REFERENCE_BATCH_SIZE = 64


@dataclass(frozen=True)
class ReferenceFigure:
    key: str
    label: str
    low_ms: float
    high_ms: float
    device: str
    how: str  # "measured" or "stated"

    def speedup(self, measured_ms: float) -> tuple[float, float]:
        """(low, high): how many times faster the measurement is than this figure's range."""
        return self.low_ms / measured_ms, self.high_ms / measured_ms


TUTORIAL_FIGURES = (
    ReferenceFigure("tutorial_cpu_measured", "tutorial CPU, measured", 115.0, 118.0, "cpu", "measured"),
    ReferenceFigure("tutorial_dual_core_stated", "dual-core CPU, stated", 50.0, 80.0, "cpu", "stated"),
    ReferenceFigure("tutorial_gpu_stated", "GPU, stated", 2.0, 5.0, "cuda", "stated"),
)


@dataclass(frozen=True)
class Comparison:
    model: str
    backend: str
    device: str
    p50_ms: float
    speedups: dict[str, tuple[float, float]]  # figure key → (low, high)


def speedups(measured_ms: float) -> dict[str, tuple[float, float]]:
    return {figure.key: figure.speedup(measured_ms) for figure in TUTORIAL_FIGURES}


def compare(records: list) -> list[Comparison]:
    """Every batch-64 point beside every tutorial figure (ratios > 1: we are faster)."""
    return [
        Comparison(r.model, r.backend, r.device, r.p50_ms, speedups(r.p50_ms))
        for r in records
        if r.batch_size == REFERENCE_BATCH_SIZE and r.p50_ms > 0
    ]


def format_speedup(low: float, high: float) -> str:
    low_text, high_text = f"{low:.1f}", f"{high:.1f}"
    return f"{low_text}×" if low_text == high_text else f"{low_text}–{high_text}×"
