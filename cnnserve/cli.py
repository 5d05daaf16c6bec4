"""The `cnnserve` console script: one parser, sub-commands registered by each stage's own CLI module.

Stage CLI modules import their heavy dependencies (TensorFlow, ONNX Runtime) inside the command
handlers, so `cnnserve serve` never pays for TensorFlow and `cnnserve --help` is instant. A stage
that is not installed (the serving image ships only serving, contracts and protos) has no
commands here.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence

from cnnserve import __version__
from cnnserve.contracts.errors import CnnserveError

# TensorFlow prints several lines of C++ start-up noise unless told not to.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# In the order their commands are listed: train/fold, export, serve and the clients, bench.
STAGES = ("cnnserve.training", "cnnserve.export", "cnnserve.serving", "cnnserve.bench")


def installed_stages() -> list[str]:
    return [stage for stage in STAGES if importlib.util.find_spec(stage) is not None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnserve",
        description="Train, fold, export, serve and benchmark small CNN image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"cnnserve {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for stage in installed_stages():
        importlib.import_module(f"{stage}.cli").register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # TensorFlow logs every SavedModel asset write at INFO through Python logging.
        logging.getLogger("tensorflow").setLevel(logging.WARNING)
    try:
        return int(args.handler(args) or 0)
    except CnnserveError as error:
        print(f"cnnserve {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cnnserve {args.command}: interrupted", file=sys.stderr)
        return 130
