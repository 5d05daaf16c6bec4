"""What a killed export leaves in a model repository, and how the next export clears it.

`VersionWriter` names everything it creates with its process id and holds an exclusive lock
on its staging directory for as long as it writes, so a leftover can be told from the work of
an export running now: an entry is stale only when the process named in it is gone and (for
staging) nobody holds its lock. Concurrent exports are never touched; the lock also covers
exports from other PID namespaces (containers sharing the repository), whose ids mean
nothing here.

Names (inside `REPOSITORY/<model>/`):
    .staging-<version>-<pid>-<random>/   a version being written
    .replaced-<version>-<pid>/           the version it replaces, until the new one is in place
    .config-<pid>-<random>.json          config.json being written
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

STAGING_PREFIX = ".staging-"
REPLACED_PREFIX = ".replaced-"
CONFIG_PREFIX = ".config-"
_LOGGER = logging.getLogger(__name__)
_STAGING = re.compile(r"^\.staging-(\d+)-(?:(\d+)-)?")  # older exports wrote no pid
_REPLACED = re.compile(r"^\.replaced-(\d+)-(\d+)$")
_CONFIG = re.compile(r"^\.config-(?:(\d+)-)?.*\.json$")


@dataclass(frozen=True)
class Leftover:
    path: Path
    action: str  # "removed", "restored as <dir>", "kept"
    reason: str

    def describe(self) -> str:
        return f"{self.action} {self.path}: {self.reason}"


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def locked_dir(path: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive flock on the directory itself; yields False when `wait` is off and it is held."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _gone(pid: str | None) -> bool:
    return pid is None or not process_alive(int(pid))


def _who(pid: str | None) -> str:
    return "an export from an older cnnserve" if pid is None else f"export pid {pid}, no longer running"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _clean_model_dir(model_dir: Path) -> list[Leftover]:
    found: list[Leftover] = []
    for entry in sorted(model_dir.iterdir()):
        name = entry.name
        if (match := _STAGING.match(name)) and entry.is_dir():
            pid = match.group(2)
            if not _gone(pid):
                continue
            with locked_dir(entry, wait=False) as free:
                if not free:
                    continue  # an export in another PID namespace is writing it
                shutil.rmtree(entry)
            found.append(Leftover(entry, "removed", f"unfinished version {match.group(1)} ({_who(pid)})"))
        elif (match := _REPLACED.match(name)) and entry.is_dir() and _gone(match.group(2)):
            version_dir = model_dir / match.group(1)
            if version_dir.exists():
                shutil.rmtree(entry)
                found.append(Leftover(entry, "removed", f"old copy of version {match.group(1)} "
                                                        f"({_who(match.group(2))})"))  # fmt: skip
            else:  # killed between moving the old version aside and renaming the new one in
                entry.rename(version_dir)
                found.append(Leftover(entry, f"restored as {version_dir}",
                                      f"the replace was interrupted ({_who(match.group(2))})"))  # fmt: skip
        elif (match := _CONFIG.match(name)) and entry.is_file() and _gone(match.group(1)):
            entry.unlink()
            found.append(Leftover(entry, "removed", f"unfinished config.json ({_who(match.group(1))})"))
    return found


def clean_repository(repository: Path) -> list[Leftover]:
    """Removes stale leftovers under every model folder of `repository`, then the model folders
    that are left empty; returns what it did. Best effort: what it cannot remove is reported."""
    if not repository.is_dir():
        return []
    found: list[Leftover] = []
    for model_dir in sorted(repository.iterdir()):
        if model_dir.name.startswith(".") or not model_dir.is_dir() or model_dir.is_symlink():
            continue
        try:
            cleaned = _clean_model_dir(model_dir)
            found += cleaned
            if cleaned and not any(model_dir.iterdir()):
                # Only folders a killed export left; rmdir refuses one another export has just
                # written into, so nothing is lost.
                model_dir.rmdir()
                found.append(Leftover(model_dir, "removed", "empty model folder"))
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.ENOENT):
                continue
            found.append(Leftover(model_dir, "kept", f"could not clean it ({error.strerror})"))
    for leftover in found:
        _LOGGER.info("%s", leftover.describe())
    return found
