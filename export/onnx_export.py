"""Folded SavedModel → ONNX (tf2onnx `from_function`, opset 18), cleaned up, checked, verified;
optionally quantized to int8 (`onnx_quantize`) from the verified float model."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnserve.contracts.names import CPU_PROVIDER, INPUT_NAME, LOGITS, OUTPUT_NAMES
from cnnserve.export.onnx_optimize import OptimizeReport, optimize
from cnnserve.export.onnx_quantize import Int8Settings, QuantizedGraph, quantize_int8
from cnnserve.export.source import ExportSource
from cnnserve.export.verify import ExportError, Parity, accuracy, check_parity, measure_parity

# tf2onnx 1.17 refuses opset 19 and later.
OPSET = 18
BATCH_DIM = "batch"


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    optimize: OptimizeReport
    parity: Parity  # of the written file: for int8, measured against the folded model, not required
    test_accuracy: float
    float_parity: Parity | None = None  # int8: the float ONNX it was quantized from (checked)
    float_accuracy: float | None = None  # int8: the folded float32 model on the same images
    int8: QuantizedGraph | None = None
    size_bytes: int = field(init=False)  # of the file as written, before it moves into place

    def __post_init__(self) -> None:
        object.__setattr__(self, "size_bytes", self.path.stat().st_size)

    @property
    def accuracy_drop_points(self) -> float:
        return 100.0 * ((self.float_accuracy or self.test_accuracy) - self.test_accuracy)

    @property
    def float_test_accuracy(self) -> float | None:
        return self.float_accuracy

    @property
    def nodes(self) -> tuple[int, int]:
        """Graph nodes (before, after) the clean-up passes."""
        return self.optimize.nodes_before, self.optimize.nodes_after

    @property
    def int8_ops(self) -> tuple[str, ...]:
        return self.int8.int8_ops if self.int8 is not None else ()

    @property
    def float_ops(self) -> tuple[str, ...]:
        return self.int8.float_op_names if self.int8 is not None else ()

    def to_dict(self) -> dict:
        report = {
            "file": self.path.name,
            "bytes": self.size_bytes,
            "opset": OPSET,
            "nodes_before": self.optimize.nodes_before,
            "nodes_after": self.optimize.nodes_after,
            "ops_before": self.optimize.ops_before,
            "ops_after": self.optimize.ops_after,
            "passes": self.optimize.passes,
            "parity": self.parity.to_dict(),
            "test_accuracy": self.test_accuracy,
        }
        if self.int8 is not None:
            assert self.float_parity is not None
            report |= {
                "quantize": "int8",
                "float_parity": self.float_parity.to_dict(),
                "float_test_accuracy": self.float_accuracy,
                "accuracy_drop_points": self.accuracy_drop_points,
                **self.int8.to_dict(),
            }
        return report


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
    if inputs != [INPUT_NAME] or sorted(outputs) != sorted(OUTPUT_NAMES):
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


def write_onnx(source: ExportSource, path: Path, metadata: dict[str, str]) -> OptimizeReport:
    """Converts, cleans up and checks the float ONNX model and writes it to `path`, unverified
    (`export_onnx` verifies it; bench checks models with random weights its own way)."""
    import onnx

    model, report = optimize(convert(source))
    _finish(model, source, {**metadata, "class_labels": json.dumps(list(source.info.class_names))})
    onnx.save(model, str(path))
    return report


def _predictor(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=[CPU_PROVIDER])

    def predict(images: np.ndarray) -> np.ndarray:
        return session.run([LOGITS], {INPUT_NAME: images})[0]

    return predict


def export_onnx(
    source: ExportSource,
    path: Path,
    metadata: dict[str, str],
    quantize: str | None = None,
    calibration_images: int = 300,
    max_accuracy_drop_points: float = 1.0,
) -> OnnxExport:
    """Writes the float model to `path`, or with `quantize="int8"` its int8 QDQ version
    (refused when it loses more than `max_accuracy_drop_points` of test accuracy)."""
    if quantize not in (None, "int8"):
        raise ExportError(f"ONNX export quantizes to int8 only, received --quantize {quantize}")
    if quantize is None:
        report = write_onnx(source, path, metadata)
        predict = _predictor(path)
        parity = check_parity("ONNX", source, predict)
        return OnnxExport(path, report, parity, accuracy(predict, source.test))
    with tempfile.TemporaryDirectory(prefix="cnnserve-onnx-") as workdir:
        float_path = Path(workdir) / "float.onnx"
        report = write_onnx(source, float_path, metadata)
        float_parity = check_parity("ONNX", source, _predictor(float_path))
        graph = quantize_int8(float_path, path, source.train.images[:calibration_images], Int8Settings())
    predict = _predictor(path)
    result = OnnxExport(
        path, report, measure_parity(source, predict), accuracy(predict, source.test),
        float_parity, source.test_accuracy, graph,
    )  # fmt: skip
    if result.accuracy_drop_points > max_accuracy_drop_points:
        raise ExportError(
            f"ONNX int8 loses {result.accuracy_drop_points:.2f} accuracy points "
            f"({source.test_accuracy:.4f} → {result.test_accuracy:.4f}, limit "
            f"{max_accuracy_drop_points:g}); calibrate on more images with --calibration-images, "
            "serve the float32 export, or raise --max-accuracy-drop"
        )
    return result
