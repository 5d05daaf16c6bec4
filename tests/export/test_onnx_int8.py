"""int8 ONNX (ONNX Runtime static QDQ): accuracy kept on real Fashion-MNIST, refused beyond the
limit, served by a real `cnnserve serve` next to the float model, and left alone by the CPU
filter padding (bit-exact)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cnnserve.cli import main
from cnnserve.contracts.model_repository import ModelConfig
from cnnserve.export.pipeline import export_run
from cnnserve.serving.nchwc_padding import cpu_session_model, nchwc_block_size
from cnnserve.serving.session import CPU, ModelSession, SessionSettings
from cnnserve.training.data import load_dataset
from tests.serving.conftest import ServerProcess

pytestmark = pytest.mark.slow
SERVED_IMAGES = 1000


@pytest.fixture(scope="module")
def int8_repository(fashion_run, tmp_path_factory):
    """The briefly trained mnist_cnn as float32 ONNX and as int8 ONNX, in one repository."""
    repository = tmp_path_factory.mktemp("int8_models")
    float_result = export_run(fashion_run, "onnx", repository=repository)
    int8_result = export_run(fashion_run, "onnx", quantize="int8", repository=repository)
    return repository, float_result, int8_result


def _plain_logits(path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=[CPU])
    return session.run(["logits"], {"images": images})[0]


def test_int8_keeps_accuracy_and_is_quantized(int8_repository):
    repository, float_result, result = int8_repository
    report = result.report.to_dict()
    assert result.model_name == "mnist_cnn_int8" and result.path == repository / "mnist_cnn_int8/1/model.onnx"
    assert report["float_test_accuracy"] > 0.75  # the briefly trained model really learned
    assert report["accuracy_drop_points"] <= 1.0
    assert report["test_accuracy"] == pytest.approx(float_result.report.to_dict()["test_accuracy"], abs=0.01)
    assert report["float_parity"]["top1_agreement"] == 1.0  # the float ONNX it came from was exact
    assert report["parity"]["top1_agreement"] >= 0.97 and report["parity"]["images"] == 1000
    # Both convolutions and both dense layers run in int8; the in-graph scaling, biases and
    # softmax stay float32.
    assert sorted(report["int8_ops"]) == ["Conv", "Conv", "MatMul", "MatMul", "MaxPool", "MaxPool", "Reshape"]
    assert set(report["float_ops"]) == {"Add", "Mul", "Softmax"}
    assert report["calibration_images"] == 300 and report["per_channel"] is True
    # The entry names its export format, and the quantizer's format under its own key.
    assert (report["format"], report["quantize"], report["quantization_format"]) == ("onnx", "int8", "QDQ")
    assert result.path.stat().st_size < float_result.path.stat().st_size / 3

    model = onnx.load(str(result.path))
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert metadata["quantize"] == "int8" and metadata["model"] == "mnist_cnn"
    config = ModelConfig.load(repository / "mnist_cnn_int8")
    assert config.platform == "onnxruntime_onnx" and config.provenance.quantize == "int8"
    assert config.test_accuracy == report["test_accuracy"]
    # A second batch size through the written file.
    images = load_dataset("fashion_mnist").test.images[:7]
    assert _plain_logits(result.path, images).shape == (7, 10)


def test_int8_is_served_beside_the_float_model(int8_repository, tmp_path):
    repository, _, int8_result = int8_repository
    test = load_dataset("fashion_mnist").test
    images, labels = test.images[:SERVED_IMAGES], test.labels[:SERVED_IMAGES]
    server = ServerProcess(repository, tmp_path / "server").start()
    try:
        client = server.client()
        served = {model.name for model in client.list_models().models}
        assert {"mnist_cnn", "mnist_cnn_int8"} <= served
        predicted = {}
        for name in ("mnist_cnn", "mnist_cnn_int8"):
            tops = []
            for start in range(0, SERVED_IMAGES, 100):  # requests of 100 images, batched by the server
                response = client.classify(name, images[start : start + 100])
                assert response.model_name == name and response.model_version == "1"
                tops += [c.top[0].class_index for c in response.classifications]
            predicted[name] = np.array(tops)
        assert server.stop() == 0
    finally:
        server.kill()
    float_accuracy = float(np.mean(predicted["mnist_cnn"] == labels))
    int8_accuracy = float(np.mean(predicted["mnist_cnn_int8"] == labels))
    assert float_accuracy > 0.75 and abs(int8_accuracy - float_accuracy) <= 0.015
    # The server runs exactly the exported int8 file: the same classes as ONNX Runtime in-process.
    in_process = _plain_logits(int8_result.path, images).argmax(axis=1)
    assert np.array_equal(predicted["mnist_cnn_int8"], in_process)


def test_filter_padding_leaves_int8_alone_and_exact(int8_repository):
    """The float model's conv2 (36 filters) is padded on AVX2/AVX-512 CPUs; in the QDQ graph its
    weights come from a DequantizeLinear, which the padding does not rewrite, and ONNX Runtime
    runs the int8 conv in NHWC where the channel block does not apply."""
    _, float_result, int8_result = int8_repository
    if nchwc_block_size() == 0:
        pytest.skip("ONNX Runtime has no NCHWc block on this CPU")
    _, float_padded = cpu_session_model(float_result.path, "all")
    assert [conv.filters for conv in float_padded] == [36]
    source, int8_padded = cpu_session_model(int8_result.path, "all")
    assert int8_padded == [] and source == str(int8_result.path)
    images = load_dataset("fashion_mnist").test.images[:64]
    session = ModelSession(int8_result.path, SessionSettings(CPU, cpu_threads=1))
    served = session.run(images)
    plain = ort.InferenceSession(str(int8_result.path), providers=[CPU]).run(None, {"images": images})
    assert np.array_equal(served["logits"], plain[0]) and np.array_equal(served["probabilities"], plain[1])


def test_int8_refused_beyond_the_limit_writes_nothing(fashion_run, tmp_path, capsys):
    repository = tmp_path / "models"
    argv = ["export", str(fashion_run), "--format", "onnx", "--quantize", "int8", "--repository",
            str(repository), "--calibration-images", "1", "--max-accuracy-drop", "0"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnserve export: error: ONNX int8 loses ") and "\n" not in err
    assert "limit 0)" in err and "--calibration-images" in err
    assert not any(repository.rglob("*.onnx"))


def test_int8_keeps_the_lrn_layers_in_float(zoo_runs, zoo_sources, tmp_path):
    result = export_run(
        zoo_runs["cifar10_convnet"], "onnx", quantize="int8", repository=tmp_path,
        source=zoo_sources["cifar10_convnet"], calibration_images=32,
        max_accuracy_drop_points=100.0,  # random weights on synthetic images: nothing to keep
    )  # fmt: skip
    report = result.report.to_dict()
    assert len(report["excluded_nodes"]) == 2 * 6  # two LRNs: x², banded Conv, √, √√, product, division
    float_ops, int8_ops = report["float_ops"], report["int8_ops"]
    # 4 square roots and 2 divisions in the LRNs, 1 of each in the per-image standardization.
    assert float_ops.count("Sqrt") == 4 + 1 and float_ops.count("Div") == 2 + 1
    assert float_ops.count("Conv") == 2  # the LRNs' banded sums
    assert int8_ops.count("Conv") == 2 and int8_ops.count("MatMul") == 3 and "Div" not in int8_ops
    assert report["parity"]["top1_agreement"] >= 0.9
