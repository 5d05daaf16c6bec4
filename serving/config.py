"""Server and batching settings as frozen dataclasses, validated where they are built.

Batching defaults come from each model's `config.json`; command-line values override them
either for every model (`--max-batch-size 32`) or for one (`--max-batch-size mnist_cnn=32`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.model_repository import MAX_INLINE_US, MAX_INSTANCES, check_inline_max_us
from cnnserve.contracts.names import DEFAULT_MAX_QUEUE_SIZE, DEVICES, MAX_MESSAGE_BYTES
from cnnserve.serving.cuda_options import CudaOptions

if TYPE_CHECKING:
    from cnnserve.contracts.cpu_limits import CoreBudget

MODEL_CONTROL_MODES = ("none", "poll", "explicit")
LOG_FORMATS = ("text", "json")
EVENT_LOOPS = ("uvloop", "asyncio")
MIB = 1024 * 1024
# Encoded image files a request may send: the bytes of one file and the pixels its header may
# declare, both checked before any decoding (decompression bombs).
MAX_IMAGE_BYTES = 16 * MIB
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_INLINE_RUN_S = MAX_INLINE_US / 1e6
DEFAULT_INLINE_MAX_US = 1000.0

T = TypeVar("T", int, float)


@dataclass(frozen=True)
class Override(Generic[T]):
    """A value for every model and/or per-model values; per-model wins."""

    every: T | None = None
    per_model: tuple[tuple[str, T], ...] = ()

    def for_model(self, name: str, fallback: T) -> T:
        for model, value in self.per_model:
            if model == name:
                return value
        return fallback if self.every is None else self.every

    def models(self) -> tuple[str, ...]:
        return tuple(model for model, _ in self.per_model)

    def given(self) -> tuple[tuple[str, T], ...]:
        """Every value given, as (model, value): ("", the value for every model) if there is
        one, then the per-model ones. What a flag's range check walks."""
        every = () if self.every is None else (("", self.every),)
        return (*every, *self.per_model)


@dataclass(frozen=True)
class BatchingConfig:
    """One model version's batcher: images per batch, how long the oldest may wait, queue cap."""

    max_batch_size: int
    max_queue_delay_s: float
    max_queue_size: int
    # A request may run on the event loop's thread, skipping the hand-over to a worker and back,
    # when the model is idle and its recent runs of that size took at most this (batcher.py);
    # 0: never. The loop is blocked for that long, so it stays small.
    max_inline_run_s: float = 0.0
    # Under load too, a batch that fits `max_inline_run_s` runs on the loop's thread while no
    # worker is running and the cores are busy (batcher.py); off: busy traffic always goes to a
    # worker.
    inline_under_load: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise CnnserveError(f"max_batch_size must be >= 1, received {self.max_batch_size}")
        if not 0 <= self.max_queue_delay_s <= 60:
            raise CnnserveError(
                "max_queue_delay must be between 0 and 60000 ms, "
                f"received {self.max_queue_delay_s * 1000:g} ms"
            )
        if self.max_queue_size < 1:
            raise CnnserveError(f"max_queue_size must be >= 1, received {self.max_queue_size}")
        if not 0 <= self.max_inline_run_s <= MAX_INLINE_RUN_S:
            raise CnnserveError(
                f"max_inline_run must be between 0 and {MAX_INLINE_RUN_S * 1e3:g} ms, "
                f"received {self.max_inline_run_s * 1e3:g} ms"
            )

    @property
    def inline_run_limit_ns(self) -> int:
        """The longest run allowed on the event loop's thread; 0: none (also with a queue delay,
        whose whole point is to wait for company)."""
        return 0 if self.max_queue_delay_s else int(self.max_inline_run_s * 1e9)


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: mutual TLS, clients must present a cert it signed

    def __post_init__(self) -> None:
        for flag, path in (("--tls-cert", self.cert), ("--tls-key", self.key)):
            if not path.is_file():
                raise CnnserveError(f"{flag} {path} is not a readable file")
        if self.client_ca is not None and not self.client_ca.is_file():
            raise CnnserveError(f"--tls-client-ca {self.client_ca} is not a readable file")


@dataclass(frozen=True)
class ServerOptions:
    repository: Path
    host: str = "0.0.0.0"
    port: int = 8500
    metrics_port: int | None = 8002  # None: no /metrics endpoint
    http_port: int | None = 8000  # KServe V2 REST, Triton's port; None: off
    device: str = "auto"
    models: tuple[str, ...] = ()  # empty: every model in the repository
    max_batch_size: Override[int] = field(default_factory=Override)
    max_queue_delay_ms: Override[float] = field(default_factory=Override)
    max_queue_size: Override[int] = field(default_factory=lambda: Override(every=DEFAULT_MAX_QUEUE_SIZE))
    # Model instances (Triton's instance_group count): sessions per version, each with its own
    # batcher worker, sharing the cores' intra-op threads; unset: config.json's instance_count.
    instances: Override[int] = field(default_factory=Override)
    # Idle models run cheap requests on the event loop's thread (BatchingConfig.max_inline_run_s);
    # unset: config.json's inline_max_us, else DEFAULT_INLINE_MAX_US.
    inline_max_us: Override[float] = field(default_factory=Override)
    # Busy models too run small batches on the loop's thread (BatchingConfig.inline_under_load).
    inline_under_load: bool = True
    max_request_images: int = 4096
    max_message_bytes: int = MAX_MESSAGE_BYTES
    grace_s: float = 30.0
    # 0: ONNX Runtime's default (one per physical core), or the cores a cgroup quota allows.
    cpu_threads: int = 0
    # Idle ONNX Runtime workers spin instead of sleeping: lower batch-1 latency, but on a
    # small machine the spinning threads take CPU from the gRPC threads (BENCHMARKS.md).
    cpu_spinning: bool = False
    # On CPU, models whose single-image run takes at least this many µs get a second, one-thread
    # session per instance for runs of a few images while the cores are busy (session.ModelSession,
    # core_load.py; BENCHMARKS.md); None: one session per instance.
    small_run_session_us: float | None = 1000.0
    # After the last inference in flight ends, the event loop keeps polling this many µs instead
    # of sleeping, so the next request finds a warm core (idle_poll.py); None: it sleeps at once.
    idle_poll_us: float | None = None
    tls: TlsConfig | None = None
    ready_file: Path | None = None
    # poll: what `cnnserve export` commits into the repository goes live without a restart.
    model_control: str = "poll"
    poll_interval_s: float = 2.0
    workers: int = 1  # > 1: a supervisor and this many server processes on one port
    # The cores this process's sessions share (a worker's part of the machine); 0: all it may use.
    core_share: int = 0
    cuda: CudaOptions = field(default_factory=CudaOptions)  # device id, cuDNN search, memory limit
    log_format: str = "text"  # or "json": one object per line
    max_image_bytes: int = MAX_IMAGE_BYTES  # one encoded image file
    max_image_pixels: int = MAX_IMAGE_PIXELS  # what an encoded image's header may declare
    access_log: bool = False  # one line per inference request (access_log.py says why off)
    # uvloop runs the same gRPC and HTTP handlers with less event-loop cost per call (BENCHMARKS.md).
    event_loop: str = "uvloop"

    def __post_init__(self) -> None:
        if self.model_control not in MODEL_CONTROL_MODES:
            raise CnnserveError(
                f"--model-control must be one of {', '.join(MODEL_CONTROL_MODES)}, got {self.model_control!r}"
            )
        if self.max_image_bytes < 1 or self.max_image_pixels < 1:
            raise CnnserveError("--max-image-bytes and --max-image-pixels must be >= 1")
        if self.event_loop not in EVENT_LOOPS:
            raise CnnserveError(f"--event-loop must be uvloop or asyncio, got {self.event_loop!r}")
        if self.log_format not in LOG_FORMATS:
            raise CnnserveError(f"--log-format must be text or json, got {self.log_format!r}")
        if not 1 <= self.workers <= 256:
            raise CnnserveError(f"--workers must be between 1 and 256, received {self.workers}")
        for model, value in self.inline_max_us.given():
            check_inline_max_us(value, "--inline-max-us", f"{model}={value:g}" if model else f"{value:g}")
        if not 0.1 <= self.poll_interval_s <= 3600:
            raise CnnserveError(
                f"--poll-interval-s must be between 0.1 and 3600, received {self.poll_interval_s:g}"
            )
        if self.device not in DEVICES:
            raise CnnserveError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if not 0 <= self.port <= 65535:
            raise CnnserveError(f"--port must be between 0 and 65535, received {self.port}")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise CnnserveError(f"--http-port must be between 0 and 65535, received {self.http_port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise CnnserveError(f"--metrics-port must be between 0 and 65535, received {self.metrics_port}")
        if self.max_request_images < 1:
            raise CnnserveError(f"--max-request-images must be >= 1, received {self.max_request_images}")
        if self.max_message_bytes < 1024:
            raise CnnserveError(
                f"--max-message-mb is too small: {self.max_message_bytes} bytes (minimum 1024)"
            )
        if self.grace_s < 0:
            raise CnnserveError(f"--grace-s must be >= 0, received {self.grace_s}")
        if self.idle_poll_us is not None and self.idle_poll_us <= 0:
            raise CnnserveError(f"--idle-poll-us must be > 0 or off, received {self.idle_poll_us:g}")
        if self.small_run_session_us is not None and self.small_run_session_us < 0:
            raise CnnserveError(
                f"--small-run-session-us must be >= 0 or off, received {self.small_run_session_us:g}"
            )
        if self.cpu_threads < 0:
            raise CnnserveError(f"--cpu-threads must be >= 0, received {self.cpu_threads}")
        for model, count in self.instances.given():
            if not 1 <= count <= MAX_INSTANCES:
                where = f"{model}=" if model else ""
                raise CnnserveError(f"--instances {where}{count}: must be between 1 and {MAX_INSTANCES}")

    def overridden_models(self) -> tuple[str, ...]:
        """Models named in a per-model batching flag (`--max-batch-size MODEL=N`, ...)."""
        return (
            *self.max_batch_size.models(),
            *self.max_queue_delay_ms.models(),
            *self.max_queue_size.models(),
            *self.instances.models(),
            *self.inline_max_us.models(),
        )

    def instances_for(self, name: str, instance_count: int) -> int:
        """Sessions for a model whose config.json says `instance_count`."""
        return self.instances.for_model(name, instance_count)

    def threads_per_instance(self, count: int, budget: CoreBudget) -> int:
        """Intra-op threads of each of `count` instances: `--cpu-threads`, or this process's cores
        shared between them. One instance on every core gets 0 (ONNX Runtime's own choice, one
        per physical core) unless a cgroup quota allows fewer cores: ONNX Runtime does not read it."""
        if self.cpu_threads:
            return self.cpu_threads
        if count == 1 and not self.core_share and not budget.quota_limited:
            return 0
        return max(1, (self.core_share or budget.cores) // count)

    def batching_for(
        self, name: str, max_batch_size: int, max_queue_delay_ms: float, inline_max_us: float | None = None
    ) -> BatchingConfig:
        """The batcher settings for a model whose config.json says `max_batch_size`, delay and
        `inline_max_us` (None: not set there)."""
        return BatchingConfig(
            max_batch_size=self.max_batch_size.for_model(name, max_batch_size),
            max_queue_delay_s=self.max_queue_delay_ms.for_model(name, max_queue_delay_ms) / 1000,
            max_queue_size=self.max_queue_size.for_model(name, DEFAULT_MAX_QUEUE_SIZE),
            max_inline_run_s=self.inline_max_us.for_model(
                name, DEFAULT_INLINE_MAX_US if inline_max_us is None else inline_max_us
            )
            / 1e6,
            inline_under_load=self.inline_under_load,
        )


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop (libuv) or the standard library's; grpc.aio and aiohttp run on either."""
    if name == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        raise CnnserveError(
            "--event-loop uvloop: uvloop is not installed; pass --event-loop asyncio"
        ) from None
    return uvloop.new_event_loop
