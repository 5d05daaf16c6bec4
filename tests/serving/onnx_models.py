"""Small but real ONNX classifiers, built with onnx.helper, and a model repository writer.

They follow the exporter's contract: input `images` uint8 NHWC with a symbolic batch
dimension, outputs `logits` and `probabilities` float32 [N, classes].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cnnserve.contracts.model_repository import ModelConfig, TensorSpec, VersionPolicy

FASHION_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _io(height: int, width: int, channels: int, classes: int) -> tuple[list, list]:
    inputs = [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", height, width, channels])]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes]),
    ]
    return inputs, outputs


def _model(nodes: list, inputs: list, outputs: list, initializers: list, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "classifier", inputs, outputs, initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="cnnserve-tests"
    )
    model.ir_version = 8
    return model


_SCALE = numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale")


def _scaled_nchw() -> list[onnx.NodeProto]:
    """uint8 NHWC `images` → float pixels / 255 (`scale`) → NCHW `nchw`, as the exporter's graphs do."""
    return [
        helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pixels", "scale"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),
    ]


def cnn_model(
    height: int = 28, width: int = 28, channels: int = 1, classes: int = 10, seed: int = 0, opset: int = 17
) -> onnx.ModelProto:
    """uint8 → Cast → /255 → NCHW → Conv-Relu-MaxPool → Conv-Relu → GAP → Gemm → logits, Softmax."""
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)

    initializers = [
        _SCALE,
        weight("conv1_w", 8, channels, 3, 3),
        weight("conv1_b", 8),
        weight("conv2_w", 16, 8, 3, 3),
        weight("conv2_b", 16),
        weight("dense_w", 16, classes),
        weight("dense_b", classes),
    ]
    nodes = [
        *_scaled_nchw(),
        helper.make_node("Conv", ["nchw", "conv1_w", "conv1_b"], ["conv1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "conv2_w", "conv2_b"], ["conv2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("GlobalAveragePool", ["relu2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["features"]),
        helper.make_node("Gemm", ["features", "dense_w", "dense_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    return _model(nodes, *_io(height, width, channels, classes), initializers, opset)


def flatten_cnn_model(filters: int, classes: int = 10, seed: int = 2, opset: int = 17) -> onnx.ModelProto:
    """mnist_cnn's shape on 28x28x1: uint8 → /255 → NCHW → Conv(`filters`) → Relu → MaxPool →
    flatten → MatMul → logits, Softmax (the chain the CPU filter padding rewrites)."""
    rng = np.random.default_rng(seed)
    initializers = [
        _SCALE,
        numpy_helper.from_array(rng.normal(0, 0.3, (filters, 1, 5, 5)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, filters).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([-1, filters * 196], np.int64), "flat"),
        numpy_helper.from_array(rng.normal(0, 0.1, (filters * 196, classes)).astype(np.float32), "fc"),
    ]
    nodes = [
        *_scaled_nchw(),
        helper.make_node("Conv", ["nchw", "w", "b"], ["conv"], pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["pool", "flat"], ["features"]),
        helper.make_node("MatMul", ["features", "fc"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    return _model(nodes, *_io(28, 28, 1, classes), initializers, opset)


def identity_model(
    height: int = 28, width: int = 28, channels: int = 1, classes: int = 10, opset: int = 17
) -> onnx.ModelProto:
    """Almost no compute: logits are the first `classes` pixels, so each row names its image."""
    initializers = [
        numpy_helper.from_array(np.array([0, height * width * channels], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "start"),
        numpy_helper.from_array(np.array([classes], dtype=np.int64), "end"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
    ]
    nodes = [
        helper.make_node("Reshape", ["images", "flat_shape"], ["flat"]),
        helper.make_node("Slice", ["flat", "start", "end", "axis"], ["first"]),
        helper.make_node("Cast", ["first"], ["logits"], to=TensorProto.FLOAT),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    return _model(nodes, *_io(height, width, channels, classes), initializers, opset)


def write_model(
    repository: Path,
    name: str,
    model: onnx.ModelProto | bytes,
    *,
    versions: Sequence[int] = (1,),
    image_shape: tuple[int, int, int] = (28, 28, 1),
    classes: int = 10,
    labels: Sequence[str] = FASHION_LABELS,
    max_batch_size: int = 8,
    max_queue_delay_ms: float = 2.0,
    version_policy: VersionPolicy | None = None,
    instance_count: int = 1,
) -> Path:
    """Write `models/<name>/config.json` and `<version>/model.onnx` as the exporter does."""
    model_dir = repository / name
    config = ModelConfig(
        name=name,
        platform="onnxruntime_onnx",
        inputs=(TensorSpec("images", "uint8", (-1, *image_shape)),),
        outputs=(
            TensorSpec("logits", "float32", (-1, classes)),
            TensorSpec("probabilities", "float32", (-1, classes)),
        ),
        class_labels=tuple(labels),
        max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms,
        version_policy=version_policy or VersionPolicy(),
        instance_count=instance_count,
    )
    data = model if isinstance(model, bytes) else model.SerializeToString()
    for version in versions:
        (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
        (model_dir / str(version) / config.model_file).write_bytes(data)
    config.save(model_dir)
    return model_dir


def images(count: int, shape: tuple[int, int, int] = (28, 28, 1), seed: int = 0) -> np.ndarray:
    """Random uint8 images whose first pixels differ, so identity-model rows are distinguishable."""
    batch = np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)
    batch.reshape(count, -1)[:, 0] = np.arange(count) % 256
    return batch
