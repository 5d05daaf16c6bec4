"""deploy/kubernetes: every manifest against Kubernetes' schemas, and against the image and the CLI."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import (
    DEPLOY,
    DOCKERFILE,
    KUBERNETES_VERSIONS,
    container_command,
    image_config,
    image_device,
    image_tags,
    kubernetes_problems,
    load,
    manifests,
    parse_command,
)

FOLDER = DEPLOY / "kubernetes"
NOT_IN_KUSTOMIZATION = {"model-loader.yaml"}  # a one-off pod, applied by hand


def _by_kind() -> dict[str, dict[str, Any]]:
    documents = [doc for docs in manifests(FOLDER).values() for doc in docs]
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in documents}


def _server(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def server_problems(deployment: dict[str, Any]) -> list[str]:
    """The Deployment against the Dockerfile's image and `cnnserve serve`'s real parser."""
    text = DOCKERFILE.read_text()
    pod = deployment["spec"]["template"]["spec"]
    container = _server(deployment)
    tags = image_tags(text)
    device = image_device(container["image"], tags)
    if device is None:
        return [f"image {container['image']!r} is none the Dockerfile builds ({', '.join(tags)})"]
    config = image_config(text, device)
    args, error = parse_command(container_command(container, config))
    if args is None:
        return [f"the container's command does not parse: {error}"]
    problems = []
    if args.command != "serve":
        problems.append(f"the container runs `cnnserve {args.command}`, not `cnnserve serve`")
        return problems
    uid, gid = (int(part) for part in config.user.split(":"))
    security = pod["securityContext"]
    if (security.get("runAsUser"), security.get("runAsGroup")) != (uid, gid):
        problems.append(
            f"pod runs as {security.get('runAsUser')}:{security.get('runAsGroup')}, image as {uid}:{gid}"
        )
    if not security.get("runAsNonRoot"):
        problems.append("runAsNonRoot is not set")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    if ports != {"grpc": args.port, "http": args.http_port, "metrics": args.metrics_port}:
        problems.append(
            f"container ports {ports} != --port {args.port}, --http-port {args.http_port}, "
            f"--metrics-port {args.metrics_port}"
        )
    if not set(ports.values()) <= config.expose:
        problems.append(f"container ports {sorted(ports.values())} not all EXPOSEd ({sorted(config.expose)})")
    if args.host != "0.0.0.0":
        problems.append(f"--host {args.host}: the kubelet's probes and the Service could not reach it")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = container.get(probe, {}).get("grpc")
        if grpc is None or grpc.get("port") != args.port or grpc.get("service", "") != "":
            problems.append(f"{probe} is not a gRPC health probe of the whole server on --port {args.port}")
    pre_stop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    if pod["terminationGracePeriodSeconds"] <= pre_stop_s + args.grace_s:
        problems.append(
            f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} leaves no room after "
            f"preStop {pre_stop_s} s + --grace-s {args.grace_s:g}"
        )
    requested = container["resources"]["requests"]["cpu"]
    if str(args.cpu_threads) != str(requested):
        problems.append(f"--cpu-threads {args.cpu_threads} != the CPU request {requested}")
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    models = mounts.get(str(args.repository))
    if models is None or not models.get("readOnly"):
        problems.append(f"--repository {args.repository} is not a read-only volume mount")
    if container["securityContext"].get("readOnlyRootFilesystem"):
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        tmp = mounts.get("/tmp")
        if tmp is None or tmp.get("readOnly") or "emptyDir" not in volumes.get(tmp["name"], {}):
            problems.append("readOnlyRootFilesystem without a writable /tmp (the server's temporary files)")
    return problems


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = changed
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return changed


CONTAINER = "spec.template.spec.containers.0"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_kubernetes(version: str) -> None:
    found = manifests(FOLDER)
    assert {path.name for path in found} >= {"deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"}
    problems = [p for docs in found.values() for doc in docs for p in kubernetes_problems(doc, version)]
    assert problems == []


def test_a_misspelt_field_in_a_copy_is_rejected(tmp_path: Path) -> None:
    broken = tmp_path / "deployment.yaml"
    broken.write_text(
        (FOLDER / "deployment.yaml").read_text().replace("readinessProbe:", "readynessProbe:", 1)
    )
    (doc,) = load(broken)
    (problem,) = kubernetes_problems(doc, KUBERNETES_VERSIONS[-1])
    assert "readynessProbe" in problem


def test_kustomization_lists_every_manifest() -> None:
    resources = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())["resources"]
    assert sorted(resources) == sorted(
        p.name for p in manifests(FOLDER) if p.name not in NOT_IN_KUSTOMIZATION
    )


def test_the_deployment_matches_the_image_and_the_cli() -> None:
    deployment = _by_kind()["Deployment/cnnserve"]
    assert server_problems(deployment) == []
    pushed = _set(deployment, f"{CONTAINER}.image", "registry.example.com/ml/cnnserve:cpu")
    assert server_problems(pushed) == []  # the same image in any registry
    args, _ = parse_command(
        container_command(_server(deployment), image_config(DOCKERFILE.read_text(), "cpu"))
    )
    assert args is not None and args.device == "cpu"  # from the CPU image's entrypoint


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (f"{CONTAINER}.args", ["--repository", "/models", "--grace-seconds", "30"], "unrecognized arguments"),
        (f"{CONTAINER}.image", "cnnserve:gpu", "none the Dockerfile builds"),
        (f"{CONTAINER}.ports.0.containerPort", 9000, "container ports"),
        (f"{CONTAINER}.readinessProbe.grpc.port", 8002, "readinessProbe"),
        ("spec.template.spec.terminationGracePeriodSeconds", 30, "terminationGracePeriodSeconds"),
        ("spec.template.spec.securityContext.runAsUser", 1000, "pod runs as 1000"),
        (f"{CONTAINER}.resources.requests.cpu", "4", "--cpu-threads 2"),
        (f"{CONTAINER}.volumeMounts.1.mountPath", "/scratch", "writable /tmp"),
        (f"{CONTAINER}.command", ["python3", "-m", "http.server"], "does not run cnnserve"),
    ],
)
def test_a_deployment_that_drifted_from_the_image_or_cli_is_caught(
    path: str, value: Any, expected: str
) -> None:
    deployment = _set(_by_kind()["Deployment/cnnserve"], path, value)
    assert any(expected in problem for problem in server_problems(deployment)), server_problems(deployment)


def test_services_hpa_pdb_and_volume_point_at_the_deployment() -> None:
    found = _by_kind()
    deployment = found["Deployment/cnnserve"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {port["name"] for port in _server(deployment)["ports"]}
    for name in ("Service/cnnserve", "Service/cnnserve-headless"):
        spec = found[name]["spec"]
        assert spec["selector"].items() <= labels.items()
        grpc = next(port for port in spec["ports"] if port["name"] == "grpc")
        assert grpc["targetPort"] in port_names and grpc["appProtocol"] == "kubernetes.io/h2c"
    http = next(port for port in found["Service/cnnserve"]["spec"]["ports"] if port["name"] == "http")
    assert http["targetPort"] in port_names and http["port"] == 8000
    assert found["Service/cnnserve"]["spec"]["type"] == "ClusterIP"
    assert found["Service/cnnserve-headless"]["spec"]["clusterIP"] == "None"
    target = found["HorizontalPodAutoscaler/cnnserve"]["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "cnnserve")
    assert found["PodDisruptionBudget/cnnserve"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"cnnserve-models"} and "PersistentVolumeClaim/cnnserve-models" in found
    loader = found["Pod/cnnserve-model-loader"]["spec"]
    assert {v["persistentVolumeClaim"]["claimName"] for v in loader["volumes"]} == claims
    assert loader["securityContext"]["fsGroup"] == pod["spec"]["securityContext"]["fsGroup"]
