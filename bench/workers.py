"""Workers benchmark: `cnnserve serve --workers N` under `cnnserve bench server`, with the server's CPU cost.

    .venv/bin/python bench/workers.py --out runs/bench_workers/workers.json
    .venv/bin/python bench/workers_table.py runs/bench_workers/workers.json

It starts one server per worker count, each on a free port, and for each model and concurrency
runs one `cnnserve bench server` against each server in turn (single-image V2 requests,
`--client-processes`, `--channels` so every worker gets connections). Around each run it reads
the CPU time (utime + stime from /proc) of every process of the server's tree and of each
process's main thread (the one that runs its event loop), and V2 ModelStatistics' success
count (merged over the workers), so the JSON holds server CPU seconds per request served.
Beside them, `cnnserve bench local` on the same ONNX files at batch 1 and 64, with the
intra-op threads of one server and of one worker.
Models come from scripts/bench_models.sh (trained briefly on synthetic data and exported by
`cnnserve export`; speed does not depend on the weights) unless --repository is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnserve.bench.proc_cpu import CpuSample, cpu_sample, machine_cpu_seconds, process_tree
from cnnserve.bench.serve_process import LOOPBACK, ServerProcess, cnnserve_command, start_cnnserve

ROOT = Path(__file__).resolve().parent.parent
SERVER_FIELDS = (
    "concurrency", "requests", "errors", "window_s", "requests_per_s", "p50_ms", "p90_ms", "p99_ms",
    "server_queue_us", "server_compute_infer_us", "server_total_us", "server_batch_size",
    "client_processes", "client_loop_busy_pct", "client_cpu_pct", "channels",
)  # fmt: skip
LOCAL_FIELDS = ("model", "backend", "batch_size", "p50_ms", "p99_ms", "images_per_s")


def machine_busy_s() -> float:
    """CPU seconds every process of the machine has used (/proc/stat: all but idle and iowait)."""
    return machine_cpu_seconds()[1]


def served_requests(target: str, model: str) -> int:
    """Successful inferences of `model` (every version) from V2 ModelStatistics."""
    import tritonclient.grpc as triton

    with triton.InferenceServerClient(target) as client:
        stats = client.get_inference_statistics(model, as_json=True)
    return sum(int(s["inference_stats"]["success"].get("count", 0)) for s in stats.get("model_stats", []))


def shown(command: list[str], scratch: Path | None = None) -> str:
    """A command as recorded: `cnnserve ...`, paths relative to the repository, scratch files as OUT."""
    text = shlex.join(["cnnserve", *command[3:]]).replace(f"{ROOT}/", "")
    return text.replace(str(scratch), "OUT") if scratch else text


def start_server(repository: Path, models: str, workers: int, workdir: Path) -> tuple[ServerProcess, str]:
    server, ports = start_cnnserve(
        ["--repository", str(repository), "--models", models, "--workers", str(workers),
         "--host", LOOPBACK, "--port", "0", "--http-port", "off", "--metrics-port", "off",
         "--model-control", "none"],
        workdir, name=f"workers{workers}", cwd=ROOT, timeout_s=300, poll_s=0.1,
    )  # fmt: skip
    return server, ports.grpc_target


def _cpu_delta(before: CpuSample, after: CpuSample) -> dict:
    per_process = {
        str(pid): round(after.by_pid[pid] - before.by_pid.get(pid, 0.0), 3) for pid in after.by_pid
    }
    main_threads = {
        str(pid): round(after.main_thread_by_pid[pid] - before.main_thread_by_pid.get(pid, 0.0), 3)
        for pid in after.main_thread_by_pid
    }
    return {
        "server_cpu_s": round(after.total_s - before.total_s, 3),
        "per_process_cpu_s": per_process,
        "main_thread_cpu_s": main_threads,
    }


def bench_level(args, target: str, pid: int, model: str, concurrency: int, workdir: Path) -> dict:
    out = workdir / f"level_{model}_{concurrency}_{pid}.json"
    channels = min(args.channels, concurrency)
    command = cnnserve_command(
        "bench", "server", "--target", target, "--model", model, "--protocol", "v2",
        "--concurrency", str(concurrency), "--images-per-request", "1", "--noop-model", "",
        "--duration", str(args.duration), "--warmup", str(args.warmup),
        "--client-processes", str(args.client_processes), "--channels", str(channels), "--json", str(out),
    )  # fmt: skip
    served_before = served_requests(target, model)
    before, machine_before, started = cpu_sample(pid), machine_busy_s(), time.monotonic()
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    after, wall = cpu_sample(pid), time.monotonic() - started
    machine = machine_busy_s() - machine_before
    served = served_requests(target, model) - served_before
    if run.returncode != 0:
        raise SystemExit(f"bench server failed ({run.returncode}): {run.stderr.strip()[-2000:]}")
    record = json.loads(out.read_text())[0]
    cpu = _cpu_delta(before, after)
    busiest_main = max(cpu["main_thread_cpu_s"].values(), default=0.0)
    return {
        "model": model,
        **{k: record[k] for k in SERVER_FIELDS},
        "command": shown(command, workdir),
        "bench_wall_s": round(wall, 3),
        # Over the whole `bench server` run: every process's cores, and those not the server's
        # (the load generator, its start-up and matmul peak, and whatever else ran: shared machine).
        "machine_busy_cores": round(machine / wall, 3),
        "not_server_busy_cores": round((machine - cpu["server_cpu_s"]) / wall, 3),
        "served_requests": served,
        **cpu,
        "server_cpu_ms_per_request": round(cpu["server_cpu_s"] / served * 1e3, 4) if served else None,
        "busiest_main_thread_cpu_ms_per_request": round(busiest_main / served * 1e3, 4) if served else None,
        "matmul_peak_gflops": record["system"].get("matmul_peak", {}).get("gflops"),
        "loadavg": os.getloadavg(),
    }


def idle_cpu(pid: int, seconds: float) -> float:
    """The idle server's CPU use, in cores, over `seconds` (what a window costs with no load)."""
    before = cpu_sample(pid)
    time.sleep(seconds)
    return round((cpu_sample(pid).total_s - before.total_s) / seconds, 4)


def bench_local(args, repository: Path, threads: int, workdir: Path) -> tuple[list[dict], list[str]]:
    out = workdir / f"local_t{threads}.json"
    command = cnnserve_command(
        "bench", "local", "--repository", str(repository), "--model", args.models,
        "--backends", "onnxruntime", "--device", "cpu", "--batch-sizes", "1,64",
        "--intra-op-threads", str(threads), "--min-time-s", str(args.local_min_time_s), "--json", str(out),
    )  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"bench local failed ({run.returncode}): {run.stderr.strip()[-2000:]}")
    records = json.loads(out.read_text())
    rows = [{k: r.get(k) for k in LOCAL_FIELDS} | {"intra_op_threads": threads} for r in records]
    return rows, command


def measure_servers(args, repository: Path, workdir: Path, scratch: Path) -> list[dict]:
    """Every worker count's server at once, idle but for the one under load: for each model and
    concurrency the worker counts run back to back, so a slow spell of a shared machine lands
    on all of them alike."""
    started: list[tuple[ServerProcess, str, dict]] = []
    try:
        for workers in _ints(args.workers):
            process, target = start_server(repository, args.models, workers, workdir)
            server = {
                "workers": workers,
                "command": shown(process.command),
                "processes": len(process_tree(process.pid)),
            }
            started.append((process, target, server))
        for process, _, server in started:
            server["idle_server_cores"] = idle_cpu(process.pid, 2.0)
            server["levels"] = []
        for model in args.models.split(","):
            for concurrency in _ints(args.concurrency):
                for process, target, server in started:
                    level = bench_level(args, target, process.pid, model, concurrency, scratch)
                    print(
                        f"workers {server['workers']} {model} c={concurrency}: "
                        f"{level['requests_per_s']:.0f} req/s, p50 {level['p50_ms']:.2f} ms, "
                        f"{level['server_cpu_ms_per_request']} server CPU ms/request, "
                        f"client {level['client_cpu_pct']:.0f}% of a core",
                        file=sys.stderr,
                    )
                    server["levels"].append(level)
    finally:
        for process, _, server in started:
            server["exit_code"] = process.stop(timeout_s=120)
    return [server for _, _, server in started]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, help="model repository (default: build one in --work-dir)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench_workers"))
    parser.add_argument("--models", default="mnist_cnn,cs231n_complex")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--concurrency", default="1,32,64")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per level")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--channels", type=int, default=16, help="per level, at most the concurrency")
    parser.add_argument("--local-min-time-s", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_workers/workers.json"))
    args = parser.parse_args(argv)
    workdir = args.work_dir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    repository = args.repository
    if repository is None:
        subprocess.run(["scripts/bench_models.sh", str(workdir)], cwd=ROOT, check=True)
        repository = workdir / "models"
    repository = repository.resolve()
    for model in args.models.split(","):
        if not (repository / model / "config.json").is_file():
            parser.error(f"--repository {repository}: no model {model!r}; run scripts/bench_models.sh first")
    started = time.time()
    result: dict = {
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "command": " ".join(["bench/workers.py", *(argv if argv is not None else sys.argv[1:])]),
        "cores": len(os.sched_getaffinity(0)),
        "cpu": platform.processor() or platform.machine(),
        "loadavg_at_start": os.getloadavg(),
        "servers": [],
        "local": [],
    }
    with tempfile.TemporaryDirectory(prefix="cnnserve-workers-") as scratch:
        scratch_dir = Path(scratch)
        result["servers"] = measure_servers(args, repository, workdir, scratch_dir)
        for threads in sorted({len(os.sched_getaffinity(0)), 1}, reverse=True):
            rows, command = bench_local(args, repository, threads, scratch_dir)
            result["local"] += rows
            result.setdefault("local_commands", []).append(shown(command, scratch_dir))
    result["wall_s"] = round(time.time() - started, 1)
    result["loadavg_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
