"""`cnnserve bench local`, `cnnserve bench server` and `cnnserve bench noop-model`.

Lists (`--batch-sizes 1,8,64`) are parsed in the handlers, not by argparse, so a bad value is
the CLI's one-line error (exit 2) rather than argparse's usage dump. Heavy imports (TensorFlow,
ONNX Runtime, grpc, matplotlib) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path

from cnnserve.bench.train_bench import register as register_train_bench
from cnnserve.contracts.errors import CnnserveError

DEFAULT_BATCH_SIZES = "1,8,64,256"
DEFAULT_CONCURRENCY = "1,4,16,64"


def register(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure latency and throughput, in-process or through a running server",
        description="Benchmarks whose every figure says what ran it: backend, device, threads, versions.",
    )
    stages = bench.add_subparsers(
        dest="bench_command", metavar="{local,server,noop-model,train}", required=True
    )
    _register_local(stages)
    _register_server(stages)
    _register_noop(stages)
    register_train_bench(stages)


def positive_ints(text: str, flag: str, unique: bool = True) -> tuple[int, ...]:
    """'1,8,64' → (1, 8, 64); anything else is a one-line error naming the flag and the value."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CnnserveError(f"{flag} takes comma-separated positive integers, received {text!r}") from None
    if not values or min(values) < 1:
        raise CnnserveError(f"{flag} takes comma-separated positive integers, received {text!r}")
    return tuple(dict.fromkeys(values)) if unique else values


def positive_floats(text: str, flag: str) -> tuple[float, ...]:
    """'500,1000' → (500.0, 1000.0); anything else is a one-line error naming the flag and the value."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CnnserveError(f"{flag} takes comma-separated positive numbers, received {text!r}") from None
    if not values or min(values) <= 0 or not all(math.isfinite(v) for v in values):
        raise CnnserveError(f"{flag} takes comma-separated positive numbers, received {text!r}")
    return tuple(dict.fromkeys(values))


def _outputs(parser: argparse.ArgumentParser, csv_help: str) -> None:
    parser.add_argument("--json", type=Path, help="write every measured point as a list of JSON records")
    parser.add_argument("--csv", type=Path, help=csv_help)
    parser.add_argument("--plot", type=Path, help="write a PNG plot")


# --------------------------------------------------------------------------- local


def _register_local(stages: argparse._SubParsersAction) -> None:
    from cnnserve.bench.backends import DEFAULT_BACKENDS, FAMILIES, VARIANTS
    from cnnserve.bench.options import DEVICES, EXECUTION_MODES, GRAPH_OPTIMIZATIONS

    local = stages.add_parser(
        "local",
        help="in-process latency per backend and batch size, beside the tutorials' figures",
        description=(
            "Warm-up, then timed runs until --min-time-s and --min-runs are both reached; p50/p90/p99 "
            "latency per batch, images/s, GFLOP/s and % of this machine's float32 matmul peak "
            "(measured in the same run with the same thread count)."
        ),
    )
    source = local.add_mutually_exclusive_group()
    source.add_argument(
        "--repository", type=Path, default=Path("models"), help="model repository (default: models)"
    )
    source.add_argument(
        "--synthetic", action="store_true", help="build zoo models with random weights instead"
    )
    local.add_argument("--model", required=True, help="model name(s), comma-separated, or 'all' (the zoo)")
    local.add_argument(
        "--backends", default=DEFAULT_BACKENDS,
        help=f"comma-separated: {', '.join(FAMILIES)} or variants {', '.join(VARIANTS)} "
        f"(default: {DEFAULT_BACKENDS})",
    )  # fmt: skip
    local.add_argument("--device", default="auto", help=f"{' | '.join(DEVICES)} (default: auto)")
    local.add_argument("--batch-sizes", default=DEFAULT_BATCH_SIZES, help=f"default: {DEFAULT_BATCH_SIZES}")
    local.add_argument(
        "--intra-op-threads", type=int, default=0, help="per backend and the matmul peak; 0 = one per core"
    )
    local.add_argument(
        "--inter-op-threads", type=int, default=1, help="ONNX Runtime / TensorFlow (default: 1)"
    )
    local.add_argument(
        "--graph-optimization", default="all", help=f"ONNX Runtime: {' | '.join(GRAPH_OPTIMIZATIONS)}"
    )
    local.add_argument(
        "--execution-mode", default="sequential", help=f"ONNX Runtime: {' | '.join(EXECUTION_MODES)}"
    )
    local.add_argument(
        "--no-spinning",
        action="store_true",
        help="ONNX Runtime: idle worker threads sleep instead of spinning",
    )
    local.add_argument(
        "--io-binding", action="store_true",
        help="ONNX Runtime: feed and fetch through an IO binding, as the server does on CUDA",
    )  # fmt: skip
    local.add_argument("--cuda-device-id", type=int, default=0, help="ONNX Runtime CUDA device (default: 0)")
    local.add_argument(
        "--cudnn-conv-algo-search", default="exhaustive",
        help="ONNX Runtime CUDA: exhaustive | heuristic | default (default: exhaustive)",
    )  # fmt: skip
    local.add_argument("--gpu-mem-limit-mb", type=float, help="ONNX Runtime CUDA memory arena limit")
    local.add_argument("--warmup-runs", type=int, default=5, help="untimed runs first (default: 5)")
    local.add_argument("--min-runs", type=int, default=20, help="timed runs at least (default: 20)")
    local.add_argument("--min-time-s", type=float, default=2.0, help="timed seconds at least (default: 2)")
    local.add_argument("--max-time-s", type=float, default=60.0, help="cap per point (default: 60)")
    local.add_argument(
        "--rounds", type=int, default=3,
        help="split each point's runs over this many rounds that alternate between the backends, "
        "so the machine's drift hits them alike (default: 3)",
    )  # fmt: skip
    local.add_argument("--peak-size", type=int, default=2048, help="matmul size for the peak (default: 2048)")
    _outputs(local, "write the records as CSV")
    local.set_defaults(handler=run_local_command)


def _models(text: str, synthetic: bool, repository: Path) -> tuple[str, ...]:
    from cnnserve.training.models import ZOO

    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if names != ("all",):
        return names
    if synthetic:
        return tuple(ZOO)
    present = tuple(name for name in ZOO if (repository / name).is_dir())
    if not present:
        raise CnnserveError(f"--model all: no zoo model in repository {repository}")
    return present


def run_local_command(args: argparse.Namespace) -> int:
    from cnnserve.bench.backends import expand_backends
    from cnnserve.bench.options import RuntimeOptions
    from cnnserve.bench.tf_backends import configure_threads
    from cnnserve.bench.timing import RepeatPolicy
    from cnnserve.serving.cuda_options import CudaOptions

    cuda = CudaOptions.from_flags(args.cuda_device_id, args.cudnn_conv_algo_search, args.gpu_mem_limit_mb)
    options = RuntimeOptions(
        device=args.device,
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads,
        graph_optimization=args.graph_optimization,
        execution_mode=args.execution_mode,
        allow_spinning=not args.no_spinning,
        cuda=cuda,
        io_binding=args.io_binding,
    )
    policy = RepeatPolicy(args.warmup_runs, args.min_runs, args.min_time_s, max_time_s=args.max_time_s)
    batch_sizes = positive_ints(args.batch_sizes, "--batch-sizes")
    variants = expand_backends(args.backends)
    configure_threads(options)  # before anything imports TensorFlow
    from cnnserve.training.quiet_tf import import_tensorflow_quietly

    import_tensorflow_quietly()
    from cnnserve.bench.local import LocalPlan, run_local

    if args.synthetic:
        from cnnserve.training.models import get_spec

        models = _models(args.model, True, args.repository)
        for name in models:
            get_spec(name)  # unknown names fail here, before any measuring
    else:
        models = _models(args.model, False, args.repository)
    plan = LocalPlan(
        models, variants, batch_sizes, None if args.synthetic else args.repository, options, policy,
        peak_size=args.peak_size, rounds=args.rounds,
    )  # fmt: skip
    from cnnserve.bench import console, report

    with console.progress() as progress:
        result = run_local(plan, progress)
    console.show_local(result)
    report.write_outputs(result.records, args.json, args.csv, args.plot)
    return 0


# --------------------------------------------------------------------------- server


def _register_server(stages: argparse._SubParsersAction) -> None:
    from cnnserve.bench.load_options import DEFAULT_CHANNELS, DEFAULT_MAX_IN_FLIGHT

    server = stages.add_parser(
        "server",
        help="closed- or open-loop load against a running server: throughput, latency, server-side split",
        description=(
            "Sweeps closed-loop concurrency (--concurrency) or open-loop request rates (--request-rate, "
            "latency measured from each request's scheduled send time) against --target only, for a "
            "fixed time: (warm-up + duration) per level per model. The no-op model (see 'bench "
            "noop-model') is measured the same way."
        ),
    )
    server.add_argument("--target", default="localhost:8500", help="HOST:PORT (default: localhost:8500)")
    server.add_argument("--model", required=True, help="model name on the server")
    server.add_argument(
        "--protocol", default="cnnserve", help="cnnserve (Classifier/Predict) | v2 (ModelInfer)"
    )
    server.add_argument(
        "--concurrency",
        help=f"closed loop: callers per level, comma-separated (default: {DEFAULT_CONCURRENCY})",
    )
    server.add_argument(
        "--request-rate",
        help="open loop instead: requests per second per level, comma-separated (e.g. 500,1000,2000)",
    )
    server.add_argument(
        "--arrivals", default="constant", help="open loop: constant | poisson (default: constant)"
    )
    server.add_argument(
        "--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT,
        help="open loop: outstanding requests per client process before sends wait; the wait counts in "
        f"the latency (default: {DEFAULT_MAX_IN_FLIGHT})",
    )  # fmt: skip
    server.add_argument(
        "--streaming", action="store_true", help="send over V2 ModelStreamInfer streams (--protocol v2)"
    )
    server.add_argument(
        "--channels", type=int, default=DEFAULT_CHANNELS,
        help="gRPC channels, each its own TCP connection, shared by the callers in turn (at most one per "
        f"closed-loop caller; default: {DEFAULT_CHANNELS}). A server with N workers on one port "
        "needs several per worker to load every worker",
    )  # fmt: skip
    server.add_argument(
        "--server-pid", type=int,
        help="the server's process on this machine: its process tree's CPU per request and the machine's "
        "idle share are read from /proc over each window (default: not read)",
    )  # fmt: skip
    server.add_argument("--images-per-request", type=int, default=1, help="default: 1")
    server.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per level (default: 10)"
    )
    server.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per level (default: 2)")
    server.add_argument(
        "--noop-model", default="noop", help="no-op model on the server, '' to skip (default: noop)"
    )
    server.add_argument(
        "--client-processes", type=int, default=1, help="spread the callers over N processes (default: 1)"
    )
    server.add_argument("--connect-timeout-s", type=float, default=5.0, help="default: 5")
    server.add_argument("--timeout-s", type=float, default=30.0, help="per-request deadline (default: 30)")
    _outputs(server, "write perf_analyzer-style CSV (µs; our columns after perf_analyzer's)")
    server.set_defaults(handler=run_server_command)


def _zoo_flops(model: str) -> int | None:
    """The zoo's FLOPs per image when the served model is named after a zoo model: the fallback
    for servers that do not report them (exports before they were recorded, or Triton).

    The zoo lives beside Keras, so this imports TensorFlow (quietly, once, before any load)."""
    from cnnserve.training.quiet_tf import import_tensorflow_quietly

    import_tensorflow_quietly()
    from cnnserve.training.models import ZOO

    if model not in ZOO:
        return None
    from cnnserve.bench.artifacts import flops_per_image

    return flops_per_image(model)


def run_server_command(args: argparse.Namespace) -> int:
    from cnnserve.bench import console, report
    from cnnserve.bench.server_bench import ServerPlan, run_server_bench, served_flops
    from cnnserve.bench.system import collect, usable_cores

    if args.request_rate is not None and args.concurrency is not None:
        raise CnnserveError("give --concurrency (closed loop) or --request-rate (open loop), not both")
    rates = positive_floats(args.request_rate, "--request-rate") if args.request_rate is not None else ()
    concurrency = () if rates else positive_ints(args.concurrency or DEFAULT_CONCURRENCY, "--concurrency")
    plan = ServerPlan(
        target=args.target, model=args.model, protocol=args.protocol, concurrency=concurrency,
        images_per_request=args.images_per_request, duration_s=args.duration, warmup_s=args.warmup,
        noop_model=args.noop_model or None, client_processes=args.client_processes,
        connect_timeout_s=args.connect_timeout_s, request_timeout_s=args.timeout_s,
        request_rates=rates, arrivals=args.arrivals, streaming=args.streaming, channels=args.channels,
        max_in_flight=args.max_in_flight, server_pid=args.server_pid,
    )  # fmt: skip
    if plan.noop_model == plan.model:
        raise CnnserveError(f"--noop-model must differ from --model, both are {plan.model!r}")
    from dataclasses import asdict

    system = asdict(collect())
    flops = asyncio.run(served_flops(plan))
    if flops is None:
        flops = _zoo_flops(plan.model)
    peak_gflops = None
    if flops is not None and plan.is_loopback:
        from cnnserve.bench.peak import measure_peak

        peak = measure_peak(usable_cores())
        peak_gflops = peak.gflops
        system["matmul_peak"] = asdict(peak)
    with console.progress() as progress:
        sweep = asyncio.run(run_server_bench(plan, lambda model: flops, peak_gflops, system, progress))
    records = sweep.records
    console.show_server(records)
    if records:
        report.write_outputs(records, args.json, args.csv, args.plot)
    if sweep.stopped:
        console.show_stopped(len(records), sweep.stopped)
        return 1
    return 0


# --------------------------------------------------------------------------- noop-model


def _register_noop(stages: argparse._SubParsersAction) -> None:
    noop = stages.add_parser(
        "noop-model",
        help="write a no-op ONNX model into a repository, to measure the server's own overhead",
    )
    noop.add_argument("--repository", type=Path, default=Path("models"), help="default: models")
    noop.add_argument("--name", default="noop", help="default: noop")
    noop.add_argument("--shape", default="28,28,1", help="image H,W,C (default: 28,28,1, as mnist_cnn)")
    noop.add_argument("--max-batch-size", type=int, default=64, help="default: 64")
    noop.add_argument("--max-queue-delay-ms", type=float, default=0.0, help="default: 0")
    noop.add_argument("--overwrite", action="store_true", help="replace an existing model of that name")
    noop.set_defaults(handler=run_noop_command)


def run_noop_command(args: argparse.Namespace) -> int:
    from cnnserve.bench.noop_model import write_noop

    shape = positive_ints(args.shape, "--shape", unique=False)
    if len(shape) != 3:
        raise CnnserveError(f"--shape takes H,W,C, received {args.shape!r}")
    path = write_noop(args.repository, shape, args.name, args.max_batch_size, args.max_queue_delay_ms,
                      args.overwrite)  # type: ignore[arg-type]  # fmt: skip
    print(f"wrote {path}")
    return 0
