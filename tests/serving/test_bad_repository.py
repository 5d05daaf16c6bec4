"""One bad model folder never stops the server: that model is UNAVAILABLE with a reason, the rest serve.

The unreadable cases need a server without the power to read everything: as root, it runs
under `setpriv` with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from its bounding set
(util-linux, on every Debian machine), so file modes apply to it as to any other user.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as triton
from conftest import ServerProcess
from onnx_models import cnn_model, images, write_model

from cnnserve.protos import classifier_pb2 as pb
from cnnserve.protos import classifier_pb2_grpc

UNPRIVILEGED = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")


def edit_config(model_dir: Path, **changes: object) -> None:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def broken_repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("broken-models")
    good = cnn_model(seed=1)
    write_model(root, "good", good)
    (root / "good" / "²").mkdir()  # ignored beside the real version 1

    config_dir = write_model(root, "config_is_a_dir", good)
    (config_dir / "config.json").unlink()
    (config_dir / "config.json").mkdir()
    edit_config(write_model(root, "no_inputs", good), inputs=[])
    edit_config(write_model(root, "no_outputs", good), outputs=[])
    edit_config(
        write_model(root, "wrong_outputs", good),
        outputs=[{"name": "scores", "dtype": "float32", "shape": [-1, 10]}],
    )
    superscript = write_model(root, "only_superscript", good)
    (superscript / "1").rename(superscript / "²")

    (write_model(root, "unreadable_dir", good)).chmod(0)
    (write_model(root, "unreadable_config", good) / "config.json").chmod(0)
    (write_model(root, "unreadable_version", good) / "1").chmod(0)
    yield root
    for path in (
        root / "unreadable_dir",
        root / "unreadable_config" / "config.json",
        root / "unreadable_version" / "1",
    ):
        path.chmod(0o755)


@pytest.fixture(scope="module")
def server(broken_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make files unreadable to the server")
        prefix = UNPRIVILEGED
    process = ServerProcess(broken_repository, tmp_path_factory.mktemp("broken-server"), prefix=prefix)
    process.start()
    yield process
    process.kill()


EXPECTED_REASONS = {
    "config_is_a_dir": "cannot read",
    "no_inputs": "inputs is empty",
    "no_outputs": "outputs is empty",
    "wrong_outputs": "config.json output 'scores' is not an output of the model",
    "only_superscript": "no version folders",
    "unreadable_dir": "Permission denied",
    "unreadable_config": "Permission denied",
    "unreadable_version": "Permission denied",
}


def test_every_bad_model_is_unavailable_with_its_reason_and_the_good_one_serves(
    server: ServerProcess,
) -> None:
    stub = classifier_pb2_grpc.ClassifierStub(server.channel())
    listed = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=30).models}
    assert set(listed) == {"good", *EXPECTED_REASONS}
    assert [(v.version, v.state) for v in listed["good"].versions] == [("1", "READY")]
    for name, reason in EXPECTED_REASONS.items():
        states = listed[name].versions
        assert states and all(v.state == "UNAVAILABLE" for v in states), (name, states)
        assert any(reason in v.reason for v in states), (name, [v.reason for v in states])
        assert all("\n" not in v.reason for v in states)

    index = triton.InferenceServerClient(server.target).get_model_repository_index(as_json=True)["models"]
    by_name: dict[str, list[dict]] = {}
    for entry in index:
        by_name.setdefault(entry["name"], []).append(entry)
    for name, reason in EXPECTED_REASONS.items():
        assert any(e["state"] == "UNAVAILABLE" and reason in e.get("reason", "") for e in by_name[name]), name

    response = stub.Classify(
        pb.ClassifyRequest(model_name="good", images=pb.Tensor(dtype="uint8", shape=[2, 28, 28, 1],
                                                              data=images(2).tobytes())),
        timeout=30,
    )  # fmt: skip
    assert len(response.classifications) == 2


def test_the_log_has_one_line_per_failure_and_no_traceback(server: ServerProcess) -> None:
    log = server.log()
    assert "Traceback" not in log
    for name in EXPECTED_REASONS:
        assert any(f"model {name}" in line and "failed to load" in line for line in log.splitlines()), name
    assert "ignoring folder '²'" in log
