import pytest

from cnnserve.bench.reference import TUTORIAL_FIGURES, compare, format_speedup
from tests.bench.sample_records import local_record


def test_figures_are_the_tutorials():
    ranges = {(f.low_ms, f.high_ms, f.device, f.how) for f in TUTORIAL_FIGURES}
    assert ranges == {
        (115.0, 118.0, "cpu", "measured"),
        (50.0, 80.0, "cpu", "stated"),
        (2.0, 5.0, "cuda", "stated"),
    }


def test_only_batch_64_is_compared_and_ratios_are_speedups():
    rows = compare([local_record(batch_size=1), local_record(batch_size=64, p50_ms=10.0)])
    (row,) = rows
    assert row.speedups["tutorial_cpu_measured"] == pytest.approx((11.5, 11.8))
    assert row.speedups["tutorial_gpu_stated"] == pytest.approx((0.2, 0.5))


def test_format_speedup():
    assert format_speedup(11.5, 11.8) == "11.5–11.8×"
    assert format_speedup(3.0, 3.01) == "3.0×"
