"""Folded SavedModel → ONNX (tf2onnx `from_function`, opset 18), cleaned up, checked, verified."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cnnserve.export.onnx_optimize import OptimizeReport, optimize
from cnnserve.export.source import ExportSource
from cnnserve.export.verify import ExportError, Parity, accuracy, check_parity

# tf2onnx 1.17 refuses opset 19 and later.
OPSET = 18
BATCH_DIM = "batch"


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    optimize: OptimizeReport
    parity: Parity
    test_accuracy: float

    def to_dict(self) -> dict:
        return {
            "file": self.path.name,
            "bytes": self.path.stat().st_size,
            "opset": OPSET,
            "nodes_before": self.optimize.nodes_before,
            "nodes_after": self.optimize.nodes_after,
            "ops_before": self.optimize.ops_before,
            "ops_after": self.optimize.ops_after,
            "passes": self.optimize.passes,
            "parity": asdict(self.parity),
            "test_accuracy": self.test_accuracy,
        }


def convert(source: ExportSource):
    """The raw tf2onnx model: uint8 `images` NHWC in, `logits` and `probabilities` out."""
    import tf2onnx

    # tf2onnx logs each optimizer step at INFO; our report carries the numbers that matter.
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    serve = source.serving_function()
    model, _ = tf2onnx.convert.from_function(serve, input_signature=[source.input_spec], opset=OPSET)
    return model


def _finish(model, source: ExportSource, metadata: dict[str, str]) -> None:
    """Names the batch dimension, records provenance, checks the interface."""
    import onnx

    inputs = [tensor.name for tensor in model.graph.input]
    outputs = [tensor.name for tensor in model.graph.output]
    if inputs != ["images"] or sorted(outputs) != ["logits", "probabilities"]:
        raise ExportError(f"converted ONNX model has inputs {inputs}, outputs {outputs}")
    for tensor in [*model.graph.input, *model.graph.output]:
        tensor.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    if model.graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        raise ExportError("converted ONNX model does not take uint8 images")
    model.graph.name = source.info.model
    model.doc_string = f"cnnserve {source.info.model} from {source.run_dir}"
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)


def export_onnx(source: ExportSource, path: Path, metadata: dict[str, str]) -> OnnxExport:
    import onnx
    import onnxruntime as ort

    model, report = optimize(convert(source))
    _finish(model, source, {**metadata, "class_labels": json.dumps(list(source.info.class_names))})
    onnx.save(model, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def predict(images: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"images": images})[0]

    parity = check_parity("ONNX", source, predict)
    return OnnxExport(path, report, parity, accuracy(predict, source.test))
