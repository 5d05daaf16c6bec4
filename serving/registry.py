"""The loaded models: one ONNX Runtime session, batcher and statistics per model version.

Loading is split in two: `scan` (instant, on the event loop) makes every model known in
state LOADING so requests get UNAVAILABLE rather than NOT_FOUND, and `load_sessions` (slow,
in a worker thread) opens and warms the sessions. A version that fails to load is kept with
its reason and reported; the others serve.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from cnnserve.errors import CnnserveError
from cnnserve.export.model_config import ModelConfig
from cnnserve.serving.batcher import Batcher
from cnnserve.serving.config import BatchingConfig, ServerOptions
from cnnserve.serving.errors import InvalidInput, ModelNotFound, ModelUnavailable
from cnnserve.serving.log_limit import shown
from cnnserve.serving.repository import LoadFailure, VersionSpec, scan_repository
from cnnserve.serving.session import (
    CPU,
    CUDA,
    DeviceChoice,
    ModelSession,
    ProviderMismatch,
    SessionSettings,
    resolve_device,
)
from cnnserve.serving.stats import ModelStats

_LOGGER = logging.getLogger(__name__)

LOADING, READY, UNAVAILABLE = "LOADING", "READY", "UNAVAILABLE"
# A request's version string: ASCII digits only (str.isdigit() also takes "²" and "١"), no
# leading zero, and small enough to be a Triton int64 version.
VERSION_PATTERN = re.compile(r"[1-9][0-9]{0,17}")


class LoadingCancelled(Exception):
    """A shutdown signal arrived while models were still loading."""


@dataclass
class ServedVersion:
    """One model version and everything that serves it."""

    spec: VersionSpec
    batching: BatchingConfig
    state: str = LOADING
    reason: str = ""
    session: ModelSession | None = None
    batcher: Batcher | None = None
    stats: ModelStats = field(default_factory=ModelStats)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return str(self.spec.version)

    @property
    def config(self) -> ModelConfig:
        return self.spec.config

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(H, W, C) from the config's input spec (its first dimension is the batch)."""
        return tuple(self.config.inputs[0].shape[1:])

    @property
    def provider(self) -> str:
        return self.session.provider if self.session else ""


class ModelRegistry:
    """All model versions the server knows, by name and version number."""

    def __init__(self, options: ServerOptions) -> None:
        self._options = options
        self._models: dict[str, dict[int, ServedVersion]] = {}
        self._failures: dict[str, LoadFailure] = {}  # models that failed as a whole
        self.device: DeviceChoice | None = None

    def scan(self) -> None:
        specs, failures = scan_repository(self._options.repository, self._options.models)
        for spec in specs:
            batching = self._options.batching_for(
                spec.name, spec.config.max_batch_size, spec.config.max_queue_delay_ms
            )
            self._models.setdefault(spec.name, {})[spec.version] = ServedVersion(spec, batching)
        for failure in failures:
            _LOGGER.error("model %s%s failed to load: %s", failure.name, _v(failure.version), failure.reason)
            if failure.version:
                spec_version = int(failure.version)
                self._models.setdefault(failure.name, {})
                self._failures.setdefault(f"{failure.name}/{spec_version}", failure)
            else:
                self._failures[failure.name] = failure
        unknown = set(self._options.max_batch_size.models()) | set(self._options.max_queue_delay_ms.models())
        unknown |= set(self._options.max_queue_size.models())
        unknown -= set(self._models) | set(self._failures)
        if unknown:
            raise CnnserveError(f"per-model overrides name unknown models: {', '.join(sorted(unknown))}")

    def load_sessions(self, cancelled: threading.Event | None = None) -> None:
        """Open and warm every version (blocking: run it in a worker thread).

        Raises `LoadingCancelled` at the next session or warm-up batch once `cancelled` is set.
        """
        cancelled = cancelled or threading.Event()
        versions = [v for by_number in self._models.values() for v in by_number.values()]
        if not versions:
            return
        self.device = resolve_device(self._options.device, [v.spec.model_path for v in versions])
        # A CPU-only ONNX Runtime build (the CPU image) has nothing to fall back from.
        fell_back = (
            self._options.device == "auto"
            and self.device.provider == CPU
            and CUDA in ort.get_available_providers()
        )
        _LOGGER.log(
            logging.WARNING if fell_back else logging.INFO,
            "execution provider: %s (%s)",
            self.device.provider,
            self.device.reason,
        )
        settings = SessionSettings(
            self.device.provider, self._options.cpu_threads, allow_spinning=self._options.cpu_spinning
        )
        for served in versions:
            try:
                if cancelled.is_set():
                    raise LoadingCancelled
                session = ModelSession(served.spec.model_path, settings)
                _check_matches_config(session, served)
                for size in range(1, served.batching.max_batch_size + 1):
                    if cancelled.is_set():
                        raise LoadingCancelled
                    session.warm([size], served.image_shape)
            except CnnserveError as error:
                if isinstance(error, ProviderMismatch) and self._options.device == "cuda":
                    raise  # --device cuda promises CUDA for every model, or no start at all
                served.state, served.reason = UNAVAILABLE, str(error)
                _LOGGER.error("model %s version %s failed to load: %s", served.name, served.version, error)
                continue
            served.session = session
            _LOGGER.info(
                "loaded %s version %s on %s (max_batch_size=%d, max_queue_delay=%.1f ms, "
                "warmed batch sizes 1-%d)",
                served.name,
                served.version,
                session.provider,
                served.batching.max_batch_size,
                served.batching.max_queue_delay_s * 1000,
                served.batching.max_batch_size,
            )

    def start_batchers(self) -> int:
        """Give each loaded version a running batcher and mark it READY; return how many."""
        ready = 0
        for served in self.versions():
            if served.session is None:
                continue
            served.batcher = Batcher(
                f"{served.name}/{served.version}",
                served.session.run,
                served.batching,
                on_batch=served.stats.record_batch,
            )
            served.batcher.start()
            served.state = READY
            ready += 1
        return ready

    def versions(self) -> list[ServedVersion]:
        return [served for name in sorted(self._models) for _, served in sorted(self._models[name].items())]

    def model_names(self) -> list[str]:
        return sorted(set(self._models) | {f.name for f in self._failures.values()})

    def failures(self) -> list[LoadFailure]:
        return list(self._failures.values())

    def versions_of(self, name: str) -> list[ServedVersion]:
        return [served for _, served in sorted(self._models.get(name, {}).items())]

    def get(self, name: str, version: str = "", field_prefix: str = "") -> ServedVersion:
        """The version to serve for a request; errors name the request fields."""
        if name not in self._models and name not in self._failures:
            raise ModelNotFound(
                f"{field_prefix}model {shown(name)} not found; "
                f"models: {', '.join(self.model_names()) or 'none'}"
            )
        if name in self._failures:
            raise ModelUnavailable(f"model {name!r} failed to load: {self._failures[name].reason}")
        by_number = self._models[name]
        if version:
            if not VERSION_PATTERN.fullmatch(version):
                raise InvalidInput(
                    f"{field_prefix}version: expected a positive integer or empty, received {shown(version)}"
                )
            served = by_number.get(int(version))
            if served is None:
                failure = self._failures.get(f"{name}/{int(version)}")
                if failure:
                    raise ModelUnavailable(
                        f"model {name!r} version {version} failed to load: {failure.reason}"
                    )
                raise ModelNotFound(
                    f"model {name!r} has no version {version}; "
                    f"versions: {', '.join(map(str, sorted(by_number))) or 'none'}"
                )
        else:
            ready = [s for _, s in sorted(by_number.items()) if s.state == READY]
            served = ready[-1] if ready else (by_number[max(by_number)] if by_number else None)
            if served is None:
                raise ModelUnavailable(f"model {name!r} has no loadable version")
        if served.state == LOADING:
            raise ModelUnavailable(f"model {name!r} version {served.version} is still loading; retry shortly")
        if served.state != READY:
            raise ModelUnavailable(f"model {name!r} version {served.version} failed to load: {served.reason}")
        return served

    def drain(self) -> None:
        for served in self.versions():
            if served.batcher is not None:
                served.batcher.drain()

    async def close(self) -> None:
        for served in self.versions():
            if served.batcher is not None:
                await served.batcher.close()


def _v(version: str) -> str:
    return f" version {version}" if version else ""


def _check_matches_config(session: ModelSession, served: ServedVersion) -> None:
    """The ONNX file must agree with config.json, or requests would fail at run time."""
    spec = served.config.inputs[0]
    if session.input_name != spec.name or session.input_dtype != spec.dtype:
        raise CnnserveError(
            f"model input is {session.input_name!r} {session.input_dtype}, "
            f"config.json says {spec.name!r} {spec.dtype}"
        )
    if len(session.input_shape) != len(spec.shape) or any(
        model_dim not in (-1, config_dim)
        for model_dim, config_dim in zip(session.input_shape[1:], spec.shape[1:], strict=True)
    ):
        raise CnnserveError(
            f"model input shape {list(session.input_shape)} does not match config.json {list(spec.shape)}"
        )
    if len(spec.shape) != 4:
        raise CnnserveError(f"config.json input shape {list(spec.shape)} is not [N, H, W, C]")
    # The outputs as ONNX Runtime really produces them for one image, against config.json.
    produced = session.run(np.zeros((1, *spec.shape[1:]), dtype=session.input_dtype))
    for output in served.config.outputs:
        value = produced.get(output.name)
        if value is None:
            raise CnnserveError(
                f"config.json output {output.name!r} is not an output of the model "
                f"(it has {', '.join(map(repr, produced))})"
            )
        if value.dtype.name != output.dtype or list(value.shape[1:]) != list(output.shape[1:]):
            raise CnnserveError(
                f"model output {output.name!r} is {value.dtype.name} {[-1, *value.shape[1:]]}, "
                f"config.json says {output.dtype} {list(output.shape)}"
            )
