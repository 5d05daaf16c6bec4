"""Model lifecycle against a real server: versions go live without a restart, under load, losing nothing.

Versions are committed the way `cnnserve export` commits them (`VersionWriter`: a staging
folder renamed into place), into the repository the server polls; explicit mode is driven by
tritonclient's own `load_model` / `unload_model` / `get_model_repository_index`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.request import urlopen

import grpc
import pytest
import tritonclient.grpc as triton
from conftest import ServerProcess
from load_loops import ClosedLoops
from onnx_models import cnn_model, identity_model, images, write_model
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from cnnserve.contracts.model_repository import CONFIG_FILE, ModelConfig
from cnnserve.export.repository import VersionWriter
from cnnserve.protos import classifier_pb2 as pb
from cnnserve.serving.converters import encode_tensor

LOOPS = 8


def commit_version(repository: Path, name: str, version: int, model_bytes: bytes) -> None:
    """What `cnnserve export --version N` does to the repository: stage, then rename into place."""
    config = ModelConfig.load(repository / name)
    with VersionWriter(repository, name, version, overwrite=False, platform=config.platform) as slot:
        assert slot.staging is not None
        (slot.staging / config.model_file).write_bytes(model_bytes)
        slot.commit(config)


def rewrite_config(repository: Path, name: str, **changes: object) -> None:
    path = repository / name / CONFIG_FILE
    raw = json.loads(path.read_text())
    raw.update(changes)
    temporary = path.with_name(".config.json.tmp")
    temporary.write_text(json.dumps(raw))
    temporary.replace(path)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class VersionedLoops(ClosedLoops):
    """Closed loops of unversioned Predict calls that record which version answered each."""

    def __init__(self, target: str, model: str, count: int) -> None:
        request = pb.PredictRequest(
            model_name=model, images=encode_tensor(images(1, seed=2))
        ).SerializeToString()
        self.answered_by: list[list[str]] = [[] for _ in range(count)]
        loop_of: dict[int, int] = {}  # channel → loop index, in the order the loops start

        async def call(channel: grpc.aio.Channel) -> object:
            index = loop_of.setdefault(id(channel), len(loop_of))
            predict = channel.unary_unary(
                "/cnnserve.v1.Classifier/Predict", response_deserializer=pb.PredictResponse.FromString
            )
            response = await predict(request, timeout=30)
            self.answered_by[index].append(response.model_version)
            return response

        super().__init__(target, call, count)

    def latest(self) -> set[str]:
        return {answers[-1] for answers in self.answered_by if answers}


def index_of(server: ServerProcess, model: str) -> dict[str, tuple[str, str]]:
    entries = triton.InferenceServerClient(server.target).get_model_repository_index(as_json=True)["models"]
    return {
        e.get("version", ""): (e.get("state", ""), e.get("reason", "")) for e in entries if e["name"] == model
    }


def load_failures(server: ServerProcess, model: str) -> dict[str, float]:
    with urlopen(server.metrics_url, timeout=10) as response:
        families = text_string_to_metric_families(response.read().decode())
    return {
        sample.labels["version"]: sample.value
        for family in families
        for sample in family.samples
        if sample.name == "cnnserve_model_load_failures_total" and sample.labels["model"] == model
    }


def test_poll_rolls_out_new_versions_and_configs_under_load_without_a_failed_request(
    tmp_path: Path, start_server
) -> None:
    repository = tmp_path / "models"
    write_model(repository, "fmnist", cnn_model(seed=1), max_batch_size=8)
    server = start_server("--poll-interval-s", "0.3", models_dir=repository)
    loops = VersionedLoops(server.target, "fmnist", LOOPS).start()
    try:
        wait_until(lambda: min(loops.ok_per_loop) >= 3, "load on every loop")
        assert loops.latest() == {"1"}

        # A new version goes live: loaded and warmed first, then every loop moves to it.
        commit_version(repository, "fmnist", 2, cnn_model(seed=2).SerializeToString())
        wait_until(
            lambda: loops.latest() == {"2"} and index_of(server, "fmnist").keys() == {"2"}, "version 2"
        )
        assert index_of(server, "fmnist")["2"][0] == "READY"  # latest 1: version 1 was unloaded

        # A corrupt version 3 never takes traffic; version 2 keeps serving.
        commit_version(repository, "fmnist", 3, b"this is not an onnx file")
        wait_until(lambda: "3" in index_of(server, "fmnist"), "version 3 in the index")
        state, reason = index_of(server, "fmnist")["3"]
        assert state == "UNAVAILABLE" and "ONNX Runtime cannot load" in reason and "3/model.onnx" in reason
        assert index_of(server, "fmnist")["2"][0] == "READY"
        assert load_failures(server, "fmnist") == {"3": 1.0}
        served_before = sum(loops.ok_per_loop)
        wait_until(lambda: sum(loops.ok_per_loop) > served_before + 50, "more answers")
        assert loops.latest() == {"2"}

        # Version 3 removed, then config.json changed: version 2 reloads with the new batching.
        for path in (repository / "fmnist" / "3").iterdir():
            path.unlink()
        (repository / "fmnist" / "3").rmdir()
        rewrite_config(repository, "fmnist", max_batch_size=4)
        client = triton.InferenceServerClient(server.target)
        wait_until(
            lambda: client.get_model_config("fmnist", as_json=True)["config"]["max_batch_size"] == 4,
            "the new max_batch_size",
        )
        served_before = sum(loops.ok_per_loop)
        wait_until(lambda: sum(loops.ok_per_loop) > served_before + 50, "answers after the reload")
    finally:
        loops.stop()
    assert loops.codes == Counter({grpc.StatusCode.OK: loops.sent}), loops.details.most_common(3)
    for answers in loops.answered_by:  # each loop moved from 1 to 2 once, never back
        assert answers[0] == "1" and answers[-1] == "2"
        assert answers == sorted(answers)
    log = server.log()
    assert "Traceback" not in log
    assert sum("fmnist version 3 failed to load" in line for line in log.splitlines()) == 1


@pytest.fixture
def explicit_repository(tmp_path: Path) -> Path:
    repository = tmp_path / "models"
    write_model(repository, "a", cnn_model(seed=1), max_batch_size=8)
    write_model(repository, "b", identity_model(), max_batch_size=8)
    return repository


def test_explicit_mode_load_reload_and_unload_through_tritonclient(
    explicit_repository: Path, start_server
) -> None:
    server = start_server("--model-control", "explicit", models_dir=explicit_repository)
    client = triton.InferenceServerClient(server.target)
    index = client.get_model_repository_index(as_json=True)["models"]
    assert [(e["name"], e.get("state", "")) for e in index] == [("a", ""), ("b", "")]  # on disk, not loaded
    assert not client.is_model_ready("a")

    client.load_model("a")
    assert client.is_model_ready("a") and not client.is_model_ready("b")
    tensor = triton.InferInput("images", [2, 28, 28, 1], "UINT8")
    tensor.set_data_from_numpy(images(2))
    assert client.infer("a", [tensor]).as_numpy("logits").shape == (2, 10)
    config = client.get_model_config("a", as_json=True)["config"]
    assert config["max_batch_size"] == 8 and config["version_policy"] == {"latest": {"num_versions": 1}}

    rewrite_config(explicit_repository, "a", max_batch_size=5)
    client.load_model("a")  # loading a loaded model reloads it
    assert client.get_model_config("a", as_json=True)["config"]["max_batch_size"] == 5
    assert client.infer("a", [tensor]).as_numpy("logits").shape == (2, 10)

    client.unload_model("a")
    assert not client.is_model_ready("a")
    with pytest.raises(InferenceServerException) as raised:
        client.infer("a", [tensor])
    assert raised.value.status() == "StatusCode.NOT_FOUND" and "'a'" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client.load_model("ghost")
    assert raised.value.status() == "StatusCode.NOT_FOUND" and "ghost" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client.unload_model("b")
    assert raised.value.status() == "StatusCode.NOT_FOUND" and "not loaded" in raised.value.message()


def test_load_and_unload_are_refused_unless_the_mode_is_explicit(
    explicit_repository: Path, start_server
) -> None:
    server = start_server("--model-control", "poll", models_dir=explicit_repository)
    client = triton.InferenceServerClient(server.target)
    for action in (client.load_model, client.unload_model):
        with pytest.raises(InferenceServerException) as raised:
            action("a")
        assert raised.value.status() == "StatusCode.FAILED_PRECONDITION"
        assert "--model-control explicit" in raised.value.message()


def test_unload_under_load_answers_every_accepted_request(explicit_repository: Path, start_server) -> None:
    server = start_server("--model-control", "explicit", "--models", "a", models_dir=explicit_repository)
    loops = VersionedLoops(server.target, "a", LOOPS).start()
    try:
        wait_until(lambda: min(loops.ok_per_loop) >= 3, "load on every loop")
        triton.InferenceServerClient(server.target).unload_model("a")  # returns once drained
        answered = sum(loops.ok_per_loop)
        wait_until(lambda: loops.codes[grpc.StatusCode.NOT_FOUND] >= LOOPS, "NOT_FOUND on every loop")
    finally:
        loops.stop()
    assert set(loops.codes) <= {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE}
    assert sum(loops.ok_per_loop) == answered  # nothing was served after the unload returned
    assert all("'a'" in detail for detail in loops.details), loops.details
    assert "Traceback" not in server.log()


def repository_cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """`cnnserve repository` in its own process: it imports our V2 messages, this one tritonclient's."""
    command = [sys.executable, "-m", "cnnserve", "repository", *args, "--target", server.target]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_repository_cli_lists_loads_and_unloads(explicit_repository: Path, start_server) -> None:
    server = start_server("--model-control", "explicit", "--models", "b", models_dir=explicit_repository)
    listed = repository_cli(server, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(e["name"], e["version"], e["state"]) for e in json.loads(listed.stdout)] == [
        ("a", "", ""),
        ("b", "1", "READY"),
    ]
    loaded = repository_cli(server, "load", "a")
    assert loaded.returncode == 0 and "loaded a" in loaded.stdout, loaded.stderr
    table = repository_cli(server, "list").stdout.splitlines()
    assert table[0].split() == ["model", "version", "state", "reason"]
    assert table[1].split() == ["a", "1", "READY"] and table[2].split() == ["b", "1", "READY"]
    assert repository_cli(server, "unload", "a").returncode == 0
    assert triton.InferenceServerClient(server.target).is_model_ready("b")
    missing = repository_cli(server, "unload", "a")
    assert missing.returncode == 2
    assert (
        missing.stderr.strip()
        == f"cnnserve repository: error: {server.target}: NOT_FOUND: model 'a' is not loaded"
    )
