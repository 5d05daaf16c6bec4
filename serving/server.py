"""Assemble and run the gRPC server: services, health, reflection, metrics, graceful shutdown.

Start-up order follows Triton: listen first (ServerLive answers, health says NOT_SERVING),
load and warm every model in a worker thread, and only then report ready (health SERVING,
ServerReady true, the `--ready-file` written). A signal during loading stops the loading and
exits 0 without ever reporting ready. On SIGTERM or SIGINT once ready: report not ready, then
drain (`shutdown.py`) so every call a client sent is answered OK or UNAVAILABLE, and exit 0 —
all within `--grace-s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from cnnserve import __version__
from cnnserve.contracts.errors import CnnserveError
from cnnserve.protos import classifier_pb2, classifier_pb2_grpc, grpc_service_pb2, grpc_service_pb2_grpc
from cnnserve.serving.access_log import AccessLog
from cnnserve.serving.call_guard import CallGuard, GuardedServer
from cnnserve.serving.classifier_service import ClassifierService
from cnnserve.serving.config import ServerOptions, event_loop_factory
from cnnserve.serving.dataplane import DataPlane
from cnnserve.serving.errors import ServingError
from cnnserve.serving.http_service import HttpService
from cnnserve.serving.idle_poll import IdlePoll
from cnnserve.serving.image_decoding import ImageLimits
from cnnserve.serving.lifecycle import LoadingCancelled, ModelManager
from cnnserve.serving.memory import fix_mmap_threshold
from cnnserve.serving.metrics import MetricsServer
from cnnserve.serving.registry import ModelRegistry
from cnnserve.serving.server_report import ServerReport, fetch_all
from cnnserve.serving.shutdown import ShutdownSignal, drain_and_stop
from cnnserve.serving.v2_service import V2Service

if TYPE_CHECKING:
    from cnnserve.serving.workers import WorkerSlot

_LOGGER = logging.getLogger(__name__)

CLASSIFIER_SERVICE = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name
V2_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVICE_NAMES = (CLASSIFIER_SERVICE, V2_SERVICE)


PENDING_CALLS = 8192


def grpc_options(options: ServerOptions, share_port: bool = False) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.max_send_message_length", options.max_message_bytes),
        # Alone, a second server on a busy port must fail, not share it; workers share theirs.
        ("grpc.so_reuseport", 1 if share_port else 0),
        # gRPC holds calls that reached the server but not yet a handler, and CANCELs them past
        # 1,000 (3,000 hard): under a flood, before our own queue could answer UNAVAILABLE. With
        # more room the batchers' --max-queue-size decides; only a far larger flood sees gRPC's.
        ("grpc.server.max_pending_requests", PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", 2 * PENDING_CALLS),
    ]


def create_server(
    options: ServerOptions,
    dataplane: DataPlane,
    manager: ModelManager,
    health: health_aio.HealthServicer,
    guard: CallGuard,
    reports: Callable[[], Awaitable[ServerReport]],
    share_port: bool = False,
) -> tuple[grpc.aio.Server, int]:
    """A configured, not yet started server and the port it bound (useful with port 0).

    Every service registers through `GuardedServer`, so each method gets the guard's
    undecodable-message and drain handling.
    """
    credentials = _tls_credentials(options) if options.tls is not None else None
    server = grpc.aio.server(options=grpc_options(options, share_port))
    guarded = GuardedServer(server, guard)
    classifier_pb2_grpc.add_ClassifierServicer_to_server(ClassifierService(dataplane, manager), guarded)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        V2Service(dataplane, manager, reports), guarded
    )
    health_pb2_grpc.add_HealthServicer_to_server(health, guarded)
    reflected = (
        *SERVICE_NAMES,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(reflected), guarded
    )
    address = f"{options.host}:{options.port}"
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as error:
        raise CnnserveError(f"cannot listen on {address}: {error}") from None
    if port == 0:
        raise CnnserveError(f"cannot listen on {address}: is the port already in use?")
    return server, port


def _tls_credentials(options: ServerOptions) -> grpc.ServerCredentials:
    """gRPC's credentials, after Python's ssl module has checked the files: gRPC itself only
    reports a bad certificate or key as a failure to bind the port."""
    tls = options.tls
    assert tls is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except ssl.SSLError as error:
        problem = (
            "the key does not match the certificate"
            if "KEY_VALUES_MISMATCH" in str(error)
            else f"not a PEM certificate and private key ({error.reason or error})"
        )
        raise CnnserveError(f"--tls-cert {tls.cert} / --tls-key {tls.key}: {problem}") from None
    except OSError as error:
        raise CnnserveError(f"--tls-cert/--tls-key: cannot read {error.filename}: {error.strerror}") from None
    if tls.client_ca is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca)
        except (ssl.SSLError, OSError) as error:
            raise CnnserveError(
                f"--tls-client-ca {tls.client_ca}: not a PEM CA certificate ({error})"
            ) from None
    client_ca = tls.client_ca.read_bytes() if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


async def _set_health(health: health_aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", *SERVICE_NAMES):
        await health.set(service, status)


def _write_ready_file(path: Path, grpc_port: int, metrics_port: int | None, http_port: int | None) -> None:
    """Atomically publish the bound ports, so callers can start the server on port 0."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(
        json.dumps(
            {"grpc_port": grpc_port, "metrics_port": metrics_port, "http_port": http_port, "pid": os.getpid()}
        )
    )
    temporary.replace(path)


@dataclass
class _Server:
    """One server process's parts, built before anything listens; `serve` runs them in order."""

    options: ServerOptions
    worker: WorkerSlot | None
    registry: ModelRegistry
    manager: ModelManager
    dataplane: DataPlane
    health: health_aio.HealthServicer
    guard: CallGuard
    grpc_server: grpc.aio.Server
    grpc_port: int
    http: HttpService
    metrics: MetricsServer
    http_port: int | None = None
    metrics_port: int | None = None
    readiness: asyncio.Task[None] | None = None  # under --workers: follows every worker's readiness


async def _build(options: ServerOptions, worker: WorkerSlot | None) -> _Server:
    """Services registered, the gRPC port bound; nothing started yet."""
    registry = ModelRegistry()
    manager = ModelManager(options, registry, worker.sibling_report_ports if worker else None)
    manager.check()  # a bad --repository, --models or override fails before listening
    idle_poll = IdlePoll(options.idle_poll_us) if options.idle_poll_us is not None else None
    dataplane = DataPlane(
        registry,
        options.max_request_images,
        AccessLog(options.access_log),
        ImageLimits(options.max_image_bytes, options.max_image_pixels),
        idle_poll,
    )
    health = health_aio.HealthServicer()
    await _set_health(health, serving=False)
    guard = CallGuard()

    def own_report() -> ServerReport:
        polled_s = idle_poll.polled_s if idle_poll is not None else 0.0
        return ServerReport.of(registry, worker.index if worker else None, polled_s)

    async def reports() -> ServerReport:
        own = own_report()
        if worker is None:
            return own
        siblings = await asyncio.to_thread(fetch_all, worker.sibling_report_ports())
        return ServerReport.merged([own, *siblings])

    grpc_server, grpc_port = create_server(
        options, dataplane, manager, health, guard, reports, share_port=worker is not None
    )
    metrics = MetricsServer(
        own_report,
        _control(manager, asyncio.get_running_loop()) if worker else None,
    )
    http = HttpService(dataplane, manager, reports, options.max_message_bytes)
    return _Server(
        options, worker, registry, manager, dataplane, health, guard, grpc_server, grpc_port, http, metrics
    )


async def _listen(server: _Server) -> None:
    """gRPC first (ServerLive answers while models load), then metrics and HTTP."""
    options, worker = server.options, server.worker
    await server.grpc_server.start()
    _LOGGER.info(
        "listening on %s:%d (%s, %s event loop); loading models (model control: %s)",
        options.host,
        server.grpc_port,
        "TLS" if options.tls else "plaintext",
        options.event_loop,
        options.model_control,
    )
    if worker is not None:  # private: the supervisor and the other workers read it
        worker.publish_report_port(server.metrics.start("127.0.0.1", 0))
    elif options.metrics_port is not None:
        server.metrics_port = server.metrics.start(options.host, options.metrics_port)
    if options.http_port is not None:
        server.http_port = await server.http.start(
            options.host, options.http_port, reuse_port=worker is not None
        )


async def _report_ready(server: _Server, ready_versions: int) -> None:
    """Health SERVING, ServerReady true, the ready file and the log line: traffic may come."""
    options, worker, dataplane = server.options, server.worker, server.dataplane
    server.manager.start_polling()
    if worker is None:
        dataplane.ready = True
        await _set_health(server.health, serving=True)
    else:
        worker.set_ready(True)
        server.readiness = asyncio.create_task(_follow_all_workers(worker, dataplane, server.health))
    if options.ready_file is not None:
        _write_ready_file(options.ready_file, server.grpc_port, server.metrics_port, server.http_port)
    device = server.manager.device.provider if server.manager.device else "none"
    _LOGGER.info(
        "ready: %d model version(s) on %s; gRPC %s:%d, HTTP %s, metrics %s (cnnserve %s, pid %d)",
        ready_versions,
        device,
        options.host,
        server.grpc_port,
        f"{options.host}:{server.http_port}" if server.http_port is not None else "off",
        f"http://{options.host}:{server.metrics_port}/metrics" if server.metrics_port is not None else "off",
        __version__,
        os.getpid(),
    )
    if options.idle_poll_us is not None:
        _LOGGER.info(
            "idle polling: the event loop polls for %g µs after the last request in flight instead of "
            "sleeping (--idle-poll-us; its CPU: cnnserve_idle_poll_seconds_total)",
            options.idle_poll_us,
        )


async def _drain(server: _Server) -> None:
    """Not ready at once; every accepted call answered; then the listeners close (`shutdown.py`)."""
    _LOGGER.info(
        "shutting down: finishing accepted calls, refusing new ones (grace %.0f s)", server.options.grace_s
    )
    if server.worker is not None and server.readiness is not None:
        server.worker.set_ready(False)
        server.readiness.cancel()
    server.dataplane.ready = False
    await _set_health(server.health, serving=False)
    server.manager.cancel_loading()  # no new versions go live during the drain
    server.guard.start_draining()
    server.http.draining = True  # new HTTP requests: 503; those in flight finish
    server.registry.drain()  # accepted requests run now instead of waiting for fuller batches
    await drain_and_stop(server.grpc_server, server.guard, server.options.grace_s)
    await server.http.stop()
    await server.manager.close()
    server.metrics.stop()


async def _close(server: _Server) -> None:
    """Stop everything at once: start-up failed or was interrupted, so no call was accepted."""
    await server.grpc_server.stop(None)
    await server.http.stop()
    server.metrics.stop()
    await server.manager.close()


async def serve(options: ServerOptions, worker: WorkerSlot | None = None) -> int:
    """Run until SIGTERM/SIGINT; return the process exit code. As one of `--workers`, `worker`
    says which: the port is shared, readiness is the whole server's, and the statistics and
    report cover every worker."""
    signals = ShutdownSignal()
    signals.install()
    fix_mmap_threshold()  # model memory goes back to the system when a version is unloaded
    server = await _build(options, worker)
    try:
        await _listen(server)
        ready = await _load(server.manager, signals)
    except BaseException:
        await _close(server)
        raise
    if ready is None:  # a signal arrived while loading: never report ready
        _LOGGER.info("stopped before any model was served")
        await _close(server)
        return 0
    await _report_ready(server, ready)
    await signals.wait()
    await _drain(server)
    _LOGGER.info("stopped")
    return 0


async def _load(manager: ModelManager, signals: ShutdownSignal) -> int | None:
    """Load what the model control mode loads at start; the number ready, or None if a signal came first."""
    loading = asyncio.create_task(manager.start())
    interrupted = asyncio.create_task(signals.wait())
    await asyncio.wait((loading, interrupted), return_when=asyncio.FIRST_COMPLETED)
    if interrupted.done():
        manager.cancel_loading()  # the loader stops before its next session or warm-up batch
        with contextlib.suppress(LoadingCancelled):
            await loading
        return None
    interrupted.cancel()
    return loading.result()


async def _follow_all_workers(
    worker: WorkerSlot, dataplane: DataPlane, health: health_aio.HealthServicer
) -> None:
    """Health and ServerReady say whether the whole server is ready: every worker."""
    while True:
        ready = worker.all_ready()
        if ready != dataplane.ready:
            dataplane.ready = ready
            await _set_health(health, serving=ready)
        await asyncio.sleep(0.1)


def _control(manager: ModelManager, loop: asyncio.AbstractEventLoop) -> Callable[[str, str], tuple[str, str]]:
    """A sibling's load/unload, run on this worker's event loop (called from the HTTP thread)."""

    def control(action: str, model: str) -> tuple[str, str]:
        future = asyncio.run_coroutine_threadsafe(manager.control(action, model), loop)
        try:
            future.result()
        except ServingError as error:
            return error.code.name, str(error)
        return "OK", ""

    return control


def run(options: ServerOptions, worker: WorkerSlot | None = None) -> int:
    with asyncio.Runner(loop_factory=event_loop_factory(options.event_loop)) as runner:
        return runner.run(serve(options, worker))
