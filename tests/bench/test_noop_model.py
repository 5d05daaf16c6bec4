import numpy as np
import onnxruntime as ort
import pytest

from cnnserve.bench.noop_model import build_noop, write_noop
from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.model_repository import ModelConfig, model_versions


@pytest.mark.parametrize("batch", [1, 5])
def test_noop_follows_the_exporter_interface(batch):
    session = ort.InferenceSession(
        build_noop((32, 32, 3)).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    images = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    logits, probabilities = session.run(["logits", "probabilities"], {"images": images})
    assert logits.shape == probabilities.shape == (batch, 10)
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits[:, 0], images.reshape(batch, -1)[:, 0])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_write_noop_writes_a_repository_entry(tmp_path):
    write_noop(tmp_path, (28, 28, 1), "noop")
    config = ModelConfig.load(tmp_path / "noop")
    assert config.platform == "onnxruntime_onnx"
    assert config.inputs[0].shape == (-1, 28, 28, 1)
    assert model_versions(tmp_path / "noop") == [1]
    with pytest.raises(CnnserveError, match="already exists; pass --overwrite"):
        write_noop(tmp_path, (28, 28, 1), "noop")
    write_noop(tmp_path, (28, 28, 1), "noop", overwrite=True)
