"""Float ONNX → int8 ONNX: ONNX Runtime's static QDQ quantization, calibrated on real training images.

QDQ (QuantizeLinear/DequantizeLinear around each quantized op) is the format ONNX Runtime's
CPU and CUDA/TensorRT providers fuse into int8 kernels (QLinearConv, QLinearMatMul); the file
stays a standard ONNX graph with the float model's interface: uint8 `images` in, float32
`logits` and `probabilities` out, so the server serves it like any other export.

Choices, each for a reason:
- Weights int8 per output channel: BatchNorm folding scales each conv filter by its own
  γ/σ, so the filters of one layer span very different ranges and one scale per tensor
  would crush the small ones.
- Activations uint8, weights reduced to 7 bits (`reduce_range`): on x86 without VNNI the
  u8·s8 multiply-add pairs can saturate int16 at the full 8 bits; ONNX Runtime recommends
  this pair for CPUs, and it costs nothing measurable in accuracy on these models.
- Only the conv/matmul chain is quantized (with the pools, ReLUs and reshapes between them):
  the in-graph preprocessing (scaling, mean image, per-image standardization), the bias adds
  and the softmax stay float32, as do the decomposed LRN layers (a sum of squares and square
  roots; int8 there costs accuracy for no speed), as in the TFLite int8 export.
- MinMax calibration: the activations' observed range over the calibration images.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from cnnserve.export.onnx_passes.lrn import LRN_MARK  # in the name of every decomposed LRN's node
from cnnserve.export.verify import ExportError

# What gets quantized: the compute ops and the data movement between them (so the int8
# tensors flow from one QLinearConv/QLinearMatMul to the next without a float round trip).
QUANTIZED_OPS = (
    "Conv", "MatMul", "Gemm", "Relu", "Clip", "MaxPool", "AveragePool",
    "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat",
)  # fmt: skip
CALIBRATION_BATCH = 32
_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_ARITHMETIC = {"Conv", "MatMul", "Gemm", "Add", "Mul", "Div", "Sub", "Sqrt", "Pow", "Softmax", "ReduceMean"}


@dataclass(frozen=True)
class Int8Settings:
    per_channel: bool = True
    reduce_range: bool = True
    calibration_batch: int = CALIBRATION_BATCH

    def __post_init__(self) -> None:
        if self.calibration_batch < 1:
            raise ExportError(f"calibration batch must be >= 1, received {self.calibration_batch}")


@dataclass(frozen=True)
class QuantizedGraph:
    """What the quantizer did, counted on the written graph."""

    quantized_ops: dict[str, int]  # op type → nodes that run in int8
    float_ops: dict[str, int]  # op type → arithmetic nodes that run in float32
    excluded_nodes: tuple[str, ...]  # kept float on purpose (the LRN layers)
    calibration_images: int
    settings: Int8Settings

    @property
    def int8_ops(self) -> tuple[str, ...]:
        """One op type per int8 node, like the TFLite int8 report."""
        return tuple(op for op, count in self.quantized_ops.items() for _ in range(count))

    @property
    def float_op_names(self) -> tuple[str, ...]:
        """One op type per float32 arithmetic node."""
        return tuple(op for op, count in self.float_ops.items() for _ in range(count))

    def to_dict(self) -> dict:
        return {
            # As lists of op names (one per node), like the TFLite int8 report.
            "int8_ops": list(self.int8_ops),
            "float_ops": list(self.float_op_names),
            "excluded_nodes": list(self.excluded_nodes),
            "calibration_images": self.calibration_images,
            "calibration": "minmax",
            "quantization_format": "QDQ",  # not "format": that key is the export format (onnx)
            "activations": "uint8",
            "weights": "int8, 7-bit range" if self.settings.reduce_range else "int8",
            **{key: value for key, value in asdict(self.settings).items() if key != "reduce_range"},
        }


class _Images:
    """ONNX Runtime's CalibrationDataReader protocol over uint8 images, in batches."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int) -> None:
        self._batches = iter([images[i : i + batch] for i in range(0, len(images), batch)])
        self.input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer logs "consider pre-processing" on the root logger at every call: our graph
    is already shape-inferred and cleaned by onnx_optimize, so the advice does not apply."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-processing" not in record.getMessage()

    drop = _Drop()
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def quantize_int8(
    float_path: Path, path: Path, images: np.ndarray, settings: Int8Settings = Int8Settings()
) -> QuantizedGraph:
    """Writes the int8 QDQ version of `float_path` to `path`, calibrated on `images` (uint8 NHWC)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if len(images) == 0:
        raise ExportError("no training images to calibrate int8 quantization on")
    model = onnx.load(str(float_path))
    excluded = tuple(node.name for node in model.graph.node if LRN_MARK in node.name)
    reader = _Images(model.graph.input[0].name, images, settings.calibration_batch)
    try:
        with _quiet_quantizer():
            quantize_static(
                str(float_path), str(path), reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=list(excluded),
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )  # fmt: skip
    except Exception as error:  # the quantizer raises bare ValueError/RuntimeError/ORT errors
        last = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ExportError(f"ONNX Runtime int8 quantization failed: {last}") from None
    quantized = onnx.load(str(path))
    quantized.metadata_props.add(key="quantize", value="int8")
    onnx.checker.check_model(quantized, full_check=True)
    onnx.save(quantized, str(path))
    quantized_ops, float_ops = count_ops(quantized)
    return QuantizedGraph(quantized_ops, float_ops, excluded, len(images), settings)


def count_ops(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """(op types running in int8, arithmetic op types running in float32).

    In QDQ form an op runs in int8 when it is of a quantized type, reads dequantized inputs and
    its outputs go only to QuantizeLinear: the pattern ONNX Runtime fuses into a QLinear* kernel.
    A float op between a DequantizeLinear and a QuantizeLinear (an LRN's division) stays float."""
    dequantized = {
        out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output
    }
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    outputs = {output.name for output in model.graph.output}
    quantized, floating = Counter(), Counter()
    for node in model.graph.node:
        if node.op_type in _QDQ:
            continue
        requantized = all(
            out not in outputs and readers.get(out) and set(readers[out]) == {"QuantizeLinear"}
            for out in node.output
        )
        if node.op_type in QUANTIZED_OPS and requantized and any(name in dequantized for name in node.input):
            quantized[node.op_type] += 1
        elif node.op_type in _ARITHMETIC:
            floating[node.op_type] += 1
    return dict(sorted(quantized.items())), dict(sorted(floating.items()))
