"""The client commands: `cnnserve classify`, `cnnserve health` and `cnnserve repository`.

gRPC, the generated stubs and Pillow are imported inside the handlers so `cnnserve --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cnnserve.contracts.errors import CnnserveError

DEFAULT_TARGET = "localhost:8500"


def register(commands: argparse._SubParsersAction) -> None:
    _register_classify(commands)
    _register_health(commands)
    _register_repository(commands)


def _register_classify(commands: argparse._SubParsersAction) -> None:
    classify = commands.add_parser(
        "classify",
        help="classify images with a running server",
        description="Send PNG/JPEG images or .npy uint8 arrays to a cnnserve server in one Classify request.",
    )
    classify.add_argument("images", type=Path, nargs="+", help="image files or .npy arrays")
    classify.add_argument(
        "--target", default=DEFAULT_TARGET, help=f"server host:port (default: {DEFAULT_TARGET})"
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
        "--target", default=DEFAULT_TARGET, help=f"server host:port (default: {DEFAULT_TARGET})"
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
            "--target", default=DEFAULT_TARGET, help=f"server host:port (default: {DEFAULT_TARGET})"
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
