"""An unloaded version gives its memory back: 20 load/unload cycles of cs231n_complex (22 MB of
weights) leave the server's RSS within 10% of what it was after the first load.

The model is the zoo's cs231n_complex with random weights, converted by the exporter's own
functions (the benchmark's synthetic path), so the session is the size a user's would be.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tritonclient.grpc as triton
from conftest import ServerProcess
from onnx_models import images, write_model

CYCLES = 20


def rss_bytes(server: ServerProcess) -> int:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


@pytest.fixture(scope="module")
def cs231n_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cnnserve.bench.artifacts import synthetic

    workdir = tmp_path_factory.mktemp("cs231n_complex")
    artifacts = synthetic("cs231n_complex", ("onnxruntime",), workdir / "export")
    repository = workdir / "models"
    write_model(repository, "cs231n_complex", b"", image_shape=(32, 32, 3), max_batch_size=4)
    shutil.copyfile(artifacts.files["onnxruntime"], repository / "cs231n_complex" / "1" / "model.onnx")
    return repository


@pytest.mark.slow
def test_twenty_load_unload_cycles_do_not_grow_the_server(cs231n_repository: Path, start_server) -> None:
    server = start_server("--model-control", "explicit", models_dir=cs231n_repository)
    client = triton.InferenceServerClient(server.target)
    tensor = triton.InferInput("images", [4, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(images(4, shape=(32, 32, 3)))
    before_load = rss_bytes(server)
    client.load_model("cs231n_complex")
    client.infer("cs231n_complex", [tensor])
    after_first_load = rss_bytes(server)
    assert after_first_load > before_load + 20 * 2**20  # the session's weights are really in memory
    for _ in range(CYCLES):
        client.unload_model("cs231n_complex")
        client.load_model("cs231n_complex")
        assert client.infer("cs231n_complex", [tensor]).as_numpy("logits").shape == (4, 10)
    after_cycles = rss_bytes(server)
    assert after_cycles <= 1.10 * after_first_load, (before_load, after_first_load, after_cycles)
