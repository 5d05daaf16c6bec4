"""Writes bench/peers/schemas/: the JSON schemas of MLServer's settings.json and
model-settings.json, and the flags of KServe's ModelServer, taken from the installed peers, so
the tests can check the configs we generate without installing either peer.

    $PEERS/mlserver/bin/python bench/peers/extract_schemas.py mlserver
    $PEERS/kserve/bin/python bench/peers/extract_schemas.py kserve
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

SCHEMAS = Path(__file__).resolve().parent / "schemas"


def mlserver() -> dict:
    from mlserver.settings import ModelSettings, Settings

    return {
        "version": metadata.version("mlserver"),
        "settings": Settings.model_json_schema(),
        "model_settings": ModelSettings.model_json_schema(),
    }


def kserve() -> dict:
    from kserve import model_server

    flags = sorted(o for action in model_server.parser._actions for o in action.option_strings)
    return {"version": metadata.version("kserve"), "model_server_flags": flags}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("mlserver", "kserve"):
        print("usage: extract_schemas.py mlserver|kserve", file=sys.stderr)
        return 2
    content = mlserver() if argv[0] == "mlserver" else kserve()
    SCHEMAS.mkdir(exist_ok=True)
    path = SCHEMAS / f"{argv[0]}-{content['version']}.json"
    path.write_text(json.dumps(content, indent=1, sort_keys=True, default=str) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
