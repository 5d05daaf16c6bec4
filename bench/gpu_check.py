"""`make gpu-check`: the GPU figures from a clean checkout, in one command, in a few minutes.

On a machine with a CUDA GPU: confirm CUDA with a real ONNX Runtime session (before anything
else, so a CPU machine fails at once with "no CUDA GPU: ..." and exit 2 instead of quietly
benchmarking its CPU), train two zoo models for a few synthetic steps (speed only: the weights
do not matter), export them to ONNX, run `bench local --device cuda --io-binding`, then
`serve --device cuda` under `bench server`, and write one JSON and one Markdown table with the
tutorials' 2–5 ms GPU figure beside ours. Every figure is checked to have run on the device
asked for.

Every step is the real `cnnserve` command line in a subprocess (its log in OUT/logs/), so the
check exercises exactly what a user runs. `--device cpu` rehearses the same steps on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cnnserve.contracts.errors import CnnserveError

MODELS = ("mnist_cnn", "cs231n_complex")
BUDGET_S = 480
LOCAL_BATCH_SIZES = "1,8,64,256"
SERVER_CONCURRENCY = "1,8,32"
BATCH_REQUEST_IMAGES = 64
SERVER_START_TIMEOUT_S = 240
EXIT_NO_GPU = 2


class CheckFailed(Exception):
    """A step failed; the message names it and its log."""


class NoGpu(CheckFailed):
    """No CUDA device ONNX Runtime can use: the check refuses to produce CPU figures."""


@dataclass(frozen=True)
class CheckOptions:
    out: Path
    device: str = "cuda"  # "cpu" rehearses the same steps without a GPU
    train_steps: int = 20
    duration_s: float = 5.0
    warmup_s: float = 2.0
    models: tuple[str, ...] = MODELS

    def __post_init__(self) -> None:
        if self.device not in ("cuda", "cpu"):
            raise CnnserveError(f"--device must be cuda or cpu, received {self.device!r}")
        if self.train_steps < 1 or self.duration_s <= 0 or self.warmup_s < 0:
            raise CnnserveError(
                f"--steps must be >= 1, --duration > 0 and --warmup >= 0, received "
                f"{self.train_steps}, {self.duration_s:g}, {self.warmup_s:g}"
            )


# --------------------------------------------------------------------------- CUDA first


def _probe_model(path: Path) -> Path:
    """A one-Conv ONNX model: enough for ONNX Runtime to create (or refuse) the CUDA provider."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "cuda_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def gpu_description() -> dict[str, str]:
    """nvidia-smi's name, driver and memory of each GPU, when it is installed."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {}
    query = "--query-gpu=name,driver_version,memory.total"
    try:
        done = subprocess.run(
            [smi, query, "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return {f"gpu{index}": line for index, line in enumerate(lines)}


def require_cuda() -> str:
    """The reason CUDA is confirmed, or CheckFailed('no CUDA GPU: ...') with ONNX Runtime's reason."""
    from cnnserve.serving.session import resolve_device

    with tempfile.TemporaryDirectory(prefix="cnnserve-gpu-check-") as folder:
        try:
            choice = resolve_device("cuda", [_probe_model(Path(folder) / "probe.onnx")])
        except CnnserveError as error:
            reason = str(error).removeprefix("--device cuda: ").removesuffix("; use --device auto or cpu")
            raise NoGpu(f"no CUDA GPU: {reason}; run make gpu-check on a machine with one") from None
    return choice.reason


# --------------------------------------------------------------------------- steps


class Steps:
    """Runs `cnnserve` sub-commands, each with its log, and times them."""

    def __init__(self, out: Path) -> None:
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cnnserve", *args]

    def run(self, name: str, *args: str, timeout_s: float = 300) -> None:
        log = self.logs / f"{name}.log"
        print(f"gpu-check: {name} ...", flush=True)
        start = time.monotonic()
        with log.open("wb") as handle:
            try:
                done = subprocess.run(
                    self.command(*args), stdout=handle, stderr=subprocess.STDOUT, timeout=timeout_s
                )
            except subprocess.TimeoutExpired:
                raise CheckFailed(f"{name} took over {timeout_s:g} s; see {log}") from None
        self.seconds[name] = round(time.monotonic() - start, 1)
        if done.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise CheckFailed(f"{name} failed (exit {done.returncode}): {tail[0]}; see {log}")


@contextlib.contextmanager
def running_server(steps: Steps, options: CheckOptions, repository: Path):
    """`cnnserve serve` on a free port; yields its gRPC port, then drains it with SIGTERM."""
    ready = options.out / "server.json"
    ready.unlink(missing_ok=True)
    log = steps.logs / "serve.log"
    command = steps.command(
        "serve", "--repository", str(repository), "--models", ",".join(options.models),
        "--device", options.device, "--host", "127.0.0.1", "--port", "0", "--metrics-port", "off",
        "--http-port", "off", "--model-control", "none", "--ready-file", str(ready),
    )  # fmt: skip
    print("gpu-check: serve ...", flush=True)
    start = time.monotonic()
    with log.open("wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    try:
        while not ready.exists():
            if process.poll() is not None:
                raise CheckFailed(f"serve exited with {process.returncode} while loading; see {log}")
            if time.monotonic() - start > SERVER_START_TIMEOUT_S:
                raise CheckFailed(f"serve not ready after {SERVER_START_TIMEOUT_S} s; see {log}")
            time.sleep(0.1)
        steps.seconds["serve_start"] = round(time.monotonic() - start, 1)
        yield int(json.loads(ready.read_text())["grpc_port"])
        process.send_signal(signal.SIGTERM)
        if process.wait(timeout=60) != 0:
            raise CheckFailed(f"serve exited with {process.returncode} after SIGTERM; see {log}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run_check(options: CheckOptions) -> dict:
    started = time.monotonic()
    cuda = require_cuda() if options.device == "cuda" else "--device cpu (rehearsal)"
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    steps = Steps(out)
    repository = out / "models"
    for model in options.models:
        run = out / "runs" / model
        steps.run(f"train_{model}", "train", "--model", model, "--dataset", "synthetic",
                  "--steps", str(options.train_steps), "--precise-bn-batches", "2",
                  "--out", str(run), "--overwrite", "--no-progress")  # fmt: skip
        steps.run(f"export_{model}", "export", str(run), "--format", "onnx", "--repository",
                  str(repository), "--version", "1", "--overwrite", "--parity-images", "256")  # fmt: skip
    local_json = out / "bench_local.json"
    steps.run("bench_local", "bench", "local", "--repository", str(repository),
              "--model", ",".join(options.models), "--backends", "onnxruntime",
              "--device", options.device, "--io-binding", "--batch-sizes", LOCAL_BATCH_SIZES,
              "--rounds", "2", "--min-time-s", "1", "--json", str(local_json))  # fmt: skip
    server_records: list[dict] = []
    with running_server(steps, options, repository) as port:
        for model in options.models:
            for images, concurrency in ((1, SERVER_CONCURRENCY), (BATCH_REQUEST_IMAGES, "1,4")):
                path = out / f"bench_server_{model}_{images}.json"
                steps.run(f"bench_server_{model}_{images}", "bench", "server",
                          "--target", f"127.0.0.1:{port}", "--model", model, "--protocol", "v2",
                          "--concurrency", concurrency, "--images-per-request", str(images),
                          "--duration", f"{options.duration_s:g}", "--warmup", f"{options.warmup_s:g}",
                          "--noop-model", "", "--json", str(path))  # fmt: skip
                server_records += json.loads(path.read_text())
    local_records = json.loads(local_json.read_text())
    check_devices(options.device, local_records, server_records)
    elapsed_s = round(time.monotonic() - started, 1)
    report = {
        "device": options.device,
        "cuda": cuda,
        "gpu": gpu_description(),
        "models": list(options.models),
        "elapsed_s": elapsed_s,
        "budget_s": BUDGET_S,
        "steps_s": steps.seconds,
        "table": summary_rows(local_records, server_records),
        "local": local_records,
        "server": server_records,
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown_table(report))
    return report


def check_devices(device: str, local: Sequence[dict], server: Sequence[dict]) -> None:
    """Every figure ran where it was asked to, or the check fails (never CPU figures as GPU ones)."""
    if not local or not server:
        raise CheckFailed(f"no figures: {len(local)} bench local records, {len(server)} bench server records")
    wrong = [
        f"bench local {r['model']} batch {r['batch_size']}: {r['device']}"
        for r in local
        if r["device"] != device
    ]
    wrong += [
        f"bench server {r['model']}: {r.get('device') or 'unknown'}"
        for r in server
        if r.get("device") != device
    ]
    if wrong:
        raise CheckFailed(f"ran on the wrong device (asked for {device}): {'; '.join(wrong[:4])}")


# --------------------------------------------------------------------------- the table


def _find(records: Sequence[dict], **match) -> dict | None:
    return next((r for r in records if all(r.get(key) == value for key, value in match.items())), None)


def summary_rows(local: Sequence[dict], server: Sequence[dict]) -> list[dict]:
    """One row per model: in-process latency and throughput, the tutorials' GPU figure where it
    applies (cs231n_complex at batch 64), and what the server does with single and 64-image requests."""
    from cnnserve.bench.reference import REFERENCE_BATCH_SIZE, REFERENCE_MODEL, TUTORIAL_FIGURES

    gpu = next(figure for figure in TUTORIAL_FIGURES if figure.device == "cuda")
    rows = []
    for model in dict.fromkeys(r["model"] for r in local):
        batch1 = _find(local, model=model, batch_size=1)
        batch64 = _find(local, model=model, batch_size=REFERENCE_BATCH_SIZE)
        largest = max((r for r in local if r["model"] == model), key=lambda r: r["batch_size"])
        single = [r for r in server if r["model"] == model and r["images_per_request"] == 1]
        c1 = _find(single, concurrency=1)
        busiest = max(single, key=lambda r: r["concurrency"] or 0, default=None)
        batched = [
            r for r in server if r["model"] == model and r["images_per_request"] == BATCH_REQUEST_IMAGES
        ]
        best_batched = max(batched, key=lambda r: r["images_per_s"], default=None)
        row = {
            "model": model,
            "device": largest["device"],
            "local_batch1_p50_ms": batch1 and batch1["p50_ms"],
            "local_batch64_p50_ms": batch64 and batch64["p50_ms"],
            "local_max_images_per_s": largest["images_per_s"],
            "local_max_batch": largest["batch_size"],
            "tutorial_gpu_ms": [gpu.low_ms, gpu.high_ms] if model == REFERENCE_MODEL else None,
            "vs_tutorial_gpu": (
                list(gpu.speedup(batch64["p50_ms"])) if model == REFERENCE_MODEL and batch64 else None
            ),
            "server_c1_p50_ms": c1 and c1["p50_ms"],
            "server_concurrency": busiest and busiest["concurrency"],
            "server_requests_per_s": busiest and busiest["requests_per_s"],
            "server_64_image_images_per_s": best_batched and best_batched["images_per_s"],
        }
        rows.append(row)
    return rows


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def markdown_table(report: dict) -> str:
    device = report["device"]
    gpus = "; ".join(report["gpu"].values()) or "no nvidia-smi"
    lines = [
        f"# gpu-check ({device}: {gpus})",
        "",
        f"{report['cuda']}. Took {report['elapsed_s']:g} s (budget {report['budget_s']} s). "
        "Synthetic weights, speed only.",
        "",
        "| model | device | local batch 1 p50 ms | local batch 64 p50 ms "
        "| tutorials' GPU figure (batch 64) | local max images/s (batch) | server c=1 p50 ms "
        "| server req/s (c) | server 64-image requests images/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["table"]:
        tutorial = "—"
        if row["tutorial_gpu_ms"]:
            low, high = row["tutorial_gpu_ms"]
            tutorial = f"{low:g}–{high:g} ms (stated)"
            if row["vs_tutorial_gpu"]:
                from cnnserve.bench.reference import format_speedup

                low, high = row["vs_tutorial_gpu"]
                if low >= 1:
                    tutorial += f"; ours {format_speedup(low, high)} faster"
                else:
                    tutorial += f"; ours {format_speedup(1 / high, 1 / low)} slower"
        lines.append(
            f"| {row['model']} | {row['device']} | {_ms(row['local_batch1_p50_ms'])} "
            f"| {_ms(row['local_batch64_p50_ms'])} | {tutorial} "
            f"| {_rate(row['local_max_images_per_s'])} ({row['local_max_batch']}) "
            f"| {_ms(row['server_c1_p50_ms'])} "
            f"| {_rate(row['server_requests_per_s'])} ({row['server_concurrency']}) "
            f"| {_rate(row['server_64_image_images_per_s'])} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cnnserve.bench.gpu_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="default: runs/gpu_check")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to rehearse the steps (default: cuda)")
    parser.add_argument("--steps", type=int, default=20, help="synthetic training steps per model (20)")
    parser.add_argument("--duration", type=float, default=5.0, help="bench server seconds per level (5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="bench server warm-up per level (2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        options = CheckOptions(args.out, args.device, args.steps, args.duration, args.warmup)
        report = run_check(options)
    except NoGpu as error:
        print(f"gpu-check: {error}", file=sys.stderr)
        return EXIT_NO_GPU
    except CnnserveError as error:
        print(f"gpu-check: error: {error}", file=sys.stderr)
        return 2
    except CheckFailed as error:
        print(f"gpu-check: error: {error}", file=sys.stderr)
        return 1
    print(markdown_table(report), end="")
    print(f"gpu-check: wrote {options.out / 'gpu_check.json'} and {options.out / 'gpu_check.md'}")
    if report["elapsed_s"] > BUDGET_S:
        print(
            f"gpu-check: warning: took {report['elapsed_s']:g} s, over the {BUDGET_S} s budget",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
