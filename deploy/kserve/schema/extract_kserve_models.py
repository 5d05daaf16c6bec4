"""Extract the field tables of KServe's ServingRuntime and InferenceService from its Python SDK.

KServe's SDK (`kserve` on PyPI) carries one generated OpenAPI model class per resource type, whose
`openapi_types` (field → type) and `attribute_map` (field → JSON key) are the resource definitions
of that release. Installing the SDK beside this project's pins is not possible (it pulls its own
server stack), so this reads the wheel as a zip file, parses the model modules with `ast` (nothing
is imported or executed), and writes the types reachable from the two resources as JSON that the
deploy tests validate the manifests with. Kubernetes types they embed (V1Container, V1Volume, …)
are left as names: the tests check them against kubernetes-validate's schemas.

    pip download --no-deps kserve==0.21.0 -d /tmp/kserve
    python deploy/kserve/schema/extract_kserve_models.py /tmp/kserve/kserve-0.21.0-py3-none-any.whl \\
        -o deploy/kserve/schema/kserve-0.21.0.json
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

ROOTS = ("V1alpha1ServingRuntime", "V1alpha1ClusterServingRuntime", "V1beta1InferenceService")
SKIPPED_FIELDS = {"status"}  # written by the controllers, never in a manifest
_REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")
_TYPE_NAMES = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BUILTIN_TYPES = {"str", "int", "bool", "float", "object", "list", "dict", "date", "datetime"}


def _literal_dict(node: ast.AST) -> dict[str, str] | None:
    if not isinstance(node, ast.Dict):
        return None
    value = ast.literal_eval(node)
    return value if all(isinstance(v, str) for v in value.values()) else None


def parse_model(source: str) -> dict[str, dict]:
    """{class name: {"fields": {json key: type}, "required": [json keys]}} for one module."""
    models = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        tables: dict[str, dict[str, str]] = {}
        for statement in node.body:
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                target = statement.targets[0]
                if isinstance(target, ast.Name) and target.id in ("openapi_types", "attribute_map"):
                    table = _literal_dict(statement.value)
                    if table is not None:
                        tables[target.id] = table
        if set(tables) != {"openapi_types", "attribute_map"}:
            continue
        types, keys = tables["openapi_types"], tables["attribute_map"]
        required = sorted({keys[m] for m in _REQUIRED.findall(ast.get_source_segment(source, node) or "")})
        models[node.name] = {"fields": {keys[name]: types[name] for name in types}, "required": required}
    return models


def referenced_types(type_name: str) -> set[str]:
    """'list[V1Container]' → {'V1Container'}; 'dict(str, str)' → set()."""
    return {name for name in _TYPE_NAMES.findall(type_name) if name not in _BUILTIN_TYPES}


def extract(wheel: Path) -> dict:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        version = next(m.group(1) for n in names if (m := re.match(r"kserve-([^/]+)\.dist-info/", n)))
        models: dict[str, dict] = {}
        for name in sorted(n for n in names if re.fullmatch(r"kserve/models/v\w+\.py", n)):
            models.update(parse_model(archive.read(name).decode()))
        repository = archive.read("kserve/model_repository.py").decode()
    mount = re.search(r'^MODEL_MOUNT_DIRS\s*=\s*"([^"]+)"', repository, re.MULTILINE)
    if mount is None:
        raise ValueError("kserve/model_repository.py no longer defines MODEL_MOUNT_DIRS")
    missing = [root for root in ROOTS if root not in models]
    if missing:
        raise ValueError(f"{wheel.name} has no model class for {', '.join(missing)}")
    reachable: dict[str, dict] = {}
    external: set[str] = set()
    pending = list(ROOTS)
    while pending:
        name = pending.pop()
        if name not in models:
            # Kubernetes' types (V1Container), and a few KServe types the SDK names but never ships
            external.add(name)
            continue
        if name in reachable:
            continue
        reachable[name] = models[name]
        for key, type_name in models[name]["fields"].items():
            if key not in SKIPPED_FIELDS:
                pending.extend(referenced_types(type_name))
    return {
        "derived_from": {
            "package": "kserve",
            "version": version,
            "wheel": wheel.name,
            "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
            "script": "deploy/kserve/schema/extract_kserve_models.py",
        },
        "model_mount_dir": mount.group(1),
        "roots": list(ROOTS),
        "skipped_fields": sorted(SKIPPED_FIELDS),
        "external_types": sorted(external),
        "models": dict(sorted(reachable.items())),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="kserve-VERSION-py3-none-any.whl from PyPI")
    parser.add_argument("-o", "--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    try:
        tables = extract(args.wheel)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, SyntaxError) as error:
        print(f"extract_kserve_models: error: {args.wheel}: {error}", file=sys.stderr)
        return 2
    args.out.write_text(json.dumps(tables, indent=1, sort_keys=False) + "\n")
    print(f"{args.out}: {len(tables['models'])} KServe {tables['derived_from']['version']} types")
    return 0


if __name__ == "__main__":
    sys.exit(main())
