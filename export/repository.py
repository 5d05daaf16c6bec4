"""Writes one model version into a Triton-style repository, all or nothing.

Everything is built in a hidden staging directory inside `models/<model>/` (same filesystem),
then renamed into place; `config.json` is replaced atomically. A failure at any point removes
the staging directory, so the repository never holds a half-written version; what a killed
export leaves is named and locked so the next export can remove it (`leftovers`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.model_repository import CONFIG_FILE, MODEL_NAME_PATTERN, ModelConfig, model_versions
from cnnserve.contracts.run_dir import make_readable
from cnnserve.export.leftovers import CONFIG_PREFIX, REPLACED_PREFIX, STAGING_PREFIX


class RepositoryError(CnnserveError):
    """The repository cannot take this version as asked."""


def check_writable(model_dir: Path) -> None:
    """Fails before any conversion when the export could not write `model_dir` (or create it)."""
    folder = model_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise RepositoryError(f"{folder} is a file, not a directory; pass another --repository")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RepositoryError(
            f"cannot write to {folder}: permission denied; make it writable (e.g. chmod u+w {folder}) "
            "or pass --repository with a folder you can write"
        )


def _write_error(path: Path, error: OSError) -> RepositoryError:
    reason = error.strerror or str(error)
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RepositoryError(
            f"cannot write to {path}: {reason}; make it writable or pass --repository with a folder "
            "you can write"
        )
    return RepositoryError(f"cannot write to {path}: {reason}; nothing was exported")


def next_version(model_dir: Path) -> int:
    versions = model_versions(model_dir) if model_dir.is_dir() else []
    return (versions[-1] + 1) if versions else 1


class VersionWriter:
    """`with VersionWriter(repo, name, version, overwrite, platform) as slot:` write into
    `slot.staging`, then `slot.commit(config)`; leaving the block without commit cleans up."""

    def __init__(
        self, repository: Path, name: str, version: int | None, overwrite: bool, platform: str
    ) -> None:
        if not MODEL_NAME_PATTERN.match(name):
            raise RepositoryError(
                f"invalid model name {name!r}: use letters, digits, '_', '.', '-' (pass --name)"
            )
        if version is not None and version < 1:
            raise RepositoryError(f"--version must be a positive integer, received {version}")
        if repository.exists() and not repository.is_dir():
            raise RepositoryError(f"--repository {repository} is a file, not a directory")
        self.model_dir = repository / name
        self.version = version if version is not None else next_version(self.model_dir)
        self.final = self.model_dir / str(self.version)
        if self.final.exists() and not overwrite:
            raise RepositoryError(
                f"{self.final} already exists; pass --overwrite to replace it or choose another "
                f"--version (next free: {next_version(self.model_dir)})"
            )
        self._check_platform(platform)
        check_writable(self.model_dir)
        self.staging: Path | None = None
        self._lock_fd: int | None = None
        self._created_model_dir = False

    def _check_platform(self, platform: str) -> None:
        if not (self.model_dir / CONFIG_FILE).is_file():
            return
        existing = ModelConfig.load(self.model_dir)
        others = [v for v in model_versions(self.model_dir) if v != self.version]
        if existing.platform != platform and others:
            raise RepositoryError(
                f"{self.model_dir} holds {existing.platform} versions {others}; a model has one "
                f"platform, so export this format under another name with --name"
            )

    def __enter__(self) -> VersionWriter:
        prefix = f"{STAGING_PREFIX}{self.version}-{os.getpid()}-"
        for attempt in range(3):
            try:
                self._created_model_dir = not self.model_dir.exists()
                self.model_dir.mkdir(parents=True, exist_ok=True)
                self.staging = Path(tempfile.mkdtemp(prefix=prefix, dir=self.model_dir))
                break
            except FileNotFoundError as error:  # another export removed it as a leftover: again
                if attempt == 2:
                    raise _write_error(self.model_dir, error) from None
            except OSError as error:
                raise _write_error(self.model_dir, error) from None
        # Held until the version is in place: tells `leftovers` this staging is live.
        self._lock_fd = os.open(self.staging, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        return self

    def commit(self, config: ModelConfig) -> Path:
        """Renames the staged version into place and replaces config.json."""
        assert self.staging is not None
        try:
            return self._commit(config)
        except OSError as error:
            raise _write_error(self.model_dir, error) from None

    def _commit(self, config: ModelConfig) -> Path:
        assert self.staging is not None
        old = None
        if self.final.exists():
            old = self.model_dir / f"{REPLACED_PREFIX}{self.version}-{os.getpid()}"
            self.final.rename(old)
        make_readable(self.staging)
        self.staging.rename(self.final)
        self.staging = None
        with tempfile.NamedTemporaryFile(
            "w", dir=self.model_dir, prefix=f"{CONFIG_PREFIX}{os.getpid()}-", suffix=".json", delete=False
        ) as handle:
            handle.write(config.to_json())
        make_readable(Path(handle.name))
        Path(handle.name).replace(self.model_dir / CONFIG_FILE)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if kind is not None and self._created_model_dir:
            # Only if still empty: another export may have written a version into it meanwhile.
            with contextlib.suppress(OSError):
                self.model_dir.rmdir()
