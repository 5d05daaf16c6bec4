"""cnnserve beside Seldon MLServer and KServe's ModelServer, one run, one load generator.

Serves the same ONNX file (the one `cnnserve export` wrote) from each server in turn, each on
free loopback ports, and measures each with the same load generator as `cnnserve bench server
--protocol v2` (single images, closed loop, concurrency 1 and 32 by default), then ONNX Runtime
in-process on that file at batch 64 and batch 1. cnnserve runs seven ways (`OURS`): with its
defaults, with `serve --workers` (`--workers`, one per available core by default), with `serve
--idle-poll-us 1000`, and under the same load sent as ModelStreamInfer messages, without and with
`--idle-poll-us 1000`, with `--workers` too, and polled with `--cpu-spinning` (ONNX Runtime's
threads spinning, as in the in-process batch-1 figure the own-time goal adds 100 µs to: the
latency-first configuration, which costs CPU); the peers run as their defaults, and the
ceiling is a grpc.aio server that runs no model, measured under the unary load and again under
the streamed one (`ceiling-stream`). Each server's process tree's CPU is read over each window,
and the model's own compute per image in-process on one thread. Writes one JSON and prints two
markdown tables: the servers side by side, and issue 15's goals, met or not, against this run's
best peer and in-process figures, with what this machine's cores allow a unary server and a
stream at all. The peers run from the virtualenvs bench/peers/setup.sh creates.

    .venv/bin/python bench/peers/compare.py --repository bench_results/models --model mnist_cnn \\
        --json bench_results/peers.json
    .venv/bin/python bench/peers/compare.py --table bench_results/peers.json   # the tables again
    .venv/bin/python bench/peers/compare.py --servers cnnserve,cnnserve-stream,ceiling   # a subset
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_configs  # this folder's module, beside the script

from cnnserve.bench.records import cpu_us_per_request
from cnnserve.bench.report import write_run
from cnnserve.bench.serve_process import LOOPBACK, ServerProcess, free_port, start_cnnserve
from cnnserve.contracts.errors import CnnserveError
from cnnserve.serving.workers import parse_workers

PEERS = ("mlserver", "kserve")  # the servers issue 15's goals measure cnnserve against
IDLE_POLL_US = 1000  # longer than this load generator's gap between an answer and its next call


@dataclass(frozen=True)
class OurServer:
    """One way this run starts and loads cnnserve: `serve --workers`, `serve --idle-poll-us
    IDLE_POLL_US`, `serve --cpu-spinning`, and whether the load comes as V2 ModelStreamInfer
    messages (neither peer streams single requests: KServe has no ModelStreamInfer, MLServer's
    feeds one model's predict_stream)."""

    workers: bool = False
    polls: bool = False
    streaming: bool = False
    spins: bool = False

    def serve_flags(self, workers: int) -> list[str]:
        return [*(["--workers", str(workers)] if self.workers else []),
                *(["--idle-poll-us", str(IDLE_POLL_US)] if self.polls else []),
                *(["--cpu-spinning"] if self.spins else [])]  # fmt: skip

    def recorded(self, workers: int) -> dict:
        """What the run's JSON keeps of the flags, which the tables read back."""
        return {**({"workers": workers} if self.workers else {}),
                **({"idle_poll_us": IDLE_POLL_US} if self.polls else {}),
                **({"cpu_spinning": True} if self.spins else {})}  # fmt: skip


OURS = {
    "cnnserve": OurServer(),
    "cnnserve-workers": OurServer(workers=True),
    "cnnserve-poll": OurServer(polls=True),
    "cnnserve-stream": OurServer(streaming=True),
    "cnnserve-stream-poll": OurServer(polls=True, streaming=True),
    "cnnserve-workers-stream": OurServer(workers=True, streaming=True),
    "cnnserve-stream-poll-spin": OurServer(polls=True, streaming=True, spins=True),
}
# The ceiling twice: unary, and under the streamed load (what any ModelStreamInfer server costs).
CEILINGS = ("ceiling", "ceiling-stream")
SERVERS = (*OURS, "mlserver", "kserve", *CEILINGS)
PEERS_DIR = Path(os.environ.get("CNNSERVE_PEERS_DIR", Path.home() / ".cache" / "cnnserve-peers"))
START_TIMEOUT_S = 180.0
IN_PROCESS_BATCH = 64


@dataclass(frozen=True)
class Settings:
    repository: Path
    model: str
    servers: tuple[str, ...]
    concurrency: tuple[int, ...]
    duration_s: float
    warmup_s: float
    peers_dir: Path
    workdir: Path
    channels: int = 8  # as `cnnserve bench server` (at most one per caller)
    in_process_s: float = 3.0
    workers: int = 2  # cnnserve-workers: `serve --workers` (main(): one per available core)


def model_file(repository: Path, model: str) -> peer_configs.ModelFile:
    """The newest ONNX version of `model` in a cnnserve repository, with its shapes from config.json."""
    from cnnserve.contracts.model_repository import ModelConfig

    config = ModelConfig.load(repository / model)
    versions = sorted((int(p.name) for p in (repository / model).iterdir() if p.name.isdigit()), reverse=True)
    for version in versions:
        path = repository / model / str(version) / "model.onnx"
        if path.is_file():
            shape = tuple(int(d) for d in config.inputs[0].shape[1:])
            return peer_configs.ModelFile(model, path.resolve(), shape, len(config.class_labels))  # type: ignore[arg-type]
    raise SystemExit(f"compare.py: no model.onnx under {repository / model}; run `cnnserve export` first")


def wait_ready(server: ServerProcess, target: str, model: str, timeout_s: float = START_TIMEOUT_S) -> None:
    """Until V2 ServerReady and ModelReady(model) both say true, over gRPC."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if not server.alive():
                raise SystemExit(f"compare.py: {server.name} exited; its log:\n{server.log_tail()}")
            try:
                if (
                    stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready
                    and stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=2).ready
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise SystemExit(f"compare.py: {server.name} not ready after {timeout_s:g} s; log: {server.log}")


def _peer_python(settings: Settings, peer: str) -> Path:
    python = settings.peers_dir / peer / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"compare.py: no {peer} venv in {settings.peers_dir}; run bench/peers/setup.sh")
    return python


def check_answer(target: str, model: peer_configs.ModelFile) -> None:
    """One real request before any load: the server must answer logits of the right shape, so a
    peer that is up but misconfigured cannot be measured as fast."""
    import grpc
    import numpy as np
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    image = np.zeros((1, *model.image_shape), np.uint8)
    infer = pb.ModelInferRequest
    request = infer(
        model_name=model.name,
        inputs=[infer.InferInputTensor(name="images", datatype="UINT8", shape=list(image.shape))],
        outputs=[infer.InferRequestedOutputTensor(name="logits")],
        raw_input_contents=[image.tobytes()],
    )
    with grpc.insecure_channel(target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    shapes = {o.name: list(o.shape) for o in response.outputs}
    if shapes.get("logits") != [1, model.classes]:
        expected = [1, model.classes]
        raise SystemExit(f"compare.py: {target} answered outputs {shapes}, expected logits {expected}")


def launch(name: str, settings: Settings, model: peer_configs.ModelFile) -> tuple[ServerProcess, str]:
    """Starts `name` on free loopback ports; returns it and its gRPC target."""
    logs = settings.workdir
    if name in OURS:
        extra = OURS[name].serve_flags(settings.workers)
        server, ports = start_cnnserve(
            ["--repository", str(settings.repository), "--models", model.name, "--host", LOOPBACK,
             "--port", "0", "--http-port", "off", "--metrics-port", "off", *extra],
            logs, name=name, own_session=True, timeout_s=START_TIMEOUT_S, poll_s=0.2,
        )  # fmt: skip
        return server, ports.grpc_target
    grpc_port = free_port()
    if name == "mlserver":
        folder = peer_configs.write_mlserver_folder(
            logs / "mlserver", model, grpc_port, free_port(), free_port()
        )
        mlserver = _peer_python(settings, "mlserver").parent / "mlserver"
        server = ServerProcess(
            name, [str(mlserver), "start", str(folder)], logs / "mlserver.log", cwd=folder, own_session=True
        )
    elif name == "kserve":
        script = Path(__file__).resolve().parent / "kserve_onnx.py"
        argv = peer_configs.kserve_argv(model, grpc_port, free_port())
        command = [str(_peer_python(settings, "kserve")), str(script), *argv]
        server = ServerProcess(name, command, logs / "kserve.log", own_session=True)
    elif name in CEILINGS:
        script = Path(__file__).resolve().parent / "ceiling_server.py"
        command = [sys.executable, str(script), "--host", LOOPBACK, "--port", str(grpc_port),
                   "--model", model.name, "--image-shape", ",".join(map(str, model.image_shape)),
                   "--classes", str(model.classes), "--event-loop", "uvloop"]  # fmt: skip
        server = ServerProcess(name, command, logs / f"{name}.log", own_session=True)
    else:
        raise SystemExit(f"compare.py: unknown server {name!r}; choose from {', '.join(SERVERS)}")
    server.start()
    target = f"{LOOPBACK}:{grpc_port}"
    wait_ready(server, target, model.name)
    return server, target


def measure_server(target: str, settings: Settings, pid: int, streaming: bool = False) -> list[dict]:
    """The load levels against `target`, with the CPU of process `pid`'s tree over each window."""
    from cnnserve.bench.server_bench import ServerPlan, run_server_bench

    plan = ServerPlan(
        target=target, model=settings.model, protocol="v2", concurrency=settings.concurrency,
        duration_s=settings.duration_s, warmup_s=settings.warmup_s, noop_model=None,
        channels=settings.channels, streaming=streaming, server_pid=pid,
    )  # fmt: skip
    sweep = asyncio.run(run_server_bench(plan))
    if sweep.stopped:
        raise SystemExit(f"compare.py: {target}: {sweep.stopped}")
    return [record.to_dict() for record in sweep.records]


def measure_in_process(path: Path, batch_size: int = IN_PROCESS_BATCH, min_time_s: float = 3.0,
                       threads: int = 0) -> dict:  # fmt: skip
    """ONNX Runtime in this process on the same file, as `cnnserve bench local` runs it (`threads`
    intra-op threads, 0: one per usable core), and the process's CPU per image while it runs."""
    import numpy as np

    from cnnserve.bench.options import RuntimeOptions
    from cnnserve.bench.ort_backend import OrtBackend
    from cnnserve.bench.stats import summarize_ns
    from cnnserve.bench.timing import RepeatPolicy, measure

    # One thread runs without spinning: its CPU time is the model's compute and nothing else.
    options = RuntimeOptions(device="cpu", intra_op_threads=threads, allow_spinning=threads != 1)
    backend = OrtBackend(path, options)
    shape = backend.session.get_inputs()[0].shape[1:]
    images = np.random.default_rng(0).integers(0, 256, (batch_size, *shape), dtype=np.uint8)
    policy = RepeatPolicy(min_time_s=min_time_s)
    cpu_before = time.process_time()
    durations = measure(lambda: backend.run(images), policy)
    runs = len(durations) + policy.warmup_runs  # the process's CPU time covers both
    cpu_s = time.process_time() - cpu_before
    summary = summarize_ns(durations)
    return {
        "batch_size": batch_size,
        "p50_ms": summary.p50_ms,
        "images_per_s": summary.per_second(batch_size),
        "cpu_us_per_image": 1e6 * cpu_s / (runs * batch_size),
        "settings": backend.settings(),
    }


def peer_versions(settings: Settings, name: str) -> dict[str, str]:
    if name in (*OURS, *CEILINGS):
        from cnnserve.bench.system import library_versions

        return library_versions()
    freeze = settings.peers_dir / name / "freeze.txt"
    wanted = {"mlserver", "kserve", "onnxruntime", "grpcio", "numpy", "protobuf"}
    lines = freeze.read_text().splitlines() if freeze.exists() else []
    return {n: v for n, _, v in (line.partition("==") for line in lines) if n.lower() in wanted}


def run(settings: Settings) -> dict:
    from cnnserve.bench.system import collect

    model = model_file(settings.repository, settings.model)
    result: dict = {
        "kind": "peers",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model.name,
        "onnx": {"path": str(model.path), "sha256": hashlib.sha256(model.path.read_bytes()).hexdigest()},
        "load": {
            "protocol": "v2",
            "channels": settings.channels,
            "concurrency": list(settings.concurrency),
            "duration_s": settings.duration_s,
            "warmup_s": settings.warmup_s,
            "images_per_request": 1,
        },
        "system": asdict(collect()),
        "servers": {},
    }
    configs = {
        **{name: ours.recorded(settings.workers) for name, ours in OURS.items()},
        "mlserver": {"model_settings": peer_configs.mlserver_model_settings(model)},
        "kserve": {"argv": peer_configs.kserve_argv(model, 0, 0)},
    }
    for name in settings.servers:
        print(f"compare.py: starting {name}", file=sys.stderr)
        server, target = launch(name, settings, model)
        try:
            check_answer(target, model)
            records = measure_server(target, settings, server.pid, streaming=_streamed(name))
        finally:
            server.stop(timeout_s=30.0)
        result["servers"][name] = {"versions": peer_versions(settings, name), **configs.get(name, {}),
                                   "records": records}  # fmt: skip
    print("compare.py: in-process ONNX Runtime", file=sys.stderr)
    result["in_process"] = measure_in_process(model.path, min_time_s=settings.in_process_s)
    result["in_process_batch1"] = measure_in_process(model.path, 1, min_time_s=settings.in_process_s)
    result["in_process_one_thread"] = measure_in_process(
        model.path, min_time_s=settings.in_process_s, threads=1
    )
    return result


def _point(records: Sequence[dict], concurrency: int) -> dict | None:
    return next((r for r in records if r["concurrency"] == concurrency), None)


def table(result: dict, low: int = 1, high: int = 32) -> str:
    """The comparison as markdown: c=low p50 and c=high req/s per server, and cnnserve's figure
    over each peer's (p50: below 1 means cnnserve answers faster; req/s: above 1, it serves more)."""
    servers = result["servers"]
    ours = servers.get("cnnserve", {}).get("records", [])
    ours_low, ours_high = _point(ours, low), _point(ours, high)
    header = f"| server | c={low} p50 | c={high} req/s | c={high} CPU per request: server, load generator "
    lines = [header + f"| cnnserve's c={low} p50 ÷ this | cnnserve's c={high} req/s ÷ this |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, entry in servers.items():
        at_low, at_high = _point(entry["records"], low), _point(entry["records"], high)
        peer = name not in OURS and name != "ceiling-stream"  # its load streams: no unary ratio
        p50 = f"{at_low['p50_ms']:.2f} ms" if at_low else "–"
        rps = f"{at_high['requests_per_s']:,.0f}" if at_high else "–"
        p50_ratio = _ratio(ours_low, at_low, "p50_ms") if peer else ""
        rps_ratio = _ratio(ours_high, at_high, "requests_per_s") if peer else ""
        cpu = _cpu_cell(at_high)
        lines.append(f"| {_label(name, entry)} | {p50} | {rps} | {cpu} | {p50_ratio} | {rps_ratio} |")
    in_process = result.get("in_process")
    if in_process:
        share = ""
        if ours_high:
            pct = 100 * ours_high["images_per_s"] / in_process["images_per_s"]
            share = f" (cnnserve at c={high}: {pct:.1f}%)"
        one_thread = result.get("in_process_one_thread")
        compute = ""
        if one_thread:
            compute = f"the model: {one_thread['cpu_us_per_image']:,.0f} µs per image (one thread)"
        lines.append(
            f"| in-process ONNX Runtime, same file, batch {in_process['batch_size']} | | "
            f"{in_process['images_per_s']:,.0f} images/s{share} | {compute} | | |"
        )
    return "\n".join(lines)


def load_generator_us(point: dict) -> float | None:
    """The load generator's CPU per answered request (its processes' share of a core ÷ req/s)."""
    return cpu_us_per_request(point.get("client_cpu_pct"), point.get("requests_per_s"))


def _cpu_cell(point: dict | None) -> str:
    if not point or point.get("server_cpu_us_per_request") is None:
        return "–"
    client = load_generator_us(point)
    client_text = "–" if client is None else f"{client:,.0f} µs"
    return f"{point['server_cpu_us_per_request']:,.0f} µs, {client_text}"


# Issue 15's goals for single-image requests, each a factor of one figure from the same run.
PEER_THROUGHPUT_FACTOR = 3.0  # c=high req/s ≥ 3× the best peer's
IN_PROCESS_SHARE = 0.25  # c=high req/s ≥ 25% of in-process batch-64 images/s
PEER_LATENCY_FACTOR = 0.7  # c=low p50 ≤ 0.7× the best peer's
OWN_TIME_MARGIN_US = 100.0  # the server's own time at c=low ≤ in-process batch-1 p50 + 100 µs


@dataclass(frozen=True)
class Goal:
    text: str
    needs: str  # the bound and where it comes from
    bound: float
    concurrency: int
    field: str  # of a server record
    unit: str  # "req/s" | "ms" | "µs"
    at_most: bool  # True: the figure must not exceed the bound

    def cell(self, records: Sequence[dict]) -> str:
        point = _point(records, self.concurrency)
        value = point.get(self.field) if point else None
        if value is None:
            return "–"
        met = value <= self.bound if self.at_most else value >= self.bound
        return f"{_number(value, self.unit)} {self.unit} {'✅' if met else '❌'}"


def _number(value: float, unit: str) -> str:
    """Milliseconds to two decimals, everything else (req/s, µs) whole, with thousands commas."""
    return f"{value:.2f}" if unit == "ms" else f"{value:,.0f}"


def _peer_goal(peers: list[tuple[str, list[dict]]], text: str, concurrency: int, field: str, unit: str,
               factor: float, at_most: bool) -> Goal | None:  # fmt: skip
    """A goal of `factor` × the best peer's `field` at `concurrency` (the lowest when `at_most`)."""
    best = _best_peer(peers, concurrency, field, min if at_most else max)
    if best is None:
        return None
    name, point = best
    bound = factor * point[field]
    needs = (f"{'≤' if at_most else '≥'} {_number(bound, unit)} {unit} "
             f"({factor:g} × {_short(name)}'s {_number(point[field], unit)})")  # fmt: skip
    return Goal(text, needs, bound, concurrency, field, unit, at_most)


def goal_list(result: dict, low: int = 1, high: int = 32) -> list[Goal]:
    """The goals whose reference (a peer, an in-process figure) this run measured."""
    peers = [(name, result["servers"][name]["records"]) for name in PEERS if name in result["servers"]]
    throughput = f"c={high} at ≥ {PEER_THROUGHPUT_FACTOR:g}× the best peer's req/s"
    latency = f"c={low} p50 ≤ {PEER_LATENCY_FACTOR:g}× the best peer's"
    found = [
        _peer_goal(peers, throughput, high, "requests_per_s", "req/s", PEER_THROUGHPUT_FACTOR, at_most=False),
        _in_process_share_goal(result.get("in_process"), high),
        _peer_goal(peers, latency, low, "p50_ms", "ms", PEER_LATENCY_FACTOR, at_most=True),
        _own_time_goal(result.get("in_process_batch1"), low),
    ]
    return [goal for goal in found if goal is not None]


def _in_process_share_goal(batch64: dict | None, concurrency: int) -> Goal | None:
    if not batch64:
        return None
    images, share = batch64["images_per_s"], IN_PROCESS_SHARE
    needs = f"≥ {share * images:,.0f} req/s ({100 * share:g}% of {images:,.0f} images/s)"
    text = f"c={concurrency} at ≥ {100 * share:g}% of in-process batch-{batch64['batch_size']} throughput"
    return Goal(text, needs, share * images, concurrency, "requests_per_s", "req/s", False)


def _own_time_goal(batch1: dict | None, concurrency: int) -> Goal | None:
    if not batch1:
        return None
    alone_us, margin = 1e3 * batch1["p50_ms"], OWN_TIME_MARGIN_US
    needs = f"≤ {alone_us + margin:,.0f} µs ({alone_us:,.0f} in-process batch 1 + {margin:g})"
    text = f"the server's own time at c={concurrency} ≤ in-process batch 1 + {margin:g} µs"
    return Goal(text, needs, alone_us + margin, concurrency, "server_total_us", "µs", True)


def _best_peer(peers: list[tuple[str, list[dict]]], concurrency: int, field: str, pick) -> tuple | None:
    """The peer whose record at `concurrency` has the best `field` (`pick`: max or min)."""
    points = [(name, point) for name, records in peers if (point := _point(records, concurrency))]
    return pick(points, key=lambda item: item[1][field]) if points else None


@dataclass(frozen=True)
class MachineBound:
    """The most single-image req/s this machine allows at c=high to a unary server that costs at
    least what the ceiling costs per request, beside this run's load generator on the same cores,
    when each request's image also costs the model's own compute: cores ÷ the three CPU times."""

    cores: int
    server_us: float  # the ceiling's CPU per request
    client_us: float  # the load generator's, against the ceiling
    model_us: float  # the model's compute per image: one thread, in-process batch 64
    concurrency: int
    streaming: bool = False  # the streaming ceiling under the streamed load: a stream's bound

    @property
    def requests_per_s(self) -> float:
        return self.cores * 1e6 / (self.server_us + self.client_us + self.model_us)

    def text(self) -> str:
        if self.streaming:
            return (
                f"What this machine allows a stream at c={self.concurrency}: {self.cores} cores × 10⁶ ÷ "
                f"({self.server_us:,.0f} µs, the streaming ceiling's CPU per request + {self.client_us:,.0f} "
                f"µs, the load generator's + {self.model_us:,.0f} µs, the model's compute per image) = "
                f"{self.requests_per_s:,.0f} req/s for any server answering ModelStreamInfer that costs at "
                "least what the streaming ceiling does per message (the model's cost taken at batch 64, "
                "so a stream's smaller batches leave it less)."
            )
        return (
            f"What this machine allows at c={self.concurrency}: {self.cores} cores × 10⁶ ÷ "
            f"({self.server_us:,.0f} µs, the ceiling's CPU per request + {self.client_us:,.0f} µs, the load "
            f"generator's + {self.model_us:,.0f} µs, the model's compute per image) = "
            f"{self.requests_per_s:,.0f} req/s for any unary server that costs at least what the ceiling "
            "does per request. A goal that needs more is out of reach on this machine with the load "
            "generator on the same cores (a stream costs less per request, so it is not bound by this)."
        )


def machine_bound(result: dict, high: int = 32, streaming: bool = False) -> MachineBound | None:
    """None when the run lacks the (streaming) ceiling's CPU figures or the one-thread in-process run."""
    name = "ceiling-stream" if streaming else "ceiling"
    ceiling = _point(result["servers"].get(name, {}).get("records", []), high)
    one_thread = result.get("in_process_one_thread")
    cores = result.get("system", {}).get("usable_cores")
    if not ceiling or not one_thread or not cores or ceiling.get("server_cpu_us_per_request") is None:
        return None
    client = load_generator_us(ceiling)
    if client is None:
        return None
    server, model = ceiling["server_cpu_us_per_request"], one_thread["cpu_us_per_image"]
    return MachineBound(cores, server, client, model, high, streaming)


def goals(result: dict, low: int = 1, high: int = 32) -> str:
    """Issue 15's goals against each cnnserve configuration of the run, as markdown: what each
    needs, from the best peer and the in-process figures of the same run, and whether it was met.
    The ceiling's column shows what a server that does no work reaches under the same load."""
    servers = result["servers"]
    columns = [name for name in (*OURS, *CEILINGS) if name in servers]
    lines = ["| goal | needs | " + " | ".join(_column(n, servers[n]) for n in columns) + " |",
             "| --- | --- |" + " --- |" * len(columns)]  # fmt: skip
    bounds = [b for b in (machine_bound(result, high), machine_bound(result, high, streaming=True)) if b]
    for goal in goal_list(result, low, high):
        cells = " | ".join(goal.cell(servers[name]["records"]) for name in columns)
        needs = goal.needs
        over = [
            f"{'a streaming' if b.streaming else 'a unary'} server ({b.requests_per_s:,.0f})"
            for b in bounds
            if goal.field == "requests_per_s" and goal.bound > b.requests_per_s
        ]
        if over:
            needs += f"; above what this machine allows {' or '.join(over)}"
        lines.append(f"| {goal.text} | {needs} | {cells} |")
    return "\n".join([*lines, *(f"\n{b.text()}" for b in bounds)])


def _serve_flag(entry: dict) -> str:
    """The `serve` flags a cnnserve configuration of the run was started with, as recorded."""
    flags = [f"--workers {entry['workers']}"] if "workers" in entry else []
    if "idle_poll_us" in entry:
        flags.append(f"--idle-poll-us {entry['idle_poll_us']}")
    if entry.get("cpu_spinning"):
        flags.append("--cpu-spinning")
    return " ".join(flags)


def _streamed(name: str) -> bool:
    return name == "ceiling-stream" or (name in OURS and OURS[name].streaming)


def _column(name: str, entry: dict) -> str:
    if name not in OURS:
        return _short(name)
    flag = _serve_flag(entry)
    if "workers" in entry:
        return f"cnnserve {flag}" + (", ModelStreamInfer" if _streamed(name) else "")
    parts = [
        "cnnserve, 1 worker",
        *(["ModelStreamInfer"] if _streamed(name) else []),
        *([flag] if flag else []),
    ]
    return ", ".join(parts)


def _short(name: str) -> str:
    names = {"mlserver": "MLServer", "kserve": "KServe", "ceiling": "the ceiling"}
    return {**names, "ceiling-stream": "the ceiling, ModelStreamInfer"}.get(name, name)


def _ratio(ours: dict | None, theirs: dict | None, field: str) -> str:
    if not ours or not theirs or not theirs[field]:
        return "–"
    return f"{ours[field] / theirs[field]:.2f}×"


def _label(name: str, entry: dict) -> str:
    versions = entry.get("versions", {})
    ort = versions.get("onnxruntime", "?")
    if name == "mlserver":
        settings = entry.get("model_settings", {})
        wait_ms = 1e3 * settings.get("max_batch_time", 0)
        batching = f"adaptive batching {settings.get('max_batch_size')} / {wait_ms:g} ms"
        return f"Seldon MLServer {versions.get('mlserver', '?')} (ORT {ort}, {batching})"
    if name == "kserve":
        return f"KServe {versions.get('kserve', '?')} ModelServer (ORT {ort}, no batching)"
    if name in CEILINGS:
        grpcio = versions.get("grpcio", "?")
        streamed = ", V2 ModelStreamInfer" if name == "ceiling-stream" else ""
        return f"grpc.aio servicer on uvloop, fixed reply, no model{streamed} (grpcio {grpcio}; the ceiling)"
    ours, ort = versions.get("cnnserve", "?"), versions.get("onnxruntime-gpu", "?")
    how = ", V2 ModelStreamInfer" if _streamed(name) else ""
    flag = _serve_flag(entry)
    return f"cnnserve {ours}{how}{f', {flag}' if flag else ''} (ORT {ort})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("bench_results/models"))
    parser.add_argument("--model", default="mnist_cnn")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"default: {','.join(SERVERS)}")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--channels", type=int, default=8, help="as `cnnserve bench server` (default: 8)")
    parser.add_argument("--peers-dir", type=Path, default=PEERS_DIR, help="default: $CNNSERVE_PEERS_DIR")
    parser.add_argument("--workers", default="auto", help="cnnserve-workers: serve --workers (auto)")
    parser.add_argument("--json", type=Path, help="write the run here")
    parser.add_argument("--table", type=Path, metavar="JSON", help="only print the table of a recorded run")
    args = parser.parse_args(argv)
    if args.table:
        recorded = json.loads(args.table.read_text())
        print(table(recorded) + "\n\n" + goals(recorded))
        return 0
    servers = tuple(s for s in args.servers.split(",") if s)
    unknown = [s for s in servers if s not in SERVERS]
    if unknown:
        print(f"compare.py: unknown --servers {unknown}; choose from {', '.join(SERVERS)}", file=sys.stderr)
        return 2
    try:
        concurrency = tuple(int(c) for c in args.concurrency.split(","))
    except ValueError:
        print(f"compare.py: --concurrency takes integers, received {args.concurrency!r}", file=sys.stderr)
        return 2
    try:
        workers = parse_workers(args.workers)
    except CnnserveError as error:
        print(f"compare.py: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cnnserve-peers-") as workdir:
        settings = Settings(args.repository, args.model, servers, concurrency, args.duration, args.warmup,
                            args.peers_dir, Path(workdir), args.channels, workers=workers)  # fmt: skip
        result = run(settings)
    if args.json:
        write_run(result, args.json)
    low, high = min(concurrency), max(concurrency)
    print(table(result, low, high) + "\n\n" + goals(result, low, high))
    return 0


if __name__ == "__main__":
    sys.exit(main())
