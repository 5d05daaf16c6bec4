"""The table of served model versions that every request looks up; `lifecycle.py` changes it.

Each model version is a `ServedVersion` with one ONNX Runtime session, one batcher and its
statistics. Its states (`ModelState`) follow Triton's.
A request without a version gets the newest READY version the model's policy serves.

The table is only changed on the event loop's thread, and a request goes from `get()` to its
batcher's queue without an `await` in between, so a version that leaves the table has no
request between the two: closing its batcher answers everything it ever accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Literal

from cnnserve.contracts.model_repository import ModelConfig, VersionPolicy
from cnnserve.contracts.names import LOGITS
from cnnserve.serving.batcher import Batcher
from cnnserve.serving.config import BatchingConfig
from cnnserve.serving.converters import shape_text
from cnnserve.serving.errors import InvalidInput, ModelNotFound, ModelUnavailable
from cnnserve.serving.log_limit import shown
from cnnserve.serving.repository import VersionSpec
from cnnserve.serving.session import ModelSession
from cnnserve.serving.stats import ModelStats


class ModelState(StrEnum):
    """A version's state, spelled as Triton's repository index spells it on the wire."""

    LOADING = "LOADING"  # opening and warming; takes no traffic
    READY = "READY"
    UNLOADING = "UNLOADING"  # answers what it holds, takes nothing new
    UNAVAILABLE = "UNAVAILABLE"  # failed to load, with the reason


# A request's version string: ASCII digits only (str.isdigit() also takes "²" and "١"), no
# leading zero, and small enough to be a Triton int64 version.
VERSION_PATTERN = re.compile(r"[1-9][0-9]{0,17}")


@dataclass
class ServedVersion:
    """One model version and everything that serves it."""

    spec: VersionSpec
    batching: BatchingConfig
    state: ModelState = ModelState.LOADING
    reason: str = ""
    sessions: tuple[ModelSession, ...] = ()  # one per instance
    batcher: Batcher | None = None
    stats: ModelStats = field(default_factory=ModelStats)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return str(self.spec.version)

    @property
    def number(self) -> int:
        return self.spec.version

    @property
    def config(self) -> ModelConfig:
        return self.spec.config

    @cached_property
    def image_shape(self) -> tuple[int, ...]:
        """(H, W, C) from the config's input spec (its first dimension is the batch)."""
        return tuple(self.config.inputs[0].shape[1:])

    @cached_property
    def batch_shape_text(self) -> str:
        """The input shape as error messages write it: "[N, 28, 28, 1]"."""
        return shape_text((-1, *self.image_shape))

    @cached_property
    def num_classes(self) -> int:
        """Classes the model scores: its logits' last dimension (or its first output's)."""
        output = next((o for o in self.config.outputs if o.name == LOGITS), self.config.outputs[0])
        return int(output.shape[-1])

    @property
    def provider(self) -> str:
        return self.sessions[0].provider if self.sessions else ""


@dataclass
class ServedModel:
    """A model folder as the server knows it: its versions, or why it has none."""

    name: str
    config: ModelConfig | None = None
    versions: dict[int, ServedVersion] = field(default_factory=dict)  # the one serving each number
    failures: dict[str, str] = field(default_factory=dict)  # version ("" = the model) → reason

    @property
    def policy(self) -> VersionPolicy:
        return self.config.version_policy if self.config else VersionPolicy()

    def ready(self) -> list[ServedVersion]:
        return [s for _, s in sorted(self.versions.items()) if s.state == ModelState.READY]

    def newest_ready(self) -> ServedVersion | None:
        """What a request naming no version gets (`ready()[-1]`, without the sorted list)."""
        newest = None
        for number, served in self.versions.items():
            if served.state == ModelState.READY and (newest is None or number > newest.number):
                newest = served
        return newest


@dataclass(frozen=True)
class VersionState:
    """One line of the repository index (V2 RepositoryIndex, Classifier ListModels)."""

    name: str
    version: str  # "" for the model as a whole
    state: ModelState | Literal[""]  # "" for a model on disk that is not loaded (explicit mode)
    reason: str = ""


class ModelRegistry:
    """All model versions the server knows, by name and version number."""

    def __init__(self) -> None:
        self._models: dict[str, ServedModel] = {}
        self.load_failures: dict[tuple[str, str], int] = {}  # (model, version) → failed loads

    # ------------------------------------------------------------------ changes (lifecycle)

    def model(self, name: str) -> ServedModel:
        return self._models.setdefault(name, ServedModel(name))

    def forget(self, name: str) -> None:
        self._models.pop(name, None)

    def known(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    def count_load_failure(self, name: str, version: str) -> None:
        self.load_failures[(name, version)] = self.load_failures.get((name, version), 0) + 1

    # ------------------------------------------------------------------ reads (requests)

    def versions(self) -> list[ServedVersion]:
        return [served for name in sorted(self._models) for served in self.versions_of(name)]

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def versions_of(self, name: str) -> list[ServedVersion]:
        model = self._models.get(name)
        return [served for _, served in sorted(model.versions.items())] if model else []

    def ready_versions_of(self, name: str) -> list[str]:
        model = self._models.get(name)
        return [s.version for s in model.ready()] if model else []

    def index(self) -> list[VersionState]:
        """Every version's state and every failure, once, for both index RPCs."""
        entries: list[VersionState] = []
        for name in sorted(self._models):
            model = self._models[name]
            if "" in model.failures:
                entries.append(VersionState(name, "", ModelState.UNAVAILABLE, model.failures[""]))
            for number in sorted(set(model.versions) | {int(v) for v in model.failures if v}):
                served = model.versions.get(number)
                failure = model.failures.get(str(number), "")
                if served is None:
                    entries.append(VersionState(name, str(number), ModelState.UNAVAILABLE, failure))
                elif failure and served.state == ModelState.READY:
                    reason = f"serving the files loaded before; their replacement failed to load: {failure}"
                    entries.append(VersionState(name, served.version, ModelState.READY, reason))
                else:
                    entries.append(VersionState(name, served.version, served.state, served.reason))
        return entries

    def get(self, name: str, version: str = "", field_prefix: str = "") -> ServedVersion:
        """The version to serve for a request; errors name the request fields."""
        model = self._models.get(name)
        if model is None or (not model.versions and not model.failures):
            raise ModelNotFound(
                f"{field_prefix}model {shown(name)} not found; "
                f"models: {', '.join(n for n in self.model_names() if self._models[n].versions) or 'none'}"
            )
        if version:
            if not VERSION_PATTERN.fullmatch(version):
                raise InvalidInput(
                    f"{field_prefix}version: expected a positive integer or empty, received {shown(version)}"
                )
            served = model.versions.get(int(version))
            if served is None:
                failure = model.failures.get(version)
                if failure:
                    raise ModelUnavailable(f"model {name!r} version {version} failed to load: {failure}")
                raise ModelNotFound(
                    f"model {name!r} has no version {version}; "
                    f"versions: {', '.join(map(str, sorted(model.versions))) or 'none'}"
                )
        else:
            newest = model.newest_ready()
            if newest is not None:
                return newest
            if "" in model.failures:
                raise ModelUnavailable(f"model {name!r} failed to load: {model.failures['']}")
            if not model.versions:
                newest = max(model.failures, key=int)
                raise ModelUnavailable(
                    f"model {name!r} version {newest} failed to load: {model.failures[newest]}"
                )
            served = model.versions[max(model.versions)]
        if served.state == ModelState.LOADING:
            raise ModelUnavailable(f"model {name!r} version {served.version} is still loading; retry shortly")
        if served.state == ModelState.UNLOADING:
            raise ModelUnavailable(f"model {name!r} version {served.version} is being unloaded")
        if served.state != ModelState.READY:
            raise ModelUnavailable(f"model {name!r} version {served.version} failed to load: {served.reason}")
        return served

    def statistics_keys(self, name: str, version: str) -> set[tuple[str, str]] | None:
        """The (model, version) pairs a statistics request names; None for every model."""
        if not name:
            return None
        if version:
            served = self.get(name, version)
            return {(served.name, served.version)}
        if name not in self._models:
            raise ModelNotFound(f"model {shown(name)} not found")
        return {(s.name, s.version) for s in self.versions_of(name)}

    def drain(self) -> None:
        """Batchers stop waiting for fuller batches (shutdown)."""
        for served in self.versions():
            if served.batcher is not None:
                served.batcher.drain()
