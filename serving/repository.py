"""Read a Triton-layout model repository: what each model folder holds, and whether it changed.

Only directory names that match the model-name alphabet become models, and requests later
look models up in the table built from here: a name from the network never becomes a path.
A model whose config or files are broken becomes a `LoadFailure` instead of stopping the rest.
Each scan carries fingerprints (config.json's digest, each model file's inode, size and mtime),
so the poller reloads exactly what changed — the exporter commits a version by renaming a
finished folder into place, so a version folder is never seen half-written.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.model_repository import (
    CONFIG_FILE,
    MODEL_NAME_PATTERN,
    VERSION_DIR_PATTERN,
    ModelConfig,
    model_versions,
)

_LOGGER = logging.getLogger(__name__)
SERVED_PLATFORM = "onnxruntime_onnx"

Fingerprint = tuple[int, int, int]  # inode, size, mtime_ns of the model file


@dataclass(frozen=True)
class VersionSpec:
    """One model version on disk, ready to be handed to ONNX Runtime."""

    config: ModelConfig
    version: int
    model_path: Path
    fingerprint: Fingerprint = (0, 0, 0)

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class LoadFailure:
    """A model (or one version of it) that will not serve, and why."""

    name: str
    version: str  # "" when the whole model failed
    reason: str


@dataclass(frozen=True)
class ModelScan:
    """One model folder as it is on disk now."""

    name: str
    config: ModelConfig | None  # None when the model as a whole failed (see `failures`)
    config_digest: str
    versions: tuple[VersionSpec, ...]  # every version folder with a readable model file
    failures: tuple[LoadFailure, ...]  # the model's (version "") or single versions'

    @property
    def model_failure(self) -> LoadFailure | None:
        return next((f for f in self.failures if not f.version), None)

    def fingerprint(self) -> tuple:
        """Equal for two scans exactly when nothing a server would load differs."""
        return (
            self.config_digest,
            tuple((v.version, v.fingerprint) for v in self.versions),
            tuple(sorted((f.version, f.reason) for f in self.failures)),
        )


def check_repository(root: Path, only: tuple[str, ...] = ()) -> None:
    """Errors a user must fix before the server can start at all."""
    if not root.is_dir():
        raise CnnserveError(f"model repository {root} is not a directory; export a model first")
    for name in only:
        if not MODEL_NAME_PATTERN.match(name):
            raise CnnserveError(f"--models: {name!r} is not a valid model name")


def model_names(root: Path) -> list[str]:
    """The model folders in `root` (sorted), whether or not they load."""
    try:
        children = sorted(root.iterdir())
    except OSError as error:
        raise CnnserveError(f"cannot list model repository {root}: {error.strerror or error}") from None
    return [child.name for child in children if MODEL_NAME_PATTERN.match(child.name) and _has_config(child)]


def checked_model_names(root: Path, only: tuple[str, ...] = ()) -> list[str]:
    """The model folders in `root`, once `root` and every name in `only` (`--models`) are checked."""
    check_repository(root, only)
    found = model_names(root)
    missing = [name for name in only if name not in found]
    if missing:
        raise CnnserveError(
            f"--models: {', '.join(missing)} not in {root} (available: {', '.join(found) or 'none'})"
        )
    return found


def scan_repository(root: Path, only: tuple[str, ...] = ()) -> dict[str, ModelScan]:
    """Every model folder under `root` (or only the models named in `only`), by name."""
    found = checked_model_names(root, only)
    return {name: scan_model(root / name) for name in found if not only or name in only}


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


def scan_model(model_dir: Path) -> ModelScan:
    """One model's versions; any problem with its files becomes a `LoadFailure`, never an exception."""
    name = model_dir.name
    try:
        return _scan_model_files(model_dir)
    except OSError as error:
        where = error.filename or model_dir
        failure = LoadFailure(name, "", f"cannot read {where}: {error.strerror or error}")
        return ModelScan(name, None, "", (), (failure,))


def _scan_model_files(model_dir: Path) -> ModelScan:
    name = model_dir.name
    digest = hashlib.sha256((model_dir / CONFIG_FILE).read_bytes()).hexdigest()

    def failed(reason: str) -> ModelScan:
        return ModelScan(name, None, digest, (), (LoadFailure(name, "", reason),))

    try:
        config = ModelConfig.load(model_dir)
    except CnnserveError as error:
        return failed(str(error))
    if config.name != name:
        return failed(f"config.json names the model {config.name!r} but its folder is {name!r}")
    if config.platform != SERVED_PLATFORM:
        return failed(f"platform {config.platform!r} is not served; export it as {SERVED_PLATFORM}")
    for child in model_dir.iterdir():
        if child.name.isdigit() and not VERSION_DIR_PATTERN.fullmatch(child.name):
            _LOGGER.warning(
                "model %s: ignoring folder %r: version folders are positive integers in ASCII digits",
                name,
                child.name,
            )
    versions = model_versions(model_dir)
    if not versions:
        return failed(f"no version folders (1/, 2/, ...) in {model_dir}")
    specs, failures = [], []
    for version in versions:
        path = model_dir / str(version) / config.model_file
        try:
            if not path.is_file():
                failures.append(LoadFailure(name, str(version), f"{path} is missing"))
                continue
            with path.open("rb"):  # a permission problem is this version's failure, now
                status = path.stat()
        except OSError as error:
            failures.append(LoadFailure(name, str(version), f"cannot read {path}: {error.strerror or error}"))
            continue
        specs.append(VersionSpec(config, version, path, (status.st_ino, status.st_size, status.st_mtime_ns)))
    return ModelScan(name, config, digest, tuple(specs), tuple(failures))
