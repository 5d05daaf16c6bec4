import numpy as np
import pytest

from cnnserve.bench.stats import summarize_ns


def test_percentiles_on_known_samples():
    # 1..100 ms: linear interpolation puts p50 at 50.5, p90 at 90.1, p99 at 99.01.
    summary = summarize_ns(np.arange(1, 101) * 1_000_000)
    assert summary.count == 100
    assert summary.p50_ms == pytest.approx(50.5)
    assert summary.p90_ms == pytest.approx(90.1)
    assert summary.p95_ms == pytest.approx(95.05)
    assert summary.p99_ms == pytest.approx(99.01)
    assert summary.min_ms == 1.0 and summary.max_ms == 100.0
    assert summary.mean_ms == pytest.approx(50.5)
    assert summary.total_s == pytest.approx(5.05)


def test_single_sample_is_every_percentile():
    summary = summarize_ns([2_500_000])
    assert summary.p50_ms == summary.p99_ms == summary.mean_ms == 2.5


def test_percentiles_do_not_depend_on_order():
    samples = np.random.default_rng(0).integers(1, 10**9, 1001)
    assert summarize_ns(samples) == summarize_ns(np.sort(samples))


def test_throughput_is_items_over_total_time():
    # Four calls of 0.25 s each, 64 images per call: 256 images in 1 s.
    summary = summarize_ns([250_000_000] * 4)
    assert summary.per_second(64) == pytest.approx(256.0)


def test_no_samples_is_an_error():
    with pytest.raises(ValueError, match="no latency samples"):
        summarize_ns([])
