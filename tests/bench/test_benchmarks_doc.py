"""BENCHMARKS.md cites only what is in the repository: every script or module it names exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = re.compile(r"(?<![\w/])((?:[\w.-]+/)*[\w-]+\.(?:py|sh))\b")


def test_every_script_benchmarks_md_names_is_in_the_repository() -> None:
    text = (ROOT / "BENCHMARKS.md").read_text()
    named = set(SCRIPT.findall(text))
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    basenames = {Path(path).name for path in listed}
    missing = sorted(n for n in named if n not in listed and not ("/" not in n and n in basenames))
    assert {"scripts/bench_server.sh", "bench/server_ab.py", "scripts/export_pass_ab.py"} <= named
    assert not missing, f"BENCHMARKS.md names scripts that are not in the repository: {missing}"
    assert "†" not in text  # the mark of a figure from a script outside the repository
