"""scripts/pyspy_shares.py: per-function shares of a collapsed py-spy profile."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import pyspy_shares

PROFILE = [
    "main (a.py:1);run (b.py:10);handler (c.py:5) 6\n",
    "main (a.py:1);run (b.py:12) 3\n",  # the same function at another line is the same frame
    " 1\n",  # a sample py-spy could not attribute: in the total, in no function
]


def test_inclusive_and_self_shares_per_function():
    total, inclusive, own = pyspy_shares.shares(PROFILE)
    assert total == 10
    assert inclusive["main (a.py)"] == 9 and inclusive["run (b.py)"] == 9 and inclusive["handler (c.py)"] == 6
    assert own["handler (c.py)"] == 6 and own["run (b.py)"] == 3 and own["main (a.py)"] == 0


def test_the_report_prints_percent_of_all_samples(tmp_path, capsys):
    path = tmp_path / "server.txt"
    path.write_text("".join(PROFILE))
    assert pyspy_shares.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("10 samples") and " 90.0% main (a.py)" in out and " 60.0% handler (c.py)" in out


THREADED = [
    "thread (101): MainThread;main (a.py:1);handler (c.py:5) 3\n",
    "thread (101): MainThread;main (a.py:1) 1\n",
    "thread (102): Thread-1;run (threading.py:9);work (d.py:2) 4\n",
]


def test_thread_filter_counts_only_that_threads_samples(tmp_path, capsys):
    path = tmp_path / "server.txt"
    path.write_text("".join(THREADED))
    assert pyspy_shares.main([str(path), "5", "--thread", "MainThread"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("4 samples") and " 75.0% handler (c.py)" in out and "work" not in out


def test_thread_filter_matching_nothing_says_how_to_record(tmp_path, capsys):
    path = tmp_path / "server.txt"
    path.write_text("".join(PROFILE))
    assert pyspy_shares.main([str(path), "--thread", "MainThread"]) == 1
    assert "record with --threads" in capsys.readouterr().err
    assert pyspy_shares.main([str(path), "--thread"]) == 2
