"""Where each backend's model file comes from: a model repository or a synthetic zoo build.

Repository layout (what `cnnserve export` writes; the newest version is measured):
    onnxruntime          <repo>/<model>/<v>/model.onnx
    onnxruntime_int8     <repo>/<model>_int8/<v>/model.onnx
    tensorflow_folded    <repo>/<model>_savedmodel/<v>/model.savedmodel/
    tflite_float32       <repo>/<model>_tflite/<v>/model.tflite
    tflite_int8          <repo>/<model>_tflite_int8/<v>/model.tflite
    tensorflow_unfolded  <config.source_run>/model.keras (the training run it came from)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from cnnserve.bench import export_adapter
from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.model_repository import CONFIG_FILE, ModelConfig, model_versions
from cnnserve.contracts.run_dir import MODEL_FILE

_LOGGER = logging.getLogger(__name__)
# variant → (export format, quantize)
EXPORT_FORMATS: dict[str, tuple[str, str | None]] = {
    "onnxruntime": ("onnx", None),
    "onnxruntime_int8": ("onnx", "int8"),
    "tensorflow_folded": ("savedmodel", None),
    "tflite_float32": ("tflite", None),
    "tflite_int8": ("tflite", "int8"),
}


@dataclass(frozen=True)
class ModelArtifacts:
    model: str  # the name results are reported under
    zoo_model: str | None  # for the FLOP count; None when the model is not from the zoo
    input_shape: tuple[int, int, int]
    files: dict[str, Path]  # variant → file or directory
    missing: dict[str, str] = field(default_factory=dict)  # variant → why it cannot run


def _latest(model_dir: Path) -> tuple[ModelConfig, Path] | None:
    if not (model_dir / CONFIG_FILE).is_file():
        return None
    config = ModelConfig.load(model_dir)
    versions = model_versions(model_dir)
    if not versions:
        return None
    return config, model_dir / str(versions[-1]) / config.model_file


def _zoo_name(model: str, configs: list[ModelConfig]) -> str | None:
    from cnnserve.contracts.run_dir import load_run_info
    from cnnserve.training.models import ZOO

    for config in configs:
        if config.provenance.model in ZOO:
            return config.provenance.model
        if config.source_run:
            try:
                return load_run_info(Path(config.source_run)).model
            except CnnserveError:
                continue
    return model if model in ZOO else None


def from_repository(repository: Path, model: str, variants: tuple[str, ...]) -> ModelArtifacts:
    """The newest version of each variant's artefact of `model` in `repository`."""
    if not repository.is_dir():
        raise CnnserveError(
            f"--repository {repository} is not a directory (create it with 'cnnserve export')"
        )
    found: dict[str, tuple[ModelConfig, Path]] = {}
    missing: dict[str, str] = {}
    for variant, (fmt, quantize) in EXPORT_FORMATS.items():
        name = export_adapter.repository_name(model, fmt, quantize)
        entry = _latest(repository / name)
        if entry is not None and entry[1].exists():
            found[variant] = entry
        elif variant in variants:
            flags = f"--format {fmt}" + (f" --quantize {quantize}" if quantize else "")
            missing[variant] = f"no {repository / name} (export it with 'cnnserve export RUN {flags}')"
    if not found:
        available = sorted(p.name for p in repository.iterdir() if (p / CONFIG_FILE).is_file())
        raise CnnserveError(
            f"unknown model {model!r}: not in repository {repository}; "
            f"available: {', '.join(available) or 'none'}"
        )
    configs = [config for config, _ in found.values()]
    files = {variant: path for variant, (_, path) in found.items() if variant in variants}
    if "tensorflow_unfolded" in variants:
        runs = [Path(c.source_run) / MODEL_FILE for c in configs if c.source_run]
        run_file = next((path for path in runs if path.is_file()), None)
        if run_file is None:
            missing["tensorflow_unfolded"] = "the repository does not name a training run with a model.keras"
        else:
            files["tensorflow_unfolded"] = run_file
    shape = tuple(int(d) for d in configs[0].inputs[0].shape[1:])
    return ModelArtifacts(model, _zoo_name(model, configs), shape, files, missing)  # type: ignore[arg-type]


def synthetic(model: str, variants: tuple[str, ...], workdir: Path) -> ModelArtifacts:
    """Builds zoo `model` with random weights and converts it to every requested format."""
    from cnnserve.training.models import build_model, get_spec

    spec = get_spec(model)  # raises the one-line "unknown model" error
    keras_model = build_model(model)
    workdir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    if "tensorflow_unfolded" in variants:
        files["tensorflow_unfolded"] = workdir / MODEL_FILE
        keras_model.save(files["tensorflow_unfolded"])
    _LOGGER.info("converting synthetic %s (fold, ONNX, TFLite)", model)
    exported = export_adapter.export_synthetic(
        model, keras_model, workdir,
        tflite="tflite_float32" in variants, tflite_int8="tflite_int8" in variants,
        onnx_int8="onnxruntime_int8" in variants,
    )  # fmt: skip
    candidates = {
        "onnxruntime": exported.onnx,
        "onnxruntime_int8": exported.onnx_int8,
        "tensorflow_folded": exported.savedmodel,
        "tflite_float32": exported.tflite,
        "tflite_int8": exported.tflite_int8,
    }
    files.update({v: p for v, p in candidates.items() if v in variants and p is not None})
    return ModelArtifacts(model, model, spec.input_shape, files)


def flops_per_image(zoo_model: str | None) -> int | None:
    """The zoo's FLOP count (2 × multiply-adds of conv and dense layers) for one image."""
    if zoo_model is None:
        return None
    from cnnserve.training.models import ZOO, build_model
    from cnnserve.training.models import flops_per_image as count

    return count(build_model(zoo_model)) if zoo_model in ZOO else None
