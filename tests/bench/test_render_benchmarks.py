"""scripts/render_benchmarks.py against scripts/bench_server.sh: every sweep the script writes has
a table, and a table's cells are the records' values."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("render_benchmarks", ROOT / "scripts" / "render_benchmarks.py")
render_benchmarks = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(render_benchmarks)


def _sweeps_in_script() -> set[str]:
    """`bench NAME ...` lines, with the option loop's `opt_${option}` names expanded."""
    script = (ROOT / "scripts" / "bench_server.sh").read_text()
    names = set(re.findall(r"^\s*bench (\w+) ", script, re.MULTILINE))
    options = re.search(r"for option in ([\w ]+); do", script).group(1).split()
    for template in re.findall(r'^\s*bench "(opt_\$\{option\}\w*)"', script, re.MULTILINE):
        names |= {template.replace("${option}", option) for option in options}
    return names


def test_every_sweep_of_bench_server_sh_is_rendered():
    rendered = {name for name, _ in render_benchmarks.SERVER_RUNS + render_benchmarks.OPEN_RUNS}
    sweeps = _sweeps_in_script()
    assert "opt_instances2_64" in sweeps and "mnist_open" in sweeps
    assert sweeps == rendered


def test_a_sweep_renders_its_records(tmp_path):
    result = json.loads((Path(__file__).parent / "data" / "instances_ab_mnist.json").read_text())
    records = result["rounds"][0]["b"]
    (tmp_path / "server_opt_instances2_64.json").write_text(json.dumps(records))
    text = render_benchmarks.render(tmp_path)
    assert "### `mnist_cnn`, V2, 64 images/request, `--instances 2` (`server_opt_instances2_64.json`)" in text
    rows = [line for line in text.splitlines() if line.startswith("| mnist_cnn |")]
    assert len(rows) == len(records)
    for row, record in zip(rows, records, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == str(record["concurrency"]) and cells[3] == f"{record['requests_per_s']:,.0f}"
