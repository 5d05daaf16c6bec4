"""The benchmark's only door into BatchNorm folding (training's public API) and the exporters.

`--synthetic` builds zoo models with random weights and must turn them into the very artefacts
`cnnserve export` writes: fold, save the inference SavedModel, convert to ONNX (tf2onnx plus
the exporter's graph clean-up) and TFLite. Reusing the exporter's functions keeps the synthetic
figures honest; keeping every call to them in this one module means a change on the export
side is absorbed here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.names import CPU_PROVIDER, INPUT_NAME, LOGITS

SYNTHETIC_PARITY_IMAGES = 64
SYNTHETIC_CALIBRATION_IMAGES = 64
RELATIVE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportedFiles:
    savedmodel: Path
    onnx: Path
    tflite: Path | None
    tflite_int8: Path | None
    onnx_int8: Path | None = None


def repository_name(model: str, fmt: str, quantize: str | None = None) -> str:
    """The name `cnnserve export` gives `model` in a repository for this format."""
    from cnnserve.export.pipeline import default_model_name

    return default_model_name(model, fmt, quantize)


def fold(model):
    """The inference-only Keras model, every BatchNormalization folded away."""
    from cnnserve.training.api import fold_model

    return fold_model(model).model


def _synthetic_source(model_name: str, input_shape: tuple[int, int, int], savedmodel: Path, folded):
    """An `ExportSource` over `savedmodel` (folded from `folded`) whose splits are synthetic
    images: `train` feeds int8 calibration, `test` the relative ONNX check."""
    from cnnserve.contracts.run_dir import RunInfo
    from cnnserve.export.source import ExportSource
    from cnnserve.training.api import synthetic_split

    info = RunInfo(
        model=model_name, dataset="synthetic", class_names=tuple(str(i) for i in range(10)),
        input_shape=input_shape, optimizer="none", learning_rate=0.0, batch_size=1, steps=0,
        epochs=0, seed=0,
    )  # fmt: skip
    return ExportSource.from_model(
        info, savedmodel, folded,
        test=synthetic_split(input_shape, SYNTHETIC_PARITY_IMAGES, seed=1),
        train=synthetic_split(input_shape, SYNTHETIC_CALIBRATION_IMAGES, seed=2),
        parity_images=SYNTHETIC_PARITY_IMAGES,
    )  # fmt: skip


def folded_source(model_name: str, keras_model, workdir: Path):
    """Folds `keras_model`, saves workdir/model.savedmodel and returns the `ExportSource` the
    exporters read, over synthetic images."""
    from cnnserve.training.api import save_inference_savedmodel

    input_shape = tuple(int(d) for d in keras_model.inputs[0].shape[1:])
    savedmodel = workdir / "model.savedmodel"
    folded = fold(keras_model)
    save_inference_savedmodel(folded, savedmodel)
    return _synthetic_source(model_name, input_shape, savedmodel, folded)  # type: ignore[arg-type]


def export_synthetic(
    model_name: str,
    keras_model,
    workdir: Path,
    tflite: bool = True,
    tflite_int8: bool = True,
    onnx_int8: bool = False,
) -> ExportedFiles:
    """Folds `keras_model` and writes model.savedmodel, model.onnx and model*.tflite under workdir.

    The exporter's converters are used as they are; its parity gates are not, because their
    absolute tolerance is set for trained logits and random weights give logits hundreds of
    times larger. A relative check of the ONNX model stands in for them (`check_relative`).
    """
    from cnnserve.export.onnx_export import write_onnx
    from cnnserve.export.onnx_quantize import quantize_int8
    from cnnserve.export.tflite_export import convert as convert_tflite

    source = folded_source(model_name, keras_model, workdir)
    onnx_path = workdir / "model.onnx"
    write_onnx(source, onnx_path, {"model": model_name, "dataset": "synthetic"})
    check_relative(onnx_path, source)
    tflite_path = int8_path = None
    if tflite:
        tflite_path = workdir / "model.tflite"
        tflite_path.write_bytes(convert_tflite(source, None, SYNTHETIC_CALIBRATION_IMAGES))
    if tflite_int8:
        int8_path = workdir / "model_int8.tflite"
        int8_path.write_bytes(convert_tflite(source, "int8", SYNTHETIC_CALIBRATION_IMAGES))
    onnx_int8_path = None
    if onnx_int8:
        onnx_int8_path = workdir / "model_int8.onnx"
        quantize_int8(onnx_path, onnx_int8_path, source.train.images)
    return ExportedFiles(source.savedmodel_dir, onnx_path, tflite_path, int8_path, onnx_int8_path)


def check_relative(onnx_path: Path, source, tolerance: float = RELATIVE_TOLERANCE) -> None:
    """ONNX Runtime's logits vs the folded SavedModel's, relative to the largest logit."""
    import onnxruntime as ort

    images = source.test.images
    expected = np.asarray(source.predict_logits(images), np.float64)
    session = ort.InferenceSession(str(onnx_path), providers=[CPU_PROVIDER])
    got = np.asarray(session.run([LOGITS], {INPUT_NAME: images})[0], np.float64)
    error = float(np.max(np.abs(got - expected)) / max(1.0, float(np.max(np.abs(expected)))))
    if error > tolerance:
        raise CnnserveError(
            f"synthetic {source.info.model}: ONNX logits differ from the folded SavedModel by "
            f"{error:.3g} of the largest logit (limit {tolerance:g}); report this to the export owners"
        )
