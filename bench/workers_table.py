"""Markdown tables and the many-core estimate from the JSON that bench/workers.py writes.

    .venv/bin/python bench/workers_table.py runs/bench_workers/workers.json [--cores 16]
    .venv/bin/python bench/workers_table.py RUN1.json RUN2.json ...   # workers' req/s side by side

The estimate: a server with S cores for serving answers about S / c requests per second, where c
is the server CPU seconds per request measured at the highest concurrency with one intra-op
thread per worker (the --workers N layout of a many-core host); no more than S × X, X being the
in-process batch-64 throughput of one thread on the same file (the model alone, batched fully);
and one worker's event loop no more than 1 / m, m being the busiest main thread's CPU seconds
per request, so N workers must be at least the request rate × m.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _f(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def by_process(level: dict) -> str:
    """The processes that did work (supervisor and workers), busiest first."""
    seconds = sorted((s for s in level["per_process_cpu_s"].values() if s >= 0.01), reverse=True)
    return " / ".join(f"{s:.2f}" for s in seconds)


def server_table(result: dict) -> list[str]:
    lines = [
        "| model | workers | concurrency | req/s | p50 ms | p99 ms | mean batch | server CPU ms/request "
        "| busiest main thread ms/request | server cores busy | client CPU (% of a core) "
        "| client loop busy | server CPU s by process |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [(s["workers"], level) for s in result["servers"] for level in s["levels"]]
    rows.sort(key=lambda r: (r[1]["model"], r[1]["concurrency"], r[0]))
    for workers, level in rows:
        per_request = level["server_cpu_ms_per_request"]
        busy = level["requests_per_s"] * per_request / 1e3 if per_request else None
        lines.append(
            f"| {level['model']} | {workers} | {level['concurrency']} | {_f(level['requests_per_s'])} "
            f"| {_f(level['p50_ms'], 2)} | {_f(level['p99_ms'], 2)} | {_f(level['server_batch_size'], 1)} "
            f"| {_f(per_request, 3)} | {_f(level['busiest_main_thread_cpu_ms_per_request'], 3)} "
            f"| {_f(busy, 2)} | {_f(level['client_cpu_pct'])}% | {_f(level['client_loop_busy_pct'])}% "
            f"| {by_process(level)} |"
        )
    return lines


def local_rows(result: dict) -> dict[tuple[str, int, int], float]:
    """(model, intra-op threads, batch size) -> images/s."""
    return {(r["model"], r["intra_op_threads"], r["batch_size"]): r["images_per_s"] for r in result["local"]}


def local_table(result: dict) -> list[str]:
    local = local_rows(result)
    best = {}
    for server in result["servers"]:
        for level in server["levels"]:
            key = (level["model"], server["workers"])
            best[key] = max(best.get(key, 0.0), level["requests_per_s"])
    lines = [
        "| model | intra-op threads | in-process batch 1 images/s | in-process batch 64 images/s "
        "| best server req/s, workers 1 | workers 2 | workers 2 / batch 64 (2 threads) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    threads = sorted({t for _, t, _ in local}, reverse=True)
    for model in sorted({m for m, _, _ in local}):
        top = local.get((model, max(threads), 64))
        for t in threads:
            two = best.get((model, 2))
            ratio = f"{two / top:.0%}" if two and top and t == max(threads) else ""
            lines.append(
                f"| {model} | {t} | {_f(local.get((model, t, 1)))} | {_f(local.get((model, t, 64)))} "
                f"| {_f(best.get((model, 1)))} | {_f(two)} | {ratio} |"
            )
    return lines


def estimate(result: dict, cores: int) -> list[str]:
    local = local_rows(result)
    lines = [
        f"| model | c: server CPU ms/request (workers 2, highest concurrency) | m: busiest main thread "
        f"ms/request | X: batch 64, 1 thread, images/s | {cores} cores: S / c | cap S × X "
        f"| workers needed (rate × m) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for server in result["servers"]:
        if server["workers"] != max(s["workers"] for s in result["servers"]):
            continue
        for model in sorted({level["model"] for level in server["levels"]}):
            levels = [level for level in server["levels"] if level["model"] == model]
            top = max(levels, key=lambda level: level["concurrency"])
            c_ms, m_ms = top["server_cpu_ms_per_request"], top["busiest_main_thread_cpu_ms_per_request"]
            x = local.get((model, 1, 64))
            rate = cores / (c_ms / 1e3)
            cap = cores * x if x else None
            needed = min(rate, cap or rate) * m_ms / 1e3
            lines.append(
                f"| {model} | {c_ms:.3f} | {m_ms:.3f} | {_f(x)} | {_f(rate)} | {_f(cap)} | {needed:.1f} |"
            )
    return lines


def ratio_table(results: list[dict]) -> list[str]:
    """req/s of each worker count, and the highest over the lowest, per run (one column per run)."""
    counts = sorted({s["workers"] for r in results for s in r["servers"]})
    low, high = counts[0], counts[-1]
    lines = [
        "| model | concurrency | "
        + " | ".join(
            f"run {i + 1} ({r['started_utc'][11:16]}Z): workers {low} → {high} req/s"
            for i, r in enumerate(results)
        )
        + " |",
        "| --- | --- | " + " | ".join("---" for _ in results) + " |",
    ]
    keys = sorted(
        {(lv["model"], lv["concurrency"]) for r in results for s in r["servers"] for lv in s["levels"]}
    )
    for model, concurrency in keys:
        cells = []
        for r in results:
            rate = {
                s["workers"]: lv["requests_per_s"]
                for s in r["servers"]
                for lv in s["levels"]
                if (lv["model"], lv["concurrency"]) == (model, concurrency)
            }
            a, b = rate.get(low), rate.get(high)
            cells.append(f"{_f(a)} → {_f(b)} ({b / a:.2f}×)" if a and b else "—")
        lines.append(f"| {model} | {concurrency} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("json", type=Path, nargs="+", help="one run's JSON, or several to compare")
    parser.add_argument("--cores", type=int, default=16, help="cores for serving in the estimate")
    args = parser.parse_args(argv)
    for path in args.json:
        if not path.is_file():
            parser.error(f"{path}: no such file; run bench/workers.py first")
    if len(args.json) > 1:
        print("\n".join(ratio_table([json.loads(p.read_text()) for p in args.json])))
        return 0
    result = json.loads(args.json[0].read_text())
    idle = ", ".join(f"workers {s['workers']}: {s['idle_server_cores']:.3f}" for s in result["servers"])
    print(
        f"{result['command']} — {result['started_utc']}, {result['cores']} cores, "
        f"{result['wall_s']:.0f} s; load average at start {result['loadavg_at_start'][0]:.1f}, "
        f"at end {result['loadavg_at_end'][0]:.1f}; idle server cores ({idle})\n"
    )
    print("\n".join(server_table(result)) + "\n")
    print("\n".join(local_table(result)) + "\n")
    print("\n".join(estimate(result, args.cores)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
