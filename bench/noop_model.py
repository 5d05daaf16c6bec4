"""A no-op model for the server benchmark: the exporter's interface, almost no compute.

Served through exactly the same path as a real model (gRPC, decoding, batcher, ONNX Runtime,
encoding), its latency is the server's own per-request cost. It reads one pixel per image so
the batch dimension flows through the graph, and answers `logits` and `probabilities` [N, 10].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.model_repository import ModelConfig, Provenance, TensorSpec

CLASSES = 10
OPSET = 17
DEFAULT_NAME = "noop"


def build_noop(input_shape: tuple[int, int, int], classes: int = CLASSES):
    """uint8 images [N,H,W,C] → logits = first pixel repeated `classes` times, softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    pixels = int(np.prod(input_shape))
    constants = {
        "flat_shape": np.array([-1, pixels], np.int64),
        "start": np.array([0], np.int64),
        "end": np.array([1], np.int64),
        "axis": np.array([1], np.int64),
        "repeats": np.array([1, classes], np.int64),
    }
    nodes = [
        helper.make_node("Reshape", ["images", "flat_shape"], ["flat"]),
        helper.make_node("Slice", ["flat", "start", "end", "axis"], ["first"]),
        helper.make_node("Cast", ["first"], ["first_float"], to=TensorProto.FLOAT),
        helper.make_node("Tile", ["first_float", "repeats"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "noop",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", *input_shape])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes]),
        ],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cnnserve-bench"
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_noop(
    repository: Path,
    input_shape: tuple[int, int, int],
    name: str = DEFAULT_NAME,
    max_batch_size: int = 64,
    max_queue_delay_ms: float = 0.0,
    overwrite: bool = False,
) -> Path:
    """Writes `repository/<name>/1/model.onnx` and `config.json` (the stable repository contract)."""
    model_dir = repository / name
    if model_dir.exists() and not overwrite:
        raise CnnserveError(f"{model_dir} already exists; pass --overwrite to replace it")
    config = ModelConfig(
        name=name,
        platform="onnxruntime_onnx",
        inputs=(TensorSpec("images", "uint8", (-1, *input_shape)),),
        outputs=(
            TensorSpec("logits", "float32", (-1, CLASSES)),
            TensorSpec("probabilities", "float32", (-1, CLASSES)),
        ),
        class_labels=tuple(str(i) for i in range(CLASSES)),
        max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms,
        provenance=Provenance(noop=True, purpose="cnnserve bench server: per-request overhead"),
    )
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / config.model_file).write_bytes(build_noop(input_shape).SerializeToString())
    config.save(model_dir)
    return version_dir
