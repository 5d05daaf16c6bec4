"""Offline checks for deploy/: Kubernetes schemas (kubernetes-validate), KServe's SDK field tables,
the Dockerfile's image configuration and the real `cnnserve` argument parser.

Every check returns a list of problems (empty = fine), so the tests can show both that the shipped
manifests pass and that a broken copy of them does not.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
import yaml
from kubernetes_validate.utils import schema_contents

from cnnserve.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
KSERVE_TABLES = DEPLOY / "kserve" / "schema" / "kserve-0.21.0.json"
# gRPC probes are GA from 1.27; the newest schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.27", "1.37")
KSERVE_KINDS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}
_SCALARS: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float)}


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests(folder: Path) -> dict[Path, list[dict[str, Any]]]:
    return {path: load(path) for path in sorted(folder.glob("*.yaml")) if path.name != "kustomization.yaml"}


# --- Kubernetes' own schemas ------------------------------------------------------------------
def kubernetes_problems(doc: dict[str, Any], version: str) -> list[str]:
    """Strict validation (unknown fields rejected) of one resource against Kubernetes `version`."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.path)
        return [f"{doc.get('kind')} against Kubernetes {version}: {where}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [error.message]
    return []


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _schema_dir(version: str) -> str:
    """The folder kubernetes_validate.validate itself uses: the newest schemas not newer than `version`."""
    chosen = [v for v in kubernetes_validate.utils.all_versions() if _minor(v) <= _minor(version)][-1]
    return f"kubernetes-json-schema/v{chosen}-local-strict"


def _definition_file(type_name: str, version: str) -> str | None:
    """kubernetes-validate's schema file for a Kubernetes Python client type name, e.g. V1Container."""
    match = re.fullmatch(r"K8sIoApi([A-Z][a-z]+)(V\d+(?:alpha\d+|beta\d+)?)(\w+)", type_name)
    if match:  # K8sIoApiAppsV1DeploymentStrategy
        group, api, kind = match.group(1).lower(), match.group(2).lower(), match.group(3).lower()
        candidates = [f"{kind}-{group}-{api}.json"]
    else:
        match = re.fullmatch(r"(V\d+(?:alpha\d+|beta\d+)?)([A-Z]\w*)", type_name)
        if match is None:
            return None
        api, kind = match.group(1).lower(), match.group(2).lower()
        candidates = [f"{kind}-{api}.json", f"{kind}-meta-{api}.json"]  # core group, then meta
    folder = importlib.resources.files("kubernetes_validate") / _schema_dir(version)
    return next((name for name in candidates if (folder / name).is_file()), None)


def definition_problems(value: Any, type_name: str, version: str, where: str) -> list[str]:
    """Validate an embedded Kubernetes object (a container, a volume) against its strict schema."""
    if type_name == "ResourceQuantity":
        ok = isinstance(value, str | int | float) and not isinstance(value, bool)
        return [] if ok else [f"{where}: {value!r} is not a Kubernetes quantity"]
    filename = _definition_file(type_name, version)
    if filename is None:
        return [f"{where}: no schema for {type_name} (neither KServe's SDK nor Kubernetes defines it)"]
    schema = schema_contents(f"{_schema_dir(version)}/{filename}", version)
    definitions = schema_contents(f"{_schema_dir(version)}/_definitions.json", version)
    registry = referencing.Registry().with_resources(
        [
            (schema.get("$id", filename), referencing.Resource.from_contents(schema)),
            (definitions["$id"], referencing.Resource.from_contents(definitions)),
        ]
    )
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [
        f"{where}.{'.'.join(str(p) for p in error.path)}: {error.message} ({type_name}, Kubernetes {version})"
        for error in validator.iter_errors(value)
    ]


# --- KServe's resource definitions, from its SDK's model classes --------------------------------
def kserve_tables() -> dict[str, Any]:
    return json.loads(KSERVE_TABLES.read_text())


def _typed_problems(value: Any, type_name: str, tables: dict, version: str, where: str) -> list[str]:
    models = tables["models"]
    if type_name.startswith("list[") and type_name.endswith("]"):
        if not isinstance(value, list):
            return [f"{where}: expected a list ({type_name}), got {value!r}"]
        inner = type_name[5:-1]
        return [
            p
            for i, item in enumerate(value)
            for p in _typed_problems(item, inner, tables, version, f"{where}[{i}]")
        ]
    if type_name.startswith("dict(") and type_name.endswith(")"):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping ({type_name}), got {value!r}"]
        inner = type_name[5:-1].split(",", 1)[1].strip()
        return [
            p
            for k, item in value.items()
            for p in _typed_problems(item, inner, tables, version, f"{where}.{k}")
        ]
    if type_name == "object":
        return []
    if type_name in _SCALARS:
        ok = isinstance(value, _SCALARS[type_name]) and (type_name == "bool" or not isinstance(value, bool))
        return [] if ok else [f"{where}: expected {type_name}, got {value!r}"]
    if type_name in models:
        if not isinstance(value, dict):
            return [f"{where}: expected a {type_name} mapping, got {value!r}"]
        fields = models[type_name]["fields"]
        problems = [
            f"{where}: {type_name} requires {key!r}"
            for key in models[type_name]["required"]
            if key not in value
        ]
        for key, item in value.items():
            if key not in fields:
                problems.append(
                    f"{where}: {type_name} has no field {key!r} (KServe {tables['derived_from']['version']})"
                )
            else:
                problems += _typed_problems(item, fields[key], tables, version, f"{where}.{key}")
        return problems
    return definition_problems(value, type_name, version, where)


def kserve_problems(doc: dict[str, Any], tables: dict[str, Any], version: str) -> list[str]:
    root = KSERVE_KINDS.get((doc.get("apiVersion"), doc.get("kind")))
    if root is None:
        return [f"{doc.get('apiVersion')}/{doc.get('kind')} is not a KServe resource this test knows"]
    return _typed_problems(doc, root, tables, version, doc["kind"])


# --- the Dockerfile ---------------------------------------------------------------------------
@dataclass
class ImageConfig:
    """What `docker inspect` would show for one stage of the Dockerfile."""

    user: str = ""
    expose: set[int] = field(default_factory=set)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in joined.splitlines()
        if line.strip()
    ]


def image_config(text: str, device: str) -> ImageConfig:
    """The final image's configuration for `--build-arg DEVICE=device`, following FROM within the file."""
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    order: list[str] = []
    for instruction, rest in instructions(text):
        if instruction == "FROM":
            parts = rest.replace("${DEVICE}", device).split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else f"<stage {len(order)}>"
            stages[name] = (parts[0], [])
            order.append(name)
        elif order:
            stages[order[-1]][1].append((instruction, rest))
    chain, name = [], order[-1]
    while name in stages:
        chain.insert(0, name)
        name = stages[name][0]
    config = ImageConfig()
    for stage in chain:
        for instruction, rest in stages[stage][1]:
            if instruction == "USER":
                config.user = rest.strip()
            elif instruction == "EXPOSE":
                config.expose |= {int(port.split("/")[0]) for port in rest.split()}
            elif instruction == "ENTRYPOINT":
                config.entrypoint, config.cmd = json.loads(rest), []  # Docker resets CMD here
            elif instruction == "CMD":
                config.cmd = json.loads(rest)
            elif instruction == "ENV":
                config.env.update(re.findall(r"(\w+)=(\S+)", rest))
    return config


def image_device(image: str, tags: dict[str, str]) -> str | None:
    """The device of a manifest's image, by the name and tag the Dockerfile builds (any registry)."""
    return tags.get(image.rsplit("/", 1)[-1])


def image_tags(text: str) -> dict[str, str]:
    """{tag: device} from the `docker build` commands the Dockerfile documents."""
    tags = {}
    for match in re.finditer(r"docker build (?:--build-arg DEVICE=(\w+) )?-t (\S+) \.", text):
        tags[match.group(2)] = match.group(1) or "cpu"
    return tags


# --- the real command line --------------------------------------------------------------------
def parse_command(argv: list[str]) -> tuple[argparse.Namespace | None, str]:
    """Parse a container's full command with cnnserve's own parser: (namespace, "") or (None, error)."""
    if not argv or argv[0] != "cnnserve":
        return None, f"{argv!r} does not run cnnserve"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(argv[1:]), ""
    except SystemExit:
        return None, stderr.getvalue().strip().splitlines()[-1]


def container_command(container: dict[str, Any], config: ImageConfig) -> list[str]:
    """What the container runs: `command` replaces ENTRYPOINT (and drops CMD), `args` replaces CMD."""
    entrypoint = container.get("command", config.entrypoint)
    default_args = [] if "command" in container else config.cmd
    return [*entrypoint, *container.get("args", default_args)]
