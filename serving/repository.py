"""Find the servable model versions in a Triton-layout model repository.

Only directory names that match the model-name alphabet become models, and requests later
look models up in the table built here: a name from the network never becomes a path.
A model whose config or files are broken becomes a `LoadFailure` instead of stopping the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cnnserve.errors import CnnserveError
from cnnserve.export.model_config import (
    CONFIG_FILE,
    MODEL_NAME_PATTERN,
    VERSION_DIR_PATTERN,
    ModelConfig,
    model_versions,
)

_LOGGER = logging.getLogger(__name__)
SERVED_PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True)
class VersionSpec:
    """One model version on disk, ready to be handed to ONNX Runtime."""

    config: ModelConfig
    version: int
    model_path: Path

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class LoadFailure:
    """A model (or one version of it) that will not serve, and why."""

    name: str
    version: str  # "" when the whole model failed
    reason: str


def scan_repository(root: Path, only: tuple[str, ...] = ()) -> tuple[list[VersionSpec], list[LoadFailure]]:
    """Every servable version under `root` (or only the models named in `only`)."""
    if not root.is_dir():
        raise CnnserveError(f"model repository {root} is not a directory; export a model first")
    for name in only:
        if not MODEL_NAME_PATTERN.match(name):
            raise CnnserveError(f"--models: {name!r} is not a valid model name")
    try:
        children = sorted(root.iterdir())
    except OSError as error:
        raise CnnserveError(f"cannot list model repository {root}: {error.strerror or error}") from None
    candidates = [child for child in children if MODEL_NAME_PATTERN.match(child.name) and _has_config(child)]
    found = {child.name for child in candidates}
    missing = [name for name in only if name not in found]
    if missing:
        raise CnnserveError(
            f"--models: {', '.join(missing)} not in {root} (available: {', '.join(sorted(found)) or 'none'})"
        )
    specs: list[VersionSpec] = []
    failures: list[LoadFailure] = []
    for model_dir in candidates:
        if only and model_dir.name not in only:
            continue
        model_specs, model_failures = _scan_model(model_dir)
        specs += model_specs
        failures += model_failures
    if not specs and not failures:
        raise CnnserveError(f"no models in {root}: expected <model>/{CONFIG_FILE} folders")
    return specs, failures


def _has_config(child: Path) -> bool:
    """A model folder: a directory with a config.json entry (an unreadable one still counts,
    so the model is reported as failed rather than silently missing)."""
    try:
        if not child.is_dir():
            return False
    except OSError:
        return False
    try:
        return (child / CONFIG_FILE).exists()
    except OSError:  # the folder cannot be searched: report it as that model's failure
        return True


def _scan_model(model_dir: Path) -> tuple[list[VersionSpec], list[LoadFailure]]:
    """One model's versions; any problem with its files becomes a `LoadFailure`, never an exception."""
    try:
        return _scan_model_files(model_dir)
    except OSError as error:
        where = error.filename or model_dir
        return [], [LoadFailure(model_dir.name, "", f"cannot read {where}: {error.strerror or error}")]


def _scan_model_files(model_dir: Path) -> tuple[list[VersionSpec], list[LoadFailure]]:
    name = model_dir.name
    try:
        config = ModelConfig.load(model_dir)
    except CnnserveError as error:
        return [], [LoadFailure(name, "", str(error))]
    if config.name != name:
        reason = f"config.json names the model {config.name!r} but its folder is {name!r}"
        return [], [LoadFailure(name, "", reason)]
    if config.platform != SERVED_PLATFORM:
        reason = f"platform {config.platform!r} is not served; export it as {SERVED_PLATFORM}"
        return [], [LoadFailure(name, "", reason)]
    for child in model_dir.iterdir():
        if child.name.isdigit() and not VERSION_DIR_PATTERN.fullmatch(child.name):
            _LOGGER.warning(
                "model %s: ignoring folder %r: version folders are positive integers in ASCII digits",
                name,
                child.name,
            )
    versions = model_versions(model_dir)
    if not versions:
        return [], [LoadFailure(name, "", f"no version folders (1/, 2/, ...) in {model_dir}")]
    specs, failures = [], []
    for version in versions:
        path = model_dir / str(version) / config.model_file
        try:
            present = path.is_file() and _readable(path)
        except OSError as error:
            failures.append(LoadFailure(name, str(version), f"cannot read {path}: {error.strerror or error}"))
            continue
        if present:
            specs.append(VersionSpec(config, version, path))
        else:
            failures.append(LoadFailure(name, str(version), f"{path} is missing"))
    return specs, failures


def _readable(path: Path) -> bool:
    """Open the file once, so a permission problem is this version's failure at scan time."""
    with path.open("rb"):
        return True
