"""A model folder whose config.json was written by cnnserve 0.1.0's exporter (checked in under
tests/fixtures/written_by_0_1_0/) serves unchanged: metadata, the recorded FLOPs, and logits
equal to ONNX Runtime's on the same file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton
from onnx_models import cnn_model, images

CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "written_by_0_1_0" / "models" / "mnist_cnn"


def test_a_0_1_0_config_json_serves(start_server, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    (repository / "mnist_cnn" / "1").mkdir(parents=True)
    shutil.copy(CONFIG / "config.json", repository / "mnist_cnn" / "config.json")
    model_file = repository / "mnist_cnn" / "1" / "model.onnx"
    model_file.write_bytes(cnn_model(seed=3).SerializeToString())  # same signature as mnist_cnn's
    server = start_server(models_dir=repository)
    client = triton.InferenceServerClient(server.target)
    assert client.is_model_ready("mnist_cnn", "1")
    config = client.get_model_config("mnist_cnn", as_json=True)["config"]
    assert config["parameters"]["flops_per_image"]["string_value"] == "6726144"
    assert config["max_batch_size"] == 64
    batch = images(3)
    request = triton.InferInput("images", list(batch.shape), "UINT8")
    request.set_data_from_numpy(batch)
    logits = client.infer("mnist_cnn", [request]).as_numpy("logits")
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    expected = session.run(["logits"], {"images": batch})[0]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    response = server.client().classify("mnist_cnn", batch, top_k=1)
    assert [c.top[0].label for c in response.classifications] == [f"class_{i}" for i in expected.argmax(1)]
