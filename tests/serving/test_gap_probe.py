"""The idle-gap probe: both sessions timed alternately after a gap, the clear winner named."""

from __future__ import annotations

import time

import pytest

from cnnserve.serving.gap_probe import CLEAR_WIN, GAP_S, GapProbe, probe_after_gap


def test_the_sessions_take_turns_each_after_a_gap_and_the_medians_are_theirs() -> None:
    events: list[str] = []

    def run(name: str, seconds: float):
        def go() -> None:
            events.append(name)
            time.sleep(seconds)

        return go

    probe = probe_after_gap(
        run("all", 0.004), run("one", 0.001), threads=2, runs=5, sleep=lambda s: events.append(f"gap {s}")
    )
    assert events == [f"gap {GAP_S}", "all", f"gap {GAP_S}", "one"] * 5
    assert 4000 <= probe.all_threads_us < 40000 and 1000 <= probe.one_thread_us < probe.all_threads_us
    assert probe.threads == 2 and probe.one_thread_wins


@pytest.mark.parametrize(
    ("one_thread_us", "wins"), [(100 * CLEAR_WIN - 1, True), (100 * CLEAR_WIN + 1, False), (120, False)]
)
def test_one_thread_wins_only_by_a_clear_margin(one_thread_us: float, wins: bool) -> None:
    """A tie keeps the main session alone: the one-thread one would be a second copy for nothing."""
    assert GapProbe(100.0, one_thread_us, 4).one_thread_wins is wins


def test_the_description_names_the_choice_and_both_figures() -> None:
    assert GapProbe(309.4, 260.2, 2).describe() == (
        "inline runs on one intra-op thread (after a 1 ms idle gap: 260 µs on one, 309 µs on 2)"
    )
    assert GapProbe(300.0, 800.0, 4).describe().startswith("inline runs on 4 intra-op threads (")
