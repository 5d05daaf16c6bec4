"""Files written by cnnserve 0.1.0 (checked in under tests/fixtures/written_by_0_1_0/, made by
`cnnserve train` and `cnnserve export` before the contracts layer existed) load through the typed
contracts, and config.json is written back byte for byte: the on-disk formats did not change."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cnnserve.contracts.model_repository import ModelConfig
from cnnserve.contracts.parity import Parity
from cnnserve.contracts.run_dir import MODEL_FILE, load_run_info

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "written_by_0_1_0"


@pytest.mark.parametrize(("name", "fmt"), [("mnist_cnn", "onnx"), ("mnist_cnn_tflite", "tflite")])
def test_config_json_loads_typed_and_is_written_back_unchanged(name: str, fmt: str) -> None:
    model_dir = FIXTURES / "models" / name
    config = ModelConfig.load(model_dir)
    assert config.name == name and config.model_file == {"onnx": "model.onnx", "tflite": "model.tflite"}[fmt]
    assert [spec.name for spec in config.outputs] == ["logits", "probabilities"]
    assert config.inputs[0].shape == (-1, 28, 28, 1) and config.inputs[0].dtype == "uint8"
    provenance = config.provenance
    assert (provenance.model, provenance.format, provenance.version) == ("mnist_cnn", fmt, 1)
    assert provenance.quantize is None and not provenance.noop
    assert provenance.flops_per_image == 6_726_144  # mnist_cnn: 2 × its multiply-adds
    assert isinstance(provenance.parity, Parity) and provenance.parity.ok
    assert provenance.parity.batch_sizes == (1, 256) and provenance.parity.images == 128
    assert config.version_policy.describe() == "latest 1"
    assert config.to_json() == (model_dir / "config.json").read_text()


def test_run_json_loads_typed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run", run)
    (run / MODEL_FILE).write_bytes(b"")  # load_run_info checks that the run finished
    info = load_run_info(run)
    assert (info.model, info.dataset, info.input_shape) == ("mnist_cnn", "synthetic", (28, 28, 1))
    assert info.class_names[0] == "class_0" and len(info.class_names) == 10
    assert (info.steps, info.batch_size, info.seed) == (4, 64, 0)
    assert info.test_accuracy == pytest.approx(0.171875)
