"""Every zoo model to every format: interface, parity at batch sizes 1 and 256 (checked inside
the exporter) and again here at a second batch size through the written file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf

from cnnserve.contracts.model_repository import ModelConfig
from cnnserve.contracts.run_dir import REPORT_FILE
from cnnserve.export.pipeline import export_run
from cnnserve.export.run_report import find_exports
from cnnserve.export.tflite_export import TflitePredictor
from cnnserve.training.fold_check import MAX_ABS_LOGIT_DIFF
from cnnserve.training.models import ZOO, build_model, flops_per_image

pytestmark = pytest.mark.slow
SECOND_BATCH = 7


def _reference(source, images: np.ndarray) -> np.ndarray:
    return source.predict_logits(images)


def _scalar_constants_below_rank(model: onnx.ModelProto) -> list[str]:
    """Element-wise ops with a one-element constant of lower rank than the tensor it scales."""
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {i.name: len(i.dims) for i in model.graph.initializer}
    for info in [*inferred.graph.value_info, *inferred.graph.input]:
        ranks[info.name] = len(info.type.tensor_type.shape.dim)
    constants = {i.name: i for i in model.graph.initializer if np.prod(i.dims, dtype=int) == 1}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in ("Add", "Sub", "Mul", "Div")
        for constant, other in (node.input, node.input[::-1])
        if constant in constants and ranks.get(other, 0) > len(constants[constant].dims)
    ]


def _relu_after_conv_pool(model: onnx.ModelProto) -> list[str]:
    """Conv → MaxPool → Relu chains: the ReLU should run fused into the Conv instead."""
    producers = {out: node for node in model.graph.node for out in node.output}

    def op(tensor: str) -> str | None:
        return producers[tensor].op_type if tensor in producers else None

    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Relu"
        and op(node.input[0]) == "MaxPool"
        and op(producers[node.input[0]].input[0]) == "Conv"
    ]


def _tflite_ops(path) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    plain = Interpreter(
        model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    plain.allocate_tensors()
    return [op["op_name"] for op in plain._get_ops_details()]


@pytest.mark.parametrize("name", list(ZOO))
def test_onnx_export(name, zoo_runs, zoo_sources, tmp_path):
    source = zoo_sources[name]
    result = export_run(zoo_runs[name], "onnx", repository=tmp_path, source=source)
    path = tmp_path / name / "1" / "model.onnx"
    assert result.path == path and path.is_file()

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 18
    (graph_input,) = model.graph.input
    assert graph_input.name == "images"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == list(ZOO[name].input_shape)
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert json.loads(metadata["class_labels"]) == list(source.info.class_names)
    assert metadata["source_run"] == str(zoo_runs[name].resolve())
    assert metadata["model"] == name

    # The clean-up removed the Flatten shape arithmetic and never added nodes.
    report = result.report.to_dict()
    assert report["nodes_after"] <= report["nodes_before"] == sum(report["ops_before"].values())
    assert "Shape" not in report["ops_after"] and "Gather" not in report["ops_after"]
    assert report["parity"]["max_abs_logit_diff"] <= MAX_ABS_LOGIT_DIFF
    assert _scalar_constants_below_rank(model) == []
    assert _relu_after_conv_pool(model) == []
    if name == "inception_bn":  # branches 1 and 2 of each of the four inception blocks
        assert report["passes"]["merge_sibling_convs"] == 8
    assert report["parity"]["batch_sizes"] == [1, 256] or report["parity"]["batch_sizes"] == (1, 256)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = source.test.images[:SECOND_BATCH]
    logits, probabilities = session.run(["logits", "probabilities"], {"images": images})
    assert logits.shape == (SECOND_BATCH, 10)
    np.testing.assert_allclose(logits, _reference(source, images), atol=MAX_ABS_LOGIT_DIFF, rtol=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    config = ModelConfig.load(tmp_path / name)
    assert config.platform == "onnxruntime_onnx"
    assert config.inputs[0].shape == (-1, *ZOO[name].input_shape) and config.inputs[0].dtype == "uint8"
    assert [o.name for o in config.outputs] == ["logits", "probabilities"]
    assert config.class_labels == source.info.class_names
    assert config.source_run == str(zoo_runs[name].resolve())
    assert config.test_accuracy == pytest.approx(source.test_accuracy, abs=0.002)
    assert config.provenance.flops_per_image == flops_per_image(build_model(name)) > 0
    if name == "mnist_cnn":  # 2 × (25·784·16 + 400·196·36 + 1764·128 + 128·10) multiply-adds
        assert config.provenance.flops_per_image == 6_726_144
    run_report = json.loads((zoo_runs[name] / REPORT_FILE).read_text())
    (entry,) = find_exports(run_report, repository=str(tmp_path.resolve()), name=name, version=1)
    assert entry["format"] == "onnx" and entry["nodes_after"] == report["nodes_after"]
    assert "fold" in run_report


@pytest.mark.parametrize("name", list(ZOO))
def test_tflite_float32_export(name, zoo_runs, zoo_sources, tmp_path):
    source = zoo_sources[name]
    result = export_run(zoo_runs[name], "tflite", repository=tmp_path, source=source)
    assert result.model_name == f"{name}_tflite"
    assert result.report.to_dict()["parity"]["max_abs_logit_diff"] <= MAX_ABS_LOGIT_DIFF
    predict = TflitePredictor(result.path)
    images = source.test.images[:SECOND_BATCH]
    np.testing.assert_allclose(predict(images), _reference(source, images), atol=MAX_ABS_LOGIT_DIFF)
    assert ModelConfig.load(tmp_path / result.model_name).platform == "tflite"
    # LRN models run a decomposed LRN that XNNPACK takes, not TFLite's serial reference kernel.
    has_lrn = name in ("cifar10_convnet", "alexnet_bn")
    assert result.report.to_dict()["lrn"] == ("decomposed" if has_lrn else None)
    assert "LOCAL_RESPONSE_NORMALIZATION" not in _tflite_ops(result.path)


@pytest.mark.parametrize("name", list(ZOO))
def test_savedmodel_export(name, zoo_runs, zoo_sources, tmp_path):
    source = zoo_sources[name]
    result = export_run(zoo_runs[name], "savedmodel", repository=tmp_path, source=source)
    assert result.path == tmp_path / f"{name}_savedmodel" / "1" / "model.savedmodel"
    loaded = tf.saved_model.load(str(result.path))
    serve = loaded.signatures["serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    assert spec.name == "images" and spec.dtype == tf.uint8 and spec.shape[0] is None
    images = source.test.images[:SECOND_BATCH]
    outputs = serve(images=tf.constant(images))
    assert sorted(outputs) == ["logits", "probabilities"]
    np.testing.assert_allclose(outputs["logits"].numpy(), _reference(source, images), atol=1e-6)


def test_tflite_float16_export(zoo_runs, zoo_sources, tmp_path):
    source = zoo_sources["alexnet_bn"]
    result = export_run(
        zoo_runs["alexnet_bn"], "tflite", quantize="float16", repository=tmp_path, source=source,
        max_accuracy_drop_points=100.0,  # random weights on synthetic images: nothing to keep
    )  # fmt: skip
    assert result.model_name == "alexnet_bn_tflite_float16"
    assert result.report.to_dict()["quantize"] == "float16"
    assert result.report.to_dict()["parity"]["top1_agreement"] >= 0.98


def test_int8_keeps_the_decomposed_lrn_in_float32(zoo_runs, zoo_sources, tmp_path):
    """int8 everywhere else; the LRN layers' x², banded conv, square roots and division stay
    float32 (XNNPACK), not TFLite's serial LRN kernel nor slow int8 Sqrt/Div."""
    source = zoo_sources["cifar10_convnet"]
    result = export_run(
        zoo_runs["cifar10_convnet"], "tflite", quantize="int8", repository=tmp_path, source=source,
        calibration_images=32, max_accuracy_drop_points=100.0,  # random weights: nothing to keep
    )  # fmt: skip
    assert result.report.to_dict()["lrn"] == "decomposed, float32"
    ops = _tflite_ops(result.path)
    assert "LOCAL_RESPONSE_NORMALIZATION" not in ops
    assert ops.count("CONV_2D") == 4  # conv1, conv2 and the two banded sums
    # Two LRNs in float: each x², its banded Conv2D, two square roots, their product, the division.
    float_ops = result.report.to_dict()["float_ops"]
    assert float_ops.count("SQRT") == 4 and float_ops.count("DIV") == 2 and float_ops.count("CONV_2D") == 2
    assert result.report.to_dict()["parity"]["top1_agreement"] >= 0.9


def test_int8_on_fashion_mnist_keeps_accuracy(fashion_run, tmp_path):
    """Full-integer int8 calibrated on real training images loses at most 1 point."""
    float_result = export_run(fashion_run, "tflite", repository=tmp_path)
    result = export_run(fashion_run, "tflite", quantize="int8", repository=tmp_path)
    report = result.report.to_dict()
    assert report["float_test_accuracy"] > 0.75  # the briefly trained model really learned
    assert report["accuracy_drop_points"] <= 1.0
    assert report["test_accuracy"] == pytest.approx(report["float_test_accuracy"], abs=0.01)
    assert result.path.stat().st_size < float_result.path.stat().st_size / 3
    predict = TflitePredictor(result.path)
    assert predict(np.zeros((SECOND_BATCH, 28, 28, 1), np.uint8)).shape == (SECOND_BATCH, 10)
    config = ModelConfig.load(tmp_path / "mnist_cnn_tflite_int8")
    assert config.test_accuracy == report["test_accuracy"]
    assert config.provenance.quantize == "int8"
