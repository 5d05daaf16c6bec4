"""`cnnserve serve`, `cnnserve classify` and `cnnserve health`.

ONNX Runtime, gRPC and Pillow are imported inside the handlers so `cnnserve --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.names import DEFAULT_MAX_QUEUE_SIZE

_LOGGER = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:
    _register_serve(commands)
    _register_classify(commands)
    _register_health(commands)
    _register_repository(commands)


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


def _port_or_off(text: str) -> int | None:
    if text == "off":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number or 'off', got {text!r}") from None


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
    serve.add_argument(
        "--repository", type=Path, default=Path("models"), help="model repository (default: models)"
    )
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    serve.add_argument("--port", type=int, default=8500, help="gRPC port, 0 for any free one (default: 8500)")
    serve.add_argument(
        "--http-port",
        type=_port_or_off,
        default=8000,
        help="KServe V2 REST (Triton's paths, JSON and binary tensors) port, or 'off' (default: 8000)",
    )
    serve.add_argument(
        "--metrics-port",
        type=_port_or_off,
        default=8002,
        help="Prometheus /metrics port, or 'off' (default: 8002)",
    )
    serve.add_argument(
        "--device", choices=("auto", "cuda", "cpu"), default="auto", help="execution provider (default: auto)"
    )
    serve.add_argument("--models", default="", help="comma-separated models to load (default: all)")
    serve.add_argument(
        "--max-batch-size", type=_per_model(int), action="append", default=[], metavar="[MODEL=]N"
    )
    serve.add_argument(
        "--max-queue-delay-ms", type=_per_model(float), action="append", default=[], metavar="[MODEL=]MS"
    )
    serve.add_argument(
        "--max-queue-size",
        type=_per_model(int),
        action="append",
        default=[],
        metavar="[MODEL=]N",
        help=(
            "requests waiting per model version before new ones get UNAVAILABLE "
            f"(default: {DEFAULT_MAX_QUEUE_SIZE})"
        ),
    )
    serve.add_argument(
        "--max-request-images", type=int, default=4096, help="images per request (default: 4096)"
    )
    serve.add_argument(
        "--max-message-mb", type=float, default=64, help="largest gRPC message in MiB (default: 64)"
    )
    serve.add_argument(
        "--max-image-bytes", type=int, default=16 * 1024 * 1024,
        help="largest encoded image file a request may send (default: 16 MiB)",
    )  # fmt: skip
    serve.add_argument(
        "--max-image-pixels", type=int, default=4096 * 4096,
        help="most pixels an encoded image may declare, against decompression bombs (default: 4096x4096)",
    )  # fmt: skip
    serve.add_argument(
        "--grace-s", type=float, default=30, help="shutdown grace period in seconds (default: 30)"
    )
    serve.add_argument(
        "--cpu-threads", type=int, default=0, help="ONNX Runtime intra-op threads, 0 = one per core"
    )
    serve.add_argument(
        "--cuda-device-id", type=int, default=0, help="CUDA device for every model (default: 0)"
    )
    serve.add_argument(
        "--cudnn-conv-algo-search",
        default="exhaustive",
        help="cuDNN convolution algorithm search: exhaustive | heuristic | default (default: exhaustive)",
    )
    serve.add_argument(
        "--gpu-mem-limit-mb", type=float, help="ONNX Runtime's CUDA memory arena limit per model"
    )
    serve.add_argument(
        "--cpu-spinning",
        action="store_true",
        help="let idle ONNX Runtime threads spin (lower batch-1 latency, more CPU)",
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
        choices=("none", "poll", "explicit"),
        default="poll",
        help="poll: rescan the repository and apply new versions and config changes without a restart; "
        "none: load once at start; explicit: only RepositoryModelLoad/Unload (default: poll)",
    )
    serve.add_argument(
        "--poll-interval-s", type=float, default=2.0, help="seconds between repository scans (default: 2)"
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text or JSON (default: text)",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="one log line per inference request (model, version, images, status, µs, request id)",
    )
    serve.add_argument(
        "--workers",
        default="1",
        metavar="N|auto",
        help="server processes on the one port (SO_REUSEPORT), each with its own sessions and batchers; "
        "auto = one per available core, cgroup limits included (default: 1)",
    )
    serve.set_defaults(handler=run_serve)


def _override(values: list[tuple[str | None, object]], kind: type, default: object = None) -> object:
    from cnnserve.serving.config import Override

    every = default
    per_model = []
    for name, value in values:
        if name is None:
            every = value
        else:
            per_model.append((name, value))
    return Override(every=None if every is None else kind(every), per_model=tuple(per_model))


def build_options(args: argparse.Namespace) -> object:
    from cnnserve.serving.config import ServerOptions, TlsConfig

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
        max_request_images=args.max_request_images,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        grace_s=args.grace_s,
        cpu_threads=args.cpu_threads,
        cpu_spinning=args.cpu_spinning,
        tls=tls,
        ready_file=args.ready_file,
        model_control=args.model_control,
        poll_interval_s=args.poll_interval_s,
        workers=_workers(args.workers),
        cuda=_cuda(args),
        log_format=args.log_format,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        access_log=args.access_log,
    )


def _cuda(args: argparse.Namespace) -> object:
    from cnnserve.serving.cuda_options import CudaOptions

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


def _register_classify(commands: argparse._SubParsersAction) -> None:
    classify = commands.add_parser(
        "classify",
        help="classify images with a running server",
        description="Send PNG/JPEG images or .npy uint8 arrays to a cnnserve server in one Classify request.",
    )
    classify.add_argument("images", type=Path, nargs="+", help="image files or .npy arrays")
    classify.add_argument(
        "--target", default="localhost:8500", help="server host:port (default: localhost:8500)"
    )
    classify.add_argument("--model", required=True, help="model name")
    classify.add_argument("--version", default="", help="model version (default: newest)")
    classify.add_argument("--top-k", type=int, default=1, help="labels per image (default: 1)")
    classify.add_argument("--timeout-s", type=float, default=30, help="call deadline (default: 30)")
    _add_client_tls(classify)
    classify.add_argument("--json", action="store_true", help="machine-readable output")
    classify.add_argument(
        "--send",
        choices=("pixels", "encoded"),
        default="pixels",
        help="pixels: decode and resize here, send uint8 arrays; encoded: send the image files for the "
        "server to decode (default: pixels)",
    )
    classify.set_defaults(handler=run_classify)


def _add_client_tls(parser: argparse.ArgumentParser) -> None:
    """The TLS flags of every client command (classify, health, repository)."""
    parser.add_argument("--tls-ca", type=Path, help="CA certificate to trust; enables TLS")
    parser.add_argument("--tls-cert", type=Path, help="client certificate for mutual TLS")
    parser.add_argument("--tls-key", type=Path, help="client private key for mutual TLS")


def _tls(args: argparse.Namespace) -> object:
    from cnnserve.serving.client import ClientTls

    if args.tls_ca is None and args.tls_cert is None:
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CnnserveError("--tls-cert and --tls-key go together")
    return ClientTls(args.tls_ca, args.tls_cert, args.tls_key)


def run_classify(args: argparse.Namespace) -> int:
    import grpc

    from cnnserve.serving.client import ClassifierClient, load_images, open_channel

    with open_channel(args.target, _tls(args)) as channel:
        client = ClassifierClient(channel, timeout_s=args.timeout_s)
        try:
            if args.send == "encoded":
                files, names = _image_files(args.images)
                response = client.classify_encoded(args.model, files, top_k=args.top_k, version=args.version)
            else:
                metadata = client.metadata(args.model, args.version)
                shape = tuple(int(d) for d in metadata.inputs[0].shape[1:])
                images, names = load_images(args.images, shape)  # type: ignore[arg-type]
                response = client.classify(args.model, images, top_k=args.top_k, version=args.version)
        except grpc.RpcError as error:
            raise CnnserveError(f"{args.target}: {error.code().name}: {error.details()}") from None
    timing = response.timing
    if args.json:
        rows = [
            {
                "image": name,
                "top": [{"label": t.label, "class_index": t.class_index, "score": t.score} for t in c.top],
            }
            for name, c in zip(names, response.classifications, strict=True)
        ]
        print(
            json.dumps(
                {
                    "model": response.model_name,
                    "version": response.model_version,
                    "results": rows,
                    "timing": {
                        "execution_provider": timing.execution_provider,
                        "queue_us": timing.queue_us,
                        "compute_us": timing.compute_us,
                        "batch_size": timing.batch_size,
                        "batches": timing.batches,
                        "total_us": timing.total_us,
                    },
                },
                indent=2,
            )
        )
        return 0
    width = max(len(name) for name in names)
    for name, classification in zip(names, response.classifications, strict=True):
        labels = "  ".join(f"{t.label} {t.score:.3f}" for t in classification.top)
        print(f"{name:<{width}}  {labels}")
    print(
        f"{response.model_name} v{response.model_version} on {timing.execution_provider}: "
        f"queue {timing.queue_us} µs, compute {timing.compute_us} µs, "
        f"batch of {timing.batch_size} ({timing.batches} batch{'es' if timing.batches != 1 else ''}), "
        f"server total {timing.total_us} µs"
    )
    return 0


def _image_files(paths: list[Path]) -> tuple[list[bytes], list[str]]:
    files = []
    for path in paths:
        if path.suffix.lower() == ".npy":
            raise CnnserveError(
                f"{path}: --send encoded sends image files (PNG, JPEG); use --send pixels for .npy"
            )
        try:
            files.append(path.read_bytes())
        except OSError as error:
            raise CnnserveError(f"{path}: cannot read ({error.strerror or error})") from None
    return files, [path.name for path in paths]


def _register_health(commands: argparse._SubParsersAction) -> None:
    health = commands.add_parser(
        "health", help="exit 0 if a server reports SERVING (grpc.health.v1), 1 otherwise"
    )
    health.add_argument(
        "--target", default="localhost:8500", help="server host:port (default: localhost:8500)"
    )
    health.add_argument("--service", default="", help="service name (default: the whole server)")
    health.add_argument("--timeout-s", type=float, default=3)
    _add_client_tls(health)
    health.set_defaults(handler=run_health)


def run_health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from cnnserve.serving.client import open_channel

    with open_channel(args.target, _tls(args)) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_s
            )
        except grpc.RpcError as error:
            print(f"{args.target}: {error.code().name}: {error.details()}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{args.target}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def _register_repository(commands: argparse._SubParsersAction) -> None:
    repository = commands.add_parser(
        "repository",
        help="list, load or unload models on a running server (KServe V2 repository extension)",
        description="RepositoryIndex, RepositoryModelLoad and RepositoryModelUnload, as tritonclient "
        "sends them. load/unload need a server started with --model-control explicit.",
    )
    actions = repository.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every model in the repository, with each version's state")
    listing.add_argument("--ready", action="store_true", help="only READY versions")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    load = actions.add_parser("load", help="load a model, or reload it without a gap if loaded")
    unload = actions.add_parser("unload", help="unload a model once its accepted requests are answered")
    for action in (load, unload):
        action.add_argument("model", help="model name")
    for action in (listing, load, unload):
        action.add_argument(
            "--target", default="localhost:8500", help="server host:port (default: localhost:8500)"
        )
        action.add_argument("--timeout-s", type=float, default=300, help="call deadline (default: 300)")
        _add_client_tls(action)
    repository.set_defaults(handler=run_repository)


def run_repository(args: argparse.Namespace) -> int:
    import grpc

    from cnnserve.serving.client import RepositoryClient, open_channel

    with open_channel(args.target, _tls(args)) as channel:
        client = RepositoryClient(channel, timeout_s=args.timeout_s)
        try:
            if args.action == "load":
                client.load(args.model)
                print(f"{args.target}: loaded {args.model}")
                return 0
            if args.action == "unload":
                client.unload(args.model)
                print(f"{args.target}: unloaded {args.model}")
                return 0
            entries = client.index(ready_only=args.ready)
        except grpc.RpcError as error:
            raise CnnserveError(f"{args.target}: {error.code().name}: {error.details()}") from None
    if args.json:
        print(json.dumps([entry.__dict__ for entry in entries], indent=2))
        return 0
    rows = [(e.name, e.version or "-", e.state or "(not loaded)", e.reason) for e in entries]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(("model", "version", "state"))]
    print(f"{'model':<{widths[0]}}  {'version':<{widths[1]}}  {'state':<{widths[2]}}  reason")
    for name, version, state, reason in rows:
        print(f"{name:<{widths[0]}}  {version:<{widths[1]}}  {state:<{widths[2]}}  {reason}".rstrip())
    return 0
