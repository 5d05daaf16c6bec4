"""bench/workers.py, bench/workers_table.py and bench/rollout.py: the tables and the many-core
estimate on a recorded run, and one real rollout on a no-op model.
The real measurements are in BENCHMARKS.md with their commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import rollout  # noqa: E402
import workers_table  # noqa: E402

RECORDED = Path(__file__).parent / "data" / "workers_run.json"


def test_recorded_run_tables_and_estimate(capsys):
    result = json.loads(RECORDED.read_text())
    rows = workers_table.server_table(result)
    levels = [level for server in result["servers"] for level in server["levels"]]
    assert len(rows) == 2 + len(levels)
    for level in levels:  # the per-request cost is the server's CPU over what it served
        assert level["server_cpu_ms_per_request"] == pytest.approx(
            level["server_cpu_s"] / level["served_requests"] * 1e3, rel=1e-3
        )
        assert level["errors"] == 0 and level["served_requests"] >= level["requests"]
    estimate = workers_table.estimate(result, cores=16)
    widest = max(s["workers"] for s in result["servers"])
    for line in estimate[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        model, c_ms, x = cells[0], float(cells[1]), float(cells[3].replace(",", ""))
        top = max(
            (
                lv
                for s in result["servers"]
                if s["workers"] == widest
                for lv in s["levels"]
                if lv["model"] == model
            ),
            key=lambda lv: lv["concurrency"],
        )
        assert c_ms == pytest.approx(top["server_cpu_ms_per_request"], abs=5e-4)
        assert float(cells[4].replace(",", "")) == pytest.approx(16 / (c_ms / 1e3), rel=1e-3)
        assert float(cells[5].replace(",", "")) == pytest.approx(16 * x, rel=1e-3)
    assert workers_table.main([str(RECORDED)]) == 0
    assert "| mnist_cnn |" in capsys.readouterr().out


def test_table_refuses_a_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        workers_table.main([str(tmp_path / "none.json")])
    assert exit_info.value.code == 2
    assert "run bench/workers.py first" in capsys.readouterr().err


@pytest.mark.slow
def test_rollout_swaps_a_noop_model_with_every_call_ok(noop_repository, tmp_path):
    out = tmp_path / "rollout.json"
    code = rollout.main([
        "--model-file", str(noop_repository / "noop" / "1" / "model.onnx"), "--concurrency", "2",
        "--poll-interval-s", "0.5", "--warmup-s", "0.5", "--steady-s", "1", "--timeout-s", "30",
        "--out", str(out),
    ])  # fmt: skip
    result = json.loads(out.read_text())
    assert code == 0 and result["codes"] == {"OK": result["codes"]["OK"]}
    assert 0 < result["commit_to_first_v2_response_s"] <= result["commit_to_all_clients_on_v2_s"] < 30
    assert result["steady"]["requests"] > 0 and result["swap"]["requests"] > 0
