"""config.json, the exporter → server contract: round trip and validation."""

from __future__ import annotations

import json

import pytest

from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.model_repository import ModelConfig, TensorSpec

IMAGES = (TensorSpec("images", "uint8", (-1, 28, 28, 1)),)
LOGITS = (TensorSpec("logits", "float32", (-1, 10)),)


def test_round_trip_keeps_every_field(tmp_path):
    config = ModelConfig("mnist_cnn", "onnxruntime_onnx", IMAGES, LOGITS, ("a", "b"), 32, 1.5, "run", 0.9)
    config.save(tmp_path)
    assert ModelConfig.load(tmp_path) == config
    assert config.model_file == "model.onnx"


def test_default_queue_delay_is_zero_as_in_triton():
    assert ModelConfig("m", "onnxruntime_onnx", IMAGES, LOGITS, ()).max_queue_delay_ms == 0.0


def test_instance_count_round_trips_and_defaults_to_one_for_older_files(tmp_path):
    config = ModelConfig("m", "onnxruntime_onnx", IMAGES, LOGITS, (), instance_count=3)
    config.save(tmp_path)
    assert ModelConfig.load(tmp_path).instance_count == 3
    assert json.loads((tmp_path / "config.json").read_text())["instance_count"] == 3
    ModelConfig("m", "onnxruntime_onnx", IMAGES, LOGITS, ()).save(tmp_path)  # the default is not written
    assert "instance_count" not in json.loads((tmp_path / "config.json").read_text())
    assert ModelConfig.load(tmp_path).instance_count == 1


def test_inline_max_us_round_trips_is_checked_and_absent_means_the_servers_default(tmp_path):
    config = ModelConfig("m", "onnxruntime_onnx", IMAGES, LOGITS, (), inline_max_us=250)
    config.save(tmp_path)
    assert ModelConfig.load(tmp_path).inline_max_us == 250.0
    ModelConfig("m", "onnxruntime_onnx", IMAGES, LOGITS, ()).save(tmp_path)
    assert "inline_max_us" not in json.loads((tmp_path / "config.json").read_text())
    assert ModelConfig.load(tmp_path).inline_max_us is None
    with pytest.raises(CnnserveError, match=r"inline_max_us must be between 0 and 10000 .*received 20000"):
        ModelConfig("m", "onnxruntime_onnx", IMAGES, LOGITS, (), inline_max_us=20_000)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "inline_max_us": "fast"}))
    with pytest.raises(
        CnnserveError, match=r"config.json: inline_max_us: expected a number of microseconds, received 'fast'"
    ):
        ModelConfig.load(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "../etc"}, "invalid model name '../etc'"),
        ({"platform": "pytorch"}, "unknown platform 'pytorch'"),
        ({"max_batch_size": 0}, "max_batch_size must be >= 1, received 0"),
        ({"max_queue_delay_ms": -1.0}, "max_queue_delay_ms must be >= 0, received -1"),
        ({"instance_count": 0}, "instance_count must be between 1 and 64, received 0"),
    ],
)
def test_invalid_values_are_refused_with_the_received_value(overrides, message):
    fields = {"name": "m", "platform": "onnxruntime_onnx", "inputs": IMAGES, "outputs": LOGITS,
              "class_labels": (), **overrides}  # fmt: skip
    with pytest.raises(CnnserveError, match=message.replace(".", r"\.")):
        ModelConfig(**fields)


def test_damaged_config_says_to_re_export(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CnnserveError, match=r"damaged .* re-export the model"):
        ModelConfig.load(tmp_path)
