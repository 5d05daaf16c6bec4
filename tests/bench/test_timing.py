import pytest

from cnnserve.bench.timing import RepeatPolicy, measure
from cnnserve.contracts.errors import CnnserveError


class FakeClock:
    """Advances by `step_ns` per call to the work function, never by itself."""

    def __init__(self, step_ns: int) -> None:
        self.now = 0
        self.step_ns = step_ns
        self.calls = 0

    def __call__(self) -> int:
        return self.now

    def work(self) -> None:
        self.calls += 1
        self.now += self.step_ns


def test_min_count_dominates_for_slow_calls():
    clock = FakeClock(step_ns=500_000_000)  # 0.5 s a call: 1 s is reached after 2 calls
    policy = RepeatPolicy(warmup_runs=3, min_runs=10, min_time_s=1.0)
    samples = measure(clock.work, policy, clock)
    assert len(samples) == 10
    assert clock.calls == 13  # warm-up calls run but are not timed
    assert set(samples.tolist()) == {500_000_000}


def test_min_time_dominates_for_fast_calls():
    clock = FakeClock(step_ns=1_000_000)  # 1 ms a call
    samples = measure(clock.work, RepeatPolicy(warmup_runs=0, min_runs=5, min_time_s=0.2), clock)
    assert len(samples) == 200


def test_time_cap_stops_a_slow_point_after_one_run():
    clock = FakeClock(step_ns=5_000_000_000)
    policy = RepeatPolicy(warmup_runs=0, min_runs=10, min_time_s=1.0, max_time_s=2.0)
    assert len(measure(clock.work, policy, clock)) == 1


def test_count_cap():
    clock = FakeClock(step_ns=1)
    policy = RepeatPolicy(warmup_runs=0, min_runs=2, min_time_s=1.0, max_runs=7)
    assert len(measure(clock.work, policy, clock)) == 7


def test_done_needs_both_minimums():
    policy = RepeatPolicy(min_runs=3, min_time_s=1.0)
    assert not policy.done(2, 2_000_000_000)
    assert not policy.done(5, 500_000_000)
    assert policy.done(3, 1_000_000_000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_runs": 0}, "--min-runs must be >= 1, received 0"),
        ({"warmup_runs": -1}, "--warmup-runs must be >= 0"),
        ({"min_time_s": 5.0, "max_time_s": 1.0}, "--max-time-s"),
    ],
)
def test_invalid_policy(kwargs, message):
    with pytest.raises(CnnserveError, match=message):
        RepeatPolicy(**kwargs)
