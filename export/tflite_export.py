"""Folded SavedModel → TFLite: float32, float16, or int8 calibrated on real training images.

Models with LRN are converted from the folded model traced again with the LRN layers
decomposed into ops XNNPACK runs (training's `with_decomposed_lrn`): TFLite's own LRN is a
serial reference kernel. In int8 models those decomposed layers stay float32
(QuantizationDebugger's node denylist): quantized, their Sqrt and Div would run on slow int8
reference kernels (BENCHMARKS.md, "TFLite and LRN"). Parity is checked against the folded
SavedModel either way.

int8 is full-integer post-training quantization: every other op with an int8 kernel runs in
int8; the report lists the ops left in float (the uint8 → float Cast at the input, the LRN
layers), which the converter wraps in quantize/dequantize. Outputs stay float32 so every format
serves the same `logits` and `probabilities`.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from cnnserve.contracts.names import SERVING_SIGNATURE
from cnnserve.export.source import ExportSource
from cnnserve.export.verify import ExportError, Parity, accuracy, check_parity, measure_parity
from cnnserve.training.api import LocalResponseNormalization, save_inference_savedmodel, with_decomposed_lrn

QUANTIZE_CHOICES = ("float16", "int8")
CALIBRATION_IMAGES = 300
# Ops that carry no arithmetic: their float inputs are not "left in float".
_PLUMBING = {"QUANTIZE", "DEQUANTIZE", "SHAPE", "STRIDED_SLICE", "PACK", "RESHAPE"}


LrnForm = Literal["decomposed", "decomposed, float32"]


@dataclass(frozen=True)
class TfliteExport:
    path: Path
    quantize: str | None
    parity: Parity
    test_accuracy: float
    float_accuracy: float  # the folded float32 model on the same images
    float_ops: tuple[str, ...]  # arithmetic ops still computed in float32
    lrn: LrnForm | None = None  # how a model with LRN runs it (int8 keeps it float32)
    size_bytes: int = field(init=False)  # of the file as written, before it moves into place

    def __post_init__(self) -> None:
        object.__setattr__(self, "size_bytes", self.path.stat().st_size)

    @property
    def accuracy_drop_points(self) -> float:
        return 100.0 * (self.float_accuracy - self.test_accuracy)

    @property
    def float_test_accuracy(self) -> float:
        return self.float_accuracy

    @property
    def nodes(self) -> None:
        return None

    @property
    def int8_ops(self) -> tuple[str, ...]:
        return ()

    def to_dict(self) -> dict:
        return {
            "file": self.path.name,
            "bytes": self.size_bytes,
            "quantize": self.quantize or "float32",
            "parity": self.parity.to_dict(),
            "test_accuracy": self.test_accuracy,
            "float_test_accuracy": self.float_accuracy,
            "accuracy_drop_points": self.accuracy_drop_points,
            "float_ops": list(self.float_ops),
            "lrn": self.lrn,
        }


@contextlib.contextmanager
def _convertible_savedmodel(source: ExportSource) -> Iterator[Path]:
    """The folded SavedModel, or for models with LRN a retrace with LRN decomposed."""
    if not source.has_lrn:
        yield source.savedmodel_dir
        return
    with tempfile.TemporaryDirectory(prefix="cnnserve-tflite-") as workdir:
        save_inference_savedmodel(with_decomposed_lrn(source.folded_model), Path(workdir) / "model")
        yield Path(workdir) / "model"


def convert(source: ExportSource, quantize: str | None, calibration_images: int) -> bytes:
    with _convertible_savedmodel(source) as savedmodel:
        return _convert(savedmodel, source, quantize, calibration_images)


def _convert(savedmodel: Path, source: ExportSource, quantize: str | None, calibration_images: int) -> bytes:
    import tensorflow as tf

    converter = _converter(savedmodel)
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        # The model's own preprocessing is in the graph, so calibration feeds raw uint8 images.
        images = source.train.images[:calibration_images]
        if len(images) == 0:
            raise ExportError("no training images to calibrate int8 quantization on")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([images[i : i + 1]] for i in range(len(images)))
        if source.has_lrn:
            return _int8_with_float_lrn(converter, savedmodel, source, images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return _run_converter(converter, quantize or "float32")


def _converter(savedmodel: Path):
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_saved_model(str(savedmodel), signature_keys=[SERVING_SIGNATURE])


def _run_converter(converter, what: str, convert: Callable[[], bytes] | None = None) -> bytes:
    try:
        return (convert or converter.convert)()
    except Exception as error:  # the converter raises bare ConverterError/RuntimeError
        last = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ExportError(f"TFLite conversion ({what}) failed: {last}") from None


def _int8_with_float_lrn(converter, savedmodel: Path, source: ExportSource, images: np.ndarray) -> bytes:
    """int8 everywhere except the decomposed LRN layers' ops, found by name in the float model."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    float_model = _run_converter(_converter(savedmodel), "float32, to find the LRN ops")
    names = [
        layer.name for layer in source.folded_model.layers if isinstance(layer, LocalResponseNormalization)
    ]
    # Keras names the traced scope `<layer>_<n>`: `cifar10_convnet_1/norm1_1/Sqrt`.
    in_lrn = re.compile(r"(^|/)(" + "|".join(map(re.escape, names)) + r")(_\d+)?/")
    tensors = Interpreter(model_content=float_model).get_tensor_details()
    denylisted = sorted({t["name"] for t in tensors if in_lrn.search(t["name"])})
    if not denylisted:
        raise ExportError(f"TFLite int8: found no ops of the LRN layers {names} to keep in float32")

    def quantize_all_but_lrn() -> bytes:
        with warnings.catch_warnings():  # the debugger's own use of tf.lite.Interpreter, not ours
            warnings.filterwarnings("ignore", message=r"\s*Warning: tf\.lite\.Interpreter is deprecated")
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter,
                debug_dataset=lambda: ([images[i : i + 1]] for i in range(min(8, len(images)))),
                debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylisted),
            )
            return debugger.get_nondebug_quantized_model()

    return _run_converter(converter, "int8", quantize_all_but_lrn)


class TflitePredictor:
    """Runs the `serving_default` signature with ai_edge_litert, any batch size."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = str(path)
        self.interpreter = Interpreter(model_path=self.path, num_threads=2)
        self.runner = self.interpreter.get_signature_runner(SERVING_SIGNATURE)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.runner(images=images)["logits"]

    def float_ops(self) -> tuple[str, ...]:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        # Without the XNNPACK delegate, which would hide the ops behind DELEGATE nodes.
        plain = Interpreter(
            model_path=self.path,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        plain.allocate_tensors()
        tensors = {t["index"]: t for t in plain.get_tensor_details()}
        names = []
        for op in plain._get_ops_details():
            inputs = [tensors[i] for i in op["inputs"] if i >= 0 and i in tensors]
            if op["op_name"] not in _PLUMBING and any(t["dtype"] == np.float32 for t in inputs):
                names.append(op["op_name"])
        return tuple(names)


def export_tflite(
    source: ExportSource,
    path: Path,
    quantize: str | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    max_accuracy_drop_points: float = 1.0,
) -> TfliteExport:
    if quantize not in (None, *QUANTIZE_CHOICES):
        raise ExportError(f"unsupported quantization {quantize!r}; choose float16 or int8")
    path.write_bytes(convert(source, quantize, calibration_images))
    predict = TflitePredictor(path)
    if quantize is None:
        parity = check_parity("TFLite float32", source, predict)
    else:
        parity = measure_parity(source, predict)  # reported; accuracy is the bar for quantized
    float_accuracy = source.test_accuracy
    lrn: LrnForm | None = None
    if source.has_lrn:
        lrn = "decomposed, float32" if quantize == "int8" else "decomposed"
    result = TfliteExport(
        path, quantize, parity, accuracy(predict, source.test), float_accuracy,
        predict.float_ops() if quantize == "int8" else (), lrn,
    )  # fmt: skip
    if quantize and result.accuracy_drop_points > max_accuracy_drop_points:
        raise ExportError(
            f"TFLite {quantize} loses {result.accuracy_drop_points:.2f} accuracy points "
            f"({float_accuracy:.4f} → {result.test_accuracy:.4f}, limit "
            f"{max_accuracy_drop_points:g}); calibrate on more images with --calibration-images, "
            "use --quantize float16, or raise --max-accuracy-drop"
        )
    return result
