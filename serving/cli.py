"""The serving stage's commands: `serve` (serve_cli) and the clients `classify`, `health` and
`repository` (client_cli)."""

from __future__ import annotations

import argparse

from cnnserve.serving import client_cli, serve_cli


def register(commands: argparse._SubParsersAction) -> None:
    serve_cli.register(commands)
    client_cli.register(commands)
