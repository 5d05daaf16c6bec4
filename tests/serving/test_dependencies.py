"""The server runs on the base install (`pip install .`, as the Docker image does): every module it
loads must come from a distribution that the base dependencies bring in."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from onnx_models import cnn_model, write_model
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
# Imported by a base dependency only when present: grpc tries grpc_tools for its runtime protos;
# aiohttp tries brotli and backports.zstd for compressed bodies (the dev venv has them through
# tritonclient[http]).
OPTIONAL_IMPORTS = {"grpc_tools", "brotli", "_brotli", "backports"}


def _base_closure() -> set[str]:
    """The base dependencies and everything they require (no extras), as canonical names."""
    pending = [
        Requirement(line).name
        for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    closure: set[str] = set()
    while pending:
        name = canonicalize_name(pending.pop())
        if name in closure:
            continue
        closure.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return closure


def test_the_server_loads_only_what_the_base_install_brings(tmp_path: Path) -> None:
    write_model(tmp_path, "cnn", cnn_model())
    code = (
        "import json, sys\n"
        "at_start = set(sys.modules)  # the interpreter's own, and what .pth files load\n"
        "from pathlib import Path\n"
        "import cnnserve.cli, cnnserve.serving.server, cnnserve.serving.cli, cnnserve.serving.client\n"
        "from cnnserve.serving.session import CPU, ModelSession, SessionSettings\n"
        "cnnserve.cli.build_parser()\n"
        f"ModelSession(Path({str(tmp_path / 'cnn/1/model.onnx')!r}), SessionSettings(CPU)).run\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in set(sys.modules) - at_start})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout.splitlines()[-1])
    providers = metadata.packages_distributions()
    base = _base_closure() | {"cnnserve"}
    # A namespace package (`google`) has several providers; one of them in the base is enough.
    owners = {module: {canonicalize_name(d) for d in providers.get(module, [])} for module in modules}
    assert {"onnxruntime-gpu"} in owners.values() and {"grpcio"} in owners.values()  # it sees them
    outside = {
        module: sorted(dists)
        for module, dists in owners.items()
        if dists and not dists & base and module not in OPTIONAL_IMPORTS
    }
    assert not outside, f"the server imports {outside}, which `pip install .` does not install"
