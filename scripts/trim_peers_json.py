"""Copies a bench/peers/compare.py run without the per-record `system` blocks (the run keeps
one at its top), small enough to keep as the recorded run the table tests read.

    .venv/bin/python scripts/trim_peers_json.py bench_results/peers.json tests/bench/data/peers_run.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: trim_peers_json.py RUN.json OUT.json", file=sys.stderr)
        return 2
    run = json.loads(Path(argv[0]).read_text())
    for entry in run["servers"].values():
        for record in entry["records"]:
            record.pop("system", None)
    Path(argv[1]).write_text(json.dumps(run, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
