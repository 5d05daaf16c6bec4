"""`cnnserve serve`: its flags, the `ServerOptions` they build, and the start of the server.

Every flag's default is the one `ServerOptions` (serving/config.py) declares, so the two cannot
disagree. ONNX Runtime and gRPC are imported inside the handler so `cnnserve --help` stays fast.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path

from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.names import DEFAULT_MAX_QUEUE_SIZE, DEVICES
from cnnserve.serving.config import (
    DEFAULT_INLINE_MAX_US,
    EVENT_LOOPS,
    LOG_FORMATS,
    MIB,
    MODEL_CONTROL_MODES,
    Override,
    ServerOptions,
    TlsConfig,
)
from cnnserve.serving.cuda_options import CudaOptions

# ServerOptions' own defaults, by field name: what an unset flag means.
DEFAULTS = {f.name: f.default for f in fields(ServerOptions) if f.default is not MISSING}


def register(commands: argparse._SubParsersAction) -> None:
    _register_serve(commands)


def _per_model(kind: type) -> object:
    """Parse `VALUE` (every model) or `MODEL=VALUE` (one model) for a repeatable flag."""

    def parse(text: str) -> tuple[str | None, object]:
        name, _, value = text.rpartition("=")
        try:
            return (name or None), kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {kind.__name__} or MODEL={kind.__name__}, got {text!r}"
            ) from None

    return parse


def _add_per_model_flag(
    parser: argparse.ArgumentParser, flag: str, kind: type, metavar: str, help: str | None = None
) -> None:
    """A repeatable `[MODEL=]VALUE` flag; `_override` turns its values into an `Override`."""
    parser.add_argument(
        flag, type=_per_model(kind), action="append", default=[], metavar=f"[MODEL=]{metavar}", help=help
    )


def _or_off(kind: type, what: str) -> Callable[[str], object]:
    """An argparse type: `kind(text)`, or None for 'off'."""

    def parse(text: str) -> object:
        if text == "off":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} or 'off', got {text!r}") from None

    return parse


_port_or_off = _or_off(int, "a port number")


def _register_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve a model repository over gRPC (Classifier + KServe V2) with dynamic batching",
        description=(
            "Load every model of the repository (or --models), warm each batch size, then serve "
            "cnnserve.v1.Classifier, KServe V2 (inference.GRPCInferenceService), grpc.health.v1 and "
            "reflection on one port. Batching flags take VALUE for every model or MODEL=VALUE for one; "
            "unset, they come from each model's config.json."
        ),
    )
    # An unset flag means what ServerOptions says: its field defaults, never restated here.
    host, port, images = DEFAULTS["host"], DEFAULTS["port"], DEFAULTS["max_request_images"]
    message_mb, image_bytes = DEFAULTS["max_message_bytes"] / MIB, DEFAULTS["max_image_bytes"]
    pixels, side = DEFAULTS["max_image_pixels"], math.isqrt(DEFAULTS["max_image_pixels"])
    shown_pixels = f"{side}x{side}" if side * side == pixels else str(pixels)
    cuda = CudaOptions()
    search = cuda.cudnn_conv_algo_search.lower()
    serve.add_argument(
        "--repository", type=Path, default=Path("models"), help="model repository (default: models)"
    )
    serve.add_argument("--host", default=host, help=f"address to listen on (default: {host})")
    serve.add_argument(
        "--port", type=int, default=port, help=f"gRPC port, 0 for any free one (default: {port})"
    )
    serve.add_argument(
        "--http-port",
        type=_port_or_off,
        default=DEFAULTS["http_port"],
        help="KServe V2 REST (Triton's paths, JSON and binary tensors) port, or 'off' "
        f"(default: {DEFAULTS['http_port']})",
    )
    serve.add_argument(
        "--metrics-port",
        type=_port_or_off,
        default=DEFAULTS["metrics_port"],
        help=f"Prometheus /metrics port, or 'off' (default: {DEFAULTS['metrics_port']})",
    )
    serve.add_argument(
        "--device",
        choices=DEVICES,
        default=DEFAULTS["device"],
        help=f"execution provider (default: {DEFAULTS['device']})",
    )
    serve.add_argument("--models", default="", help="comma-separated models to load (default: all)")
    _add_per_model_flag(serve, "--max-batch-size", int, "N")
    _add_per_model_flag(serve, "--max-queue-delay-ms", float, "MS")
    _add_per_model_flag(
        serve,
        "--max-queue-size",
        int,
        "N",
        "requests waiting per model version before new ones get UNAVAILABLE "
        f"(default: {DEFAULT_MAX_QUEUE_SIZE})",
    )
    _add_per_model_flag(
        serve,
        "--instances",
        int,
        "N",
        "sessions per model version, each running its own batches at the same time (Triton's "
        "instance_group count); the intra-op threads are divided between them unless "
        "--cpu-threads is set (default: config.json's instance_count, 1 if unset)",
    )
    _add_per_model_flag(
        serve,
        "--inline-max-us",
        float,
        "US",
        "an idle model runs a request on the event loop's thread, without the hand-over to its "
        "batcher's worker and back, when requests come less often than it runs and its recent "
        "runs of that size took at most US µs, on one intra-op thread where that ran faster after an "
        "idle gap as the model loaded; 0: always hand over "
        f"(default: config.json's inline_max_us, else {DEFAULT_INLINE_MAX_US:g})",
    )
    serve.add_argument(
        "--inline-under-load",
        choices=("on", "off"),
        default="on",
        help="under load, a batch whose recent runs took at most --inline-max-us also runs on the "
        "event loop's thread, formed from the requests read in one turn of the loop, while no worker "
        "is running and less than half a core of the server's CPUs is idle; off: busy traffic "
        "always goes to the worker (default: on)",
    )
    serve.add_argument(
        "--max-request-images", type=int, default=images, help=f"images per request (default: {images})"
    )
    serve.add_argument(
        "--max-message-mb",
        type=float,
        default=message_mb,
        help=f"largest gRPC message in MiB (default: {message_mb:g})",
    )
    serve.add_argument(
        "--max-image-bytes",
        type=int,
        default=image_bytes,
        help=f"largest encoded image file a request may send (default: {image_bytes // MIB} MiB)",
    )
    serve.add_argument(
        "--max-image-pixels",
        type=int,
        default=pixels,
        help="most pixels an encoded image may declare, against decompression bombs "
        f"(default: {shown_pixels})",
    )
    serve.add_argument(
        "--grace-s",
        type=float,
        default=DEFAULTS["grace_s"],
        help=f"shutdown grace period in seconds (default: {DEFAULTS['grace_s']:g})",
    )
    serve.add_argument(
        "--cpu-threads",
        type=int,
        default=DEFAULTS["cpu_threads"],
        help="ONNX Runtime intra-op threads per model instance; 0 = ONNX Runtime's default (one per "
        "physical core), or the cores a cgroup CPU quota allows where that is fewer",
    )
    serve.add_argument(
        "--cuda-device-id",
        type=int,
        default=cuda.device_id,
        help=f"CUDA device for every model (default: {cuda.device_id})",
    )
    serve.add_argument(
        "--cudnn-conv-algo-search",
        default=search,
        help=f"cuDNN convolution algorithm search: exhaustive | heuristic | default (default: {search})",
    )
    serve.add_argument(
        "--gpu-mem-limit-mb", type=float, help="ONNX Runtime's CUDA memory arena limit per model"
    )
    serve.add_argument(
        "--cpu-spinning",
        action="store_true",
        help="let idle ONNX Runtime threads spin (lower batch-1 latency, more CPU)",
    )
    serve.add_argument(
        "--small-run-session-us",
        type=_or_off(float, "microseconds"),
        default=1000.0,
        help="on CPU, a model whose single-image run takes at least US µs gets a second, one-thread "
        "session per instance for runs of fewer than 8 images while the cores are busy (a second copy "
        "of its weights); 0: every model with several intra-op threads; off: none (default: 1000)",
    )
    serve.add_argument(
        "--idle-poll-us",
        type=_or_off(float, "microseconds"),
        default=None,
        help="after the last request in flight is answered, the event loop keeps polling for US µs "
        "instead of sleeping, so the next request finds a warm core: lower latency at low "
        "concurrency for up to one core's CPU while requests keep coming; off: sleep at once "
        "(default: off)",
    )
    serve.add_argument("--tls-cert", type=Path, help="server certificate (PEM); enables TLS")
    serve.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    serve.add_argument(
        "--tls-client-ca", type=Path, help="require client certificates signed by this CA (mTLS)"
    )
    serve.add_argument(
        "--ready-file", type=Path, help="write {grpc_port, http_port, metrics_port, pid} JSON here once ready"
    )
    serve.add_argument(
        "--model-control",
        choices=MODEL_CONTROL_MODES,
        default=DEFAULTS["model_control"],
        help="poll: rescan the repository and apply new versions and config changes without a restart; "
        "none: load once at start; explicit: only RepositoryModelLoad/Unload "
        f"(default: {DEFAULTS['model_control']})",
    )
    serve.add_argument(
        "--poll-interval-s",
        type=float,
        default=DEFAULTS["poll_interval_s"],
        help="seconds between repository scans, on the wall clock's multiples of it so that every "
        f"worker scans at once (default: {DEFAULTS['poll_interval_s']:g})",
    )
    serve.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=DEFAULTS["event_loop"],
        help=f"asyncio event loop the gRPC and HTTP handlers run on (default: {DEFAULTS['event_loop']})",
    )
    serve.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=DEFAULTS["log_format"],
        help=f"log lines as text or JSON (default: {DEFAULTS['log_format']})",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="one log line per inference request (model, version, images, status, µs, request id)",
    )
    serve.add_argument(
        "--workers",
        default=str(DEFAULTS["workers"]),
        metavar="N|auto",
        help="server processes on the one port (SO_REUSEPORT), each with its own sessions and batchers; "
        f"auto = one per available core, cgroup limits included (default: {DEFAULTS['workers']})",
    )
    serve.set_defaults(handler=run_serve)


def _override(values: list[tuple[str | None, object]], kind: type, default: object = None) -> Override:
    every = default
    per_model = []
    for name, value in values:
        if name is None:
            every = value
        else:
            per_model.append((name, value))
    return Override(every=None if every is None else kind(every), per_model=tuple(per_model))


def build_options(args: argparse.Namespace) -> ServerOptions:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CnnserveError("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        raise CnnserveError("--tls-client-ca needs --tls-cert and --tls-key")
    tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    return ServerOptions(
        repository=args.repository,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        http_port=args.http_port,
        device=args.device,
        models=tuple(name.strip() for name in args.models.split(",") if name.strip()),
        max_batch_size=_override(args.max_batch_size, int),
        max_queue_delay_ms=_override(args.max_queue_delay_ms, float),
        max_queue_size=_override(args.max_queue_size, int, DEFAULT_MAX_QUEUE_SIZE),
        instances=_override(args.instances, int),
        inline_max_us=_override(args.inline_max_us, float),
        inline_under_load=args.inline_under_load == "on",
        max_request_images=args.max_request_images,
        max_message_bytes=int(args.max_message_mb * MIB),
        grace_s=args.grace_s,
        cpu_threads=args.cpu_threads,
        cpu_spinning=args.cpu_spinning,
        small_run_session_us=args.small_run_session_us,
        idle_poll_us=args.idle_poll_us,
        tls=tls,
        ready_file=args.ready_file,
        model_control=args.model_control,
        poll_interval_s=args.poll_interval_s,
        workers=_workers(args.workers),
        cuda=_cuda(args),
        log_format=args.log_format,
        event_loop=args.event_loop,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        access_log=args.access_log,
    )


def _cuda(args: argparse.Namespace) -> CudaOptions:
    return CudaOptions.from_flags(args.cuda_device_id, args.cudnn_conv_algo_search, args.gpu_mem_limit_mb)


def _workers(text: str) -> int:
    from cnnserve.serving.workers import parse_workers

    return parse_workers(text)


def run_serve(args: argparse.Namespace) -> int:
    import os

    # ONNX Runtime 1.31 sends usage telemetry unless told not to; a server should not phone home
    # (and, as a user without a home directory, it warns at every start that it cannot).
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    options = build_options(args)
    from cnnserve.serving.access_log import configure_logging

    configure_logging(options.log_format)
    if options.workers > 1:
        from cnnserve.serving.workers import Supervisor

        return Supervisor(options).run()
    from cnnserve.serving import server

    return server.run(options)
