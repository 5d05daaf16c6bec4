"""Model lifecycle: what is loaded follows the repository (poll) or the repository RPCs (explicit).

Modes, as Triton's `--model-control-mode`:
- `none`: load the repository (or `--models`) once at start-up;
- `poll` (the default): the same, then rescan every `--poll-interval-s` and apply what changed;
- `explicit`: load `--models` (or nothing) at start-up, then only RepositoryModelLoad/Unload.

Applying a model folder (`_apply`) is the one path for all three: the versions its policy wants
are loaded — opened and warmed in a worker thread, so requests to other models never wait — and
take traffic only once READY; a version that is replaced (new files, a changed config.json, an
explicit reload) keeps serving until its replacement is READY, then drains; a version that left
the policy or the disk drains and is freed. A version that fails to load never takes traffic
and never takes down what is serving: the newest READY version stays until a wanted one is READY.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from cnnserve.contracts.cpu_limits import core_budget
from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.model_repository import MODEL_NAME_PATTERN
from cnnserve.serving.batcher import Batcher
from cnnserve.serving.config import BatchingConfig, ServerOptions
from cnnserve.serving.core_load import SpareCores
from cnnserve.serving.errors import InvalidInput, ModelControlDisabled, ModelLoadFailed, ModelNotFound
from cnnserve.serving.log_limit import RateLimitedLog, shown
from cnnserve.serving.memory import return_free_memory
from cnnserve.serving.registry import (
    ModelRegistry,
    ModelState,
    ServedModel,
    ServedVersion,
    VersionState,
)
from cnnserve.serving.repository import (
    ModelScan,
    VersionSpec,
    check_repository,
    checked_model_names,
    model_names,
    scan_model,
    scan_repository,
)
from cnnserve.serving.server_report import send_control
from cnnserve.serving.session import (
    CPU,
    CUDA,
    SMALL_RUN_ROWS,
    DeviceChoice,
    ModelSession,
    ProviderMismatch,
    SessionSettings,
    resolve_device,
)
from cnnserve.serving.stats import ModelStats

_LOGGER = logging.getLogger(__name__)
_POLL_ERRORS = RateLimitedLog(_LOGGER, interval_s=60)


class LoadingCancelled(Exception):
    """A shutdown signal arrived while models were still loading."""


class ModelManager:
    """Loads, reloads and unloads model versions in the registry; the server's one writer."""

    def __init__(
        self, options: ServerOptions, registry: ModelRegistry, siblings: Callable[[], list[int]] | None = None
    ) -> None:
        self._options = options
        self._registry = registry
        self._siblings = siblings  # other workers' control ports, under --workers
        self.device: DeviceChoice | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._applied: dict[str, tuple] = {}  # model → fingerprint of the scan last applied
        self._cancelled = threading.Event()  # loads stop at their next session or warm-up batch
        self._poller: asyncio.Task[None] | None = None
        self._starting = True  # --device cuda refuses to start on a provider mismatch
        # The cores sessions are sized for: affinity, capped by a cgroup CPU quota (cpu_limits).
        self._cores = core_budget()
        # Small runs go to a one-thread session while this process's cores are busy (core_load).
        self._spare_cores = SpareCores(quota=self._cores.quota)

    @property
    def mode(self) -> str:
        return self._options.model_control

    # ------------------------------------------------------------------ start and stop

    def check(self) -> None:
        """What must be right before the server listens: the repository, --models, overrides."""
        root = self._options.repository
        found = checked_model_names(root, self._options.models)
        if not found and self.mode != "explicit":
            raise CnnserveError(f"no models in {root}: expected <model>/config.json folders")
        unknown = set(self._options.overridden_models()) - set(found)
        if unknown:
            raise CnnserveError(f"per-model overrides name unknown models: {', '.join(sorted(unknown))}")

    async def start(self) -> int:
        """Load what the mode loads at start-up; the number of READY versions."""
        root, only = self._options.repository, self._options.models
        if self.mode == "explicit":
            check_repository(root, only)
            scans = {name: await asyncio.to_thread(self._scan_named, name) for name in only}
        else:
            scans = await asyncio.to_thread(scan_repository, root, only)
            if not scans:
                raise CnnserveError(f"no models in {root}: expected <model>/config.json folders")
        specs = [spec for scan in scans.values() for spec in scan.versions]
        if specs:
            await self._resolve_device(specs)
        for name, scan in scans.items():
            await self._sync(name, scan)
        self._starting = False
        ready = sum(1 for served in self._registry.versions() if served.state == ModelState.READY)
        if ready == 0 and self.mode == "none":
            raise CnnserveError("no model could be loaded; see the errors above")
        return ready

    def start_polling(self) -> None:
        if self.mode == "poll" and self._poller is None:
            self._poller = asyncio.create_task(self._poll())

    def cancel_loading(self) -> None:
        self._cancelled.set()

    async def close(self) -> None:
        """Stop polling and loading; every batcher answers what it holds, then stops."""
        self._cancelled.set()
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        for served in self._registry.versions():
            await _close(served)

    # ------------------------------------------------------------------ repository RPCs

    async def load(self, name: str) -> None:
        """RepositoryModelLoad: load the model, or reload it without a gap if it is loaded —
        in this process, then in every other worker."""
        await self.load_here(name)
        await self._fan_out("load", name)

    async def unload(self, name: str) -> None:
        """RepositoryModelUnload, here and then in every other worker."""
        await self.unload_here(name)
        await self._fan_out("unload", name)

    async def control(self, action: str, name: str) -> None:
        """A sibling worker's request: the same action, in this process only."""
        if action == "load":
            await self.load_here(name)
        elif action == "unload":
            await self.unload_here(name)
        else:
            raise InvalidInput(f"control: unknown action {shown(action)}")

    async def _fan_out(self, action: str, name: str) -> None:
        ports = self._siblings() if self._siblings else []
        if not ports:
            return
        answers = await asyncio.gather(
            *(asyncio.to_thread(send_control, port, action, name) for port in ports), return_exceptions=True
        )
        problems = []
        for port, answer in zip(ports, answers, strict=True):
            if isinstance(answer, BaseException):
                problems.append(f"worker on port {port}: {answer}")
            elif answer[0] != "OK" and not (action == "unload" and answer[0] == "NOT_FOUND"):
                problems.append(f"worker on port {port}: {answer[0]}: {answer[1]}")
        if problems:
            raise ModelLoadFailed(
                f"model {name!r}: {action} did not reach every worker: {'; '.join(problems)}"
            )

    async def load_here(self, name: str) -> None:
        self._check_explicit("load")
        scan = await asyncio.to_thread(self._scan_named, name)
        if self.device is None and scan.versions:
            await self._resolve_device(list(scan.versions))
        await self._sync(name, scan, reload=True)
        model = self._registry.known(name)
        if model is None or not model.ready():
            reasons = "; ".join(
                f"{'version ' + v + ': ' if v else ''}{r}"
                for v, r in sorted((model.failures if model else {}).items())
            )
            raise ModelLoadFailed(f"model {name!r} could not be loaded: {reasons or 'no version to load'}")

    async def unload_here(self, name: str) -> None:
        """Returns once every request the model accepted is answered."""
        self._check_explicit("unload")
        model = self._registry.known(name)
        if model is None or not model.versions:
            raise ModelNotFound(f"model {shown(name)} is not loaded")
        async with self._lock(name):
            await asyncio.gather(*(self._retire(model, served) for served in list(model.versions.values())))
            self._registry.forget(name)
            self._applied.pop(name, None)
        _LOGGER.info("unloaded model %s", name)

    async def index(self, ready_only: bool = False) -> list[VersionState]:
        """The repository index: every loaded version and failure, and (explicit mode) the
        models on disk that are not loaded, with no state, as Triton lists them."""
        entries = self._registry.index()
        if self.mode == "explicit":
            listed = {entry.name for entry in entries}
            try:
                on_disk = await asyncio.to_thread(model_names, self._options.repository)
            except CnnserveError:
                on_disk = []
            entries += [VersionState(name, "", "") for name in on_disk if name not in listed]
            entries.sort(key=lambda entry: entry.name)
        return [entry for entry in entries if entry.state == ModelState.READY] if ready_only else entries

    def _check_explicit(self, action: str) -> None:
        if self.mode != "explicit":
            raise ModelControlDisabled(
                f"model {action} is not allowed with --model-control {self.mode}; "
                "start the server with --model-control explicit"
            )

    def _scan_named(self, name: str) -> ModelScan:
        folder = self._options.repository / name
        if not MODEL_NAME_PATTERN.match(name) or not (folder / "config.json").exists():
            raise ModelNotFound(f"model {shown(name)} not found in the repository {self._options.repository}")
        return scan_model(folder)

    # ------------------------------------------------------------------ polling

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(until_next_tick(time.time(), self._options.poll_interval_s))
            try:
                scans = await asyncio.to_thread(self._scan_all)
            except CnnserveError as error:
                _POLL_ERRORS.warning("poll", "model repository not rescanned: %s", error)
                continue
            for name in sorted(set(scans) | set(self._applied)):
                scan = scans.get(name)
                if scan is None or scan.fingerprint() != self._applied.get(name):
                    specs = list(scan.versions) if scan else []
                    if self.device is None and specs:
                        await self._resolve_device(specs)
                    await self._sync(name, scan)

    def _scan_all(self) -> dict[str, ModelScan]:
        only = self._options.models
        names = [n for n in model_names(self._options.repository) if not only or n in only]
        return {name: scan_model(self._options.repository / name) for name in names}

    # ------------------------------------------------------------------ applying a scan

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _sync(self, name: str, scan: ModelScan | None, reload: bool = False) -> None:
        async with self._lock(name):
            await self._apply(name, scan, reload)
            if scan is None:
                self._applied.pop(name, None)
            else:
                self._applied[name] = scan.fingerprint()

    async def _apply(self, name: str, scan: ModelScan | None, reload: bool) -> None:
        if scan is None:
            model = self._registry.known(name)
            if model is not None:
                _LOGGER.info("model %s left the repository: unloading it", name)
                await asyncio.gather(*(self._retire(model, s) for s in list(model.versions.values())))
                self._registry.forget(name)
            return
        model = self._registry.model(name)
        previous = model.failures
        model.failures = {f.version: f.reason for f in scan.failures}
        for version, reason in model.failures.items():
            if previous.get(version) != reason:
                self._registry.count_load_failure(name, version)
                where = f" version {version}" if version else ""
                _LOGGER.error("model %s%s failed to load: %s", name, where, reason)
        if scan.config is None:
            return  # a broken config.json: whatever serves keeps serving
        model.config = scan.config
        on_disk = {spec.version: spec for spec in scan.versions}
        wanted = scan.config.version_policy.select(list(on_disk))
        for number in wanted:
            current = model.versions.get(number)
            if current is None or reload or current.spec != on_disk[number]:
                await self._load_version(model, on_disk[number], current)
        wanted_ready = any(model.versions[n].state == ModelState.READY for n in wanted if n in model.versions)
        for number, served in sorted(model.versions.items()):
            if number in wanted:
                continue
            if number in on_disk and not wanted_ready and served.state == ModelState.READY:
                continue  # no wanted version serves yet: keep this one until one does
            await self._retire(model, served)

    async def _load_version(
        self, model: ServedModel, spec: VersionSpec, replacing: ServedVersion | None
    ) -> None:
        """Open, check and warm `spec`; it takes traffic (replacing the old copy) only once READY."""
        config = spec.config
        batching = self._options.batching_for(
            spec.name, config.max_batch_size, config.max_queue_delay_ms, config.inline_max_us
        )
        served = ServedVersion(spec, batching, stats=replacing.stats if replacing else ModelStats())
        if replacing is None:
            model.versions[spec.version] = served  # LOADING: requests naming it get UNAVAILABLE
        try:
            settings = self._session_settings(served)
            served.sessions = await asyncio.to_thread(self._open_instances, served, settings)
        except CnnserveError as error:
            strict = self._starting and self._options.device == "cuda"
            if isinstance(error, ProviderMismatch) and strict:
                raise  # --device cuda promises CUDA for every model, or no start at all
            if model.versions.get(spec.version) is served:
                del model.versions[spec.version]
            model.failures[served.version] = str(error)
            self._registry.count_load_failure(spec.name, served.version)
            _LOGGER.error("model %s version %s failed to load: %s", spec.name, served.version, error)
            return
        served.batcher = Batcher(
            f"{served.name}/{served.version}",
            [session.run_batch for session in served.sessions],
            batching,
            on_batch=served.stats.record_batch,
            inline_run=served.sessions[0].run_inline,
            spare_cores=self._spare_cores.spare,
        )
        served.batcher.start()
        served.state = ModelState.READY
        model.versions[spec.version] = served
        model.failures.pop(served.version, None)
        _LOGGER.info(
            "%s %s version %s on %s (%s, max_batch_size=%d, max_queue_delay=%.1f ms, %s, "
            "warmed batch sizes 1-%d)",
            "reloaded" if replacing else "loaded",
            served.name,
            served.version,
            served.provider,
            _instances_text(
                len(served.sessions), settings.cpu_threads, served.sessions[0], settings.allow_spinning
            ),
            batching.max_batch_size,
            batching.max_queue_delay_s * 1000,
            _inline_text(batching),
            batching.max_batch_size,
        )
        if replacing is not None:
            await _close(replacing)
        else:  # what opening the session allocated only for a while (model copies, graph rewrites)
            await asyncio.to_thread(return_free_memory)

    async def _retire(self, model: ServedModel, served: ServedVersion) -> None:
        """UNLOADING: no new requests; answer the queued ones; free the session and batcher."""
        served.state = ModelState.UNLOADING
        await _close(served)
        if model.versions.get(served.number) is served:
            del model.versions[served.number]
        _LOGGER.info("unloaded %s version %s", served.name, served.version)

    # ------------------------------------------------------------------ sessions (worker thread)

    async def _resolve_device(self, specs: list[VersionSpec]) -> None:
        if self.device is not None:
            return
        self.device = await asyncio.to_thread(
            resolve_device, self._options.device, [s.model_path for s in specs], self._options.cuda
        )
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
        if self.device.provider == CPU:
            _LOGGER.info("cores this process may use: %s", self._cores.describe())

    def _instances(self, served: ServedVersion) -> int:
        return self._options.instances_for(served.name, served.config.instance_count)

    def _session_settings(self, served: ServedVersion) -> SessionSettings:
        assert self.device is not None, "the device is resolved before the first load"
        return SessionSettings(
            self.device.provider,
            self._options.threads_per_instance(self._instances(served), self._cores),
            allow_spinning=self._options.cpu_spinning,
            cuda=self._options.cuda,
        )

    def _open_instances(self, served: ServedVersion, settings: SessionSettings) -> tuple[ModelSession, ...]:
        """Blocking: one checked, warmed session per instance of the version."""
        return tuple(self._open(served, settings) for _ in range(self._instances(served)))

    def _open(self, served: ServedVersion, settings: SessionSettings) -> ModelSession:
        """Blocking: open the session, check it against config.json, warm every batch size."""
        check = self._check_cancelled
        check()
        small_us = self._options.small_run_session_us
        spare = None if small_us is None else self._spare_cores
        inline_us = served.batching.inline_run_limit_ns / 1e3
        session = ModelSession(served.spec.model_path, settings, spare, small_us or 0.0, inline_us)
        _check_matches_config(session, served)
        for size in range(1, served.batching.max_batch_size + 1):
            check()
            session.warm([size], served.image_shape)
        return session

    def _check_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise LoadingCancelled


def until_next_tick(now_s: float, interval_s: float) -> float:
    """Seconds from `now_s` (the wall clock) to the next multiple of `interval_s`, never more than
    one interval. Every process polling with the same interval wakes at the same moment, so the
    workers of `--workers N` see a new version in the same rescan, however long their scans took or
    whenever one was restarted, instead of up to one interval apart."""
    return interval_s - now_s % interval_s


async def _close(served: ServedVersion) -> None:
    """Answer what the version's batcher holds, then drop the session so its memory is freed."""
    if served.batcher is not None:
        await served.batcher.close()
    released = bool(served.sessions)
    served.batcher = None  # the last references to the batcher, hence to the sessions' `run`
    served.sessions = ()
    if released:
        await asyncio.to_thread(return_free_memory)


def _instances_text(count: int, threads: int, first: ModelSession, spinning: bool = False) -> str:
    """How many instances, their threads (and whether they spin), and which small runs the first
    one (as every other, opened alike) gives a one-thread session."""
    each = f"{threads} intra-op thread(s)" if threads else "ONNX Runtime's intra-op threads"
    text = f"{count} instance{'s' if count > 1 else ''}, {each}{' each' if count > 1 else ''}"
    if spinning:
        text += " spinning while they wait for work (--cpu-spinning)"
    if first.has_small_session:
        text += f", runs under {SMALL_RUN_ROWS} images on one thread while the cores are busy"
    if first.inline_probe is not None:
        text += f", {first.inline_probe.describe()}"
    return text


def _inline_text(batching: BatchingConfig) -> str:
    if batching.inline_run_limit_ns:
        when = "when idle and under load" if batching.inline_under_load else "when idle"
        return f"inline runs up to {batching.inline_run_limit_ns / 1e3:g} µs {when}"
    return "no inline runs"


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
