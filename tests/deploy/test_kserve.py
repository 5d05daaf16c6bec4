"""deploy/kserve: the ServingRuntime and InferenceService against KServe's own resource definitions
(its SDK's model tables, deploy/kserve/schema/), Kubernetes' schemas for the containers they embed,
the Dockerfile and the real CLI."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import (
    DEPLOY,
    DOCKERFILE,
    KSERVE_TABLES,
    KUBERNETES_VERSIONS,
    container_command,
    image_config,
    image_device,
    image_tags,
    kserve_problems,
    kserve_tables,
    load,
    parse_command,
)

FOLDER = DEPLOY / "kserve"
EXTRACT = FOLDER / "schema" / "extract_kserve_models.py"


def _runtime() -> dict[str, Any]:
    (doc,) = load(FOLDER / "servingruntime.yaml")
    return doc


def _service() -> dict[str, Any]:
    (doc,) = load(FOLDER / "inferenceservice.yaml")
    return doc


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_resources_match_kserve_definitions(version: str) -> None:
    tables = kserve_tables()
    assert tables["derived_from"]["version"] == "0.21.0"
    assert kserve_problems(_runtime(), tables, version) == []
    assert kserve_problems(_service(), tables, version) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("supportedModelFormats:", "supportedModelFormat:", "has no field 'supportedModelFormat'"),
        ("autoSelect: false", "autoSelect: nope", "expected bool"),
        ("periodSeconds: 5", "periodSecond: 5", "periodSecond"),  # inside the embedded V1Container
        ("containers:", "kontainers:", "requires 'containers'"),
    ],
)
def test_a_broken_copy_of_the_runtime_is_rejected(tmp_path: Path, old: str, new: str, expected: str) -> None:
    broken = tmp_path / "servingruntime.yaml"
    broken.write_text((FOLDER / "servingruntime.yaml").read_text().replace(old, new, 1))
    (doc,) = load(broken)
    problems = kserve_problems(doc, kserve_tables(), KUBERNETES_VERSIONS[-1])
    assert any(expected in problem for problem in problems), problems


def test_a_broken_copy_of_the_inference_service_is_rejected(tmp_path: Path) -> None:
    broken = tmp_path / "inferenceservice.yaml"
    broken.write_text((FOLDER / "inferenceservice.yaml").read_text().replace("storageUri:", "storageURI:"))
    (doc,) = load(broken)
    problems = kserve_problems(doc, kserve_tables(), KUBERNETES_VERSIONS[-1])
    assert problems == [
        "InferenceService.spec.predictor.model: V1beta1ModelSpec has no field 'storageURI' (KServe 0.21.0)"
    ]


def runtime_problems(runtime: dict[str, Any], service: dict[str, Any]) -> list[str]:
    """The runtime's container against the image, the CLI and KServe's conventions."""
    text = DOCKERFILE.read_text()
    (container,) = runtime["spec"]["containers"]
    device = image_device(container["image"], image_tags(text))
    if device is None:
        return [f"image {container['image']!r} is none the Dockerfile builds"]
    config = image_config(text, device)
    args, error = parse_command(container_command(container, config))
    if args is None:
        return [f"the container's command does not parse: {error}"]
    problems = []
    mount = kserve_tables()["model_mount_dir"]
    if str(args.repository) != mount:
        problems.append(f"--repository {args.repository}: KServe puts the storageUri at {mount}")
    if container["name"] != "kserve-container":
        problems.append(
            f"container {container['name']!r}: KServe merges the predictor into 'kserve-container'"
        )
    ports = [(port["name"], port["containerPort"]) for port in container["ports"]]
    if ports != [("h2c", args.port)] or args.port not in config.expose:
        problems.append(f"ports {ports}: expected the one serving port h2c = --port {args.port}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if container.get(probe, {}).get("grpc", {}).get("port") != args.port:
            problems.append(f"{probe} is not a gRPC health probe on --port {args.port}")
    uid, gid = (int(part) for part in config.user.split(":"))
    security = container["securityContext"]
    if (security.get("runAsUser"), security.get("runAsGroup")) != (uid, gid):
        problems.append(
            f"runs as {security.get('runAsUser')}:{security.get('runAsGroup')}, image as {uid}:{gid}"
        )
    annotations = runtime["spec"].get("annotations", {})
    if annotations.get("prometheus.kserve.io/port") != str(args.metrics_port):
        problems.append(f"prometheus.kserve.io/port is not --metrics-port {args.metrics_port}")
    model = service["spec"]["predictor"]["model"]
    if model.get("runtime") != runtime["metadata"]["name"]:
        problems.append(f"the InferenceService uses runtime {model.get('runtime')!r}")
    if model.get("protocolVersion") not in runtime["spec"]["protocolVersions"]:
        problems.append(f"protocolVersion {model.get('protocolVersion')!r} is not the runtime's")
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    if (model["modelFormat"]["name"], model["modelFormat"].get("version")) not in formats:
        problems.append(f"modelFormat {model['modelFormat']} is not among the runtime's {sorted(formats)}")
    return problems


def test_the_runtime_matches_the_image_the_cli_and_the_inference_service() -> None:
    runtime = _runtime()
    assert runtime_problems(runtime, _service()) == []
    assert runtime["spec"]["protocolVersions"] == ["grpc-v2"]  # no REST endpoint to claim


def _edit(doc: dict[str, Any], edit: str) -> dict[str, Any]:
    changed = copy.deepcopy(doc)
    container = changed["spec"]["containers"][0] if "containers" in changed["spec"] else None
    if edit == "repository":
        container["args"][1] = "/models"
    elif edit == "flag":
        container["args"] += ["--model-store", "/mnt/models"]
    elif edit == "port":
        container["ports"][0]["containerPort"] = 9000
    elif edit == "image":
        container["image"] = "nvcr.io/nvidia/tritonserver:25.01-py3"
    elif edit == "protocol":
        changed["spec"]["protocolVersions"] = ["v2"]
    return changed


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("repository", "KServe puts the storageUri at /mnt/models"),
        ("flag", "unrecognized arguments: --model-store"),
        ("port", "expected the one serving port"),
        ("protocol", "protocolVersion 'grpc-v2' is not the runtime's"),
        ("image", "is none the Dockerfile builds"),
    ],
)
def test_a_runtime_that_drifted_is_caught(edit: str, expected: str) -> None:
    problems = runtime_problems(_edit(_runtime(), edit), _service())
    assert any(expected in problem for problem in problems), problems


def _fake_wheel(
    path: Path, models: dict[str, str], repository: str = 'MODEL_MOUNT_DIRS = "/mnt/models"\n'
) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("kserve-9.9.9.dist-info/METADATA", "Name: kserve\nVersion: 9.9.9\n")
        archive.writestr("kserve/model_repository.py", repository)
        for name, source in models.items():
            archive.writestr(f"kserve/models/{name}.py", source)
    return path


_MODEL = """
class {name}(object):
    openapi_types = {{{types}}}
    attribute_map = {{{keys}}}
"""
_REQUIRED_SPEC = """
    @spec.setter
    def spec(self, spec):
        if self.local_vars_configuration.client_side_validation and spec is None:  # noqa: E501
            raise ValueError("Invalid value for `spec`, must not be `None`")  # noqa: E501
"""


def test_the_extraction_script_reads_the_sdk_tables_without_importing_them(tmp_path: Path) -> None:
    def model(name: str, fields: dict[str, tuple[str, str]]) -> str:
        types = ", ".join(f"'{f}': '{t}'" for f, (t, _) in fields.items())
        keys = ", ".join(f"'{f}': '{k}'" for f, (_, k) in fields.items())
        setter = _REQUIRED_SPEC if "spec" in fields else ""
        return "import does_not_exist\n" + _MODEL.format(name=name, types=types, keys=keys) + setter

    spec = {"spec": ("V1alpha1ServingRuntimeSpec", "spec"), "status": ("V1Unused", "status")}
    wheel = _fake_wheel(
        tmp_path / "kserve-9.9.9-py3-none-any.whl",
        {
            "v1alpha1_serving_runtime": model("V1alpha1ServingRuntime", spec),
            "v1alpha1_cluster_serving_runtime": model("V1alpha1ClusterServingRuntime", spec),
            "v1beta1_inference_service": model("V1beta1InferenceService", {"spec": ("object", "spec")}),
            "v1alpha1_serving_runtime_spec": model(
                "V1alpha1ServingRuntimeSpec", {"containers": ("list[V1Container]", "containers")}
            ),
            "v1alpha1_orphan": model("V1alpha1Orphan", {"x": ("str", "x")}),
        },
    )
    out = tmp_path / "tables.json"
    result = subprocess.run(
        [sys.executable, str(EXTRACT), str(wheel), "-o", str(out)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    tables = json.loads(out.read_text())
    assert tables["derived_from"]["version"] == "9.9.9" and tables["model_mount_dir"] == "/mnt/models"
    assert sorted(tables["models"]) == [  # reachable from the roots only; status is not followed
        "V1alpha1ClusterServingRuntime",
        "V1alpha1ServingRuntime",
        "V1alpha1ServingRuntimeSpec",
        "V1beta1InferenceService",
    ]
    assert tables["models"]["V1alpha1ServingRuntime"] == {
        "fields": {"spec": "V1alpha1ServingRuntimeSpec", "status": "V1Unused"},
        "required": ["spec"],
    }
    assert tables["external_types"] == ["V1Container"]


def test_the_extraction_script_refuses_a_wheel_without_the_resources(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path / "kserve-9.9.9-py3-none-any.whl", {})
    result = subprocess.run(
        [sys.executable, str(EXTRACT), str(wheel), "-o", str(tmp_path / "t.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "has no model class for " + ", ".join(json.loads(KSERVE_TABLES.read_text())["roots"])
    )
    assert not (tmp_path / "t.json").exists()
