"""Regenerate the checked-in `_pb2.py`, `_pb2.pyi` and `_pb2_grpc.py` files from the `.proto` files.

`make protos` runs this (a developer tool, not installed with the package);
`tests/serving/test_protos.py` runs it into a temporary folder and fails on any difference.
The include path maps protos/ to `cnnserve/protos`, so the generated modules import each other
as `cnnserve.protos.xxx_pb2` with no post-editing. Needs grpcio-tools (a dev dependency),
imported inside `generate` so nothing else loads it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent.parent / "protos"
VIRTUAL_DIR = "cnnserve/protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules for every `.proto` here into `out_dir`; return their paths."""
    from importlib.resources import files

    from grpc_tools import protoc

    well_known = str(files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as scratch:
        args = [
            "grpc_tools.protoc",
            f"-I{VIRTUAL_DIR}={PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *(f"{VIRTUAL_DIR}/{path.name}" for path in proto_files()),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for path in sorted((Path(scratch) / VIRTUAL_DIR).iterdir()):
            if path.name.endswith(GENERATED_SUFFIXES):
                target = out_dir / path.name
                shutil.copyfile(path, target)
                written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_DIR, help="where to write the modules")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
