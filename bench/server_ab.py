"""Two `cnnserve serve` configurations side by side: the same load, alternated, several rounds.

Both servers run at once on free loopback ports (the idle one costs next to nothing) and each
round measures A then B with `cnnserve bench server`'s V2 load generator at the same levels, so
a slow spell of a shared machine lands on both, and the spread over rounds shows the noise.
Writes one JSON and prints a markdown table: per level, each round's A and B and the median of
B over A.

    .venv/bin/python -m cnnserve.bench.server_ab --repository bench_results/models --model mnist_cnn \\
        --a "--event-loop asyncio" --b "--event-loop uvloop" --rounds 3 --json runs/ab/event_loop.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cnnserve.bench.cpu_cgroup import quota_cgroup
from cnnserve.bench.report import write_run
from cnnserve.bench.serve_process import LOOPBACK, start_cnnserve
from cnnserve.bench.server_bench import ServerPlan, run_server_bench
from cnnserve.bench.source_tree import SourceTree, export_revision
from cnnserve.contracts.errors import CnnserveError


@dataclass(frozen=True)
class Level:
    concurrency: int
    images_per_request: int
    streaming: bool = False  # sent as ModelStreamInfer messages (`bench server --streaming`)

    @property
    def label(self) -> str:
        return f"c={self.concurrency}, {self.images_per_request} img/req" + (
            ", streaming" if self.streaming else ""
        )


def parse_levels(text: str) -> tuple[Level, ...]:
    """`1,32,2x64,32s`: concurrency, or concurrency x images per request; `s` at the end streams."""
    levels = []
    for item in text.split(","):
        streaming = item.endswith("s")
        concurrency, _, images = item.removesuffix("s").partition("x")
        try:
            levels.append(Level(int(concurrency), int(images or 1), streaming))
        except ValueError:
            raise SystemExit(
                f"server_ab: --levels takes C, CxIMAGES, Cs or CxIMAGESs items, received {item!r}"
            ) from None
    if not levels or min(min(lv.concurrency, lv.images_per_request) for lv in levels) < 1:
        raise SystemExit(
            f"server_ab: --levels must name at least one level of positive numbers, received {text!r}"
        )
    return tuple(levels)


def measure(target: str, model: str, level: Level, duration_s: float, warmup_s: float) -> dict:
    plan = ServerPlan(
        target=target, model=model, protocol="v2", concurrency=(level.concurrency,),
        images_per_request=level.images_per_request, duration_s=duration_s, warmup_s=warmup_s,
        streaming=level.streaming,
    )  # fmt: skip
    sweep = asyncio.run(run_server_bench(plan))
    if sweep.stopped:
        raise SystemExit(f"server_ab: {target}: {sweep.stopped}")
    (record,) = sweep.records
    return record.to_dict()


def run(args: argparse.Namespace, workdir: Path) -> dict:
    levels = parse_levels(args.levels)
    # Absolute: server A may run in another revision's tree.
    common = ["--repository", str(args.repository.resolve()), "--models", args.model, "--host", LOOPBACK,
              "--port", "0", "--http-port", "off", "--metrics-port", "off",
              "--model-control", "none"]  # fmt: skip
    flags = {"a": shlex.split(args.a), "b": shlex.split(args.b)}
    result: dict = {
        "kind": "server_ab",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": args.model,
        "a": args.a,
        "b": args.b,
        "a_revision": None,
        "levels": [asdict(level) for level in levels],
        "duration_s": args.duration,
        "rounds": [],
    }
    tree: SourceTree | None = None
    if args.a_revision:
        tree = export_revision(args.a_revision, workdir / "a_tree")
        result["a_revision"] = f"{tree.revision} ({tree.commit[:12]})"
    if args.cpu_quota is not None:
        result["cpu_quota"] = args.cpu_quota
    servers = {}
    with contextlib.ExitStack() as cgroups:  # closed after the servers stop: a cgroup must be empty
        try:
            for side in ("a", "b"):
                other_code = tree if side == "a" else None
                prefix: tuple[str, ...] = ()
                if args.cpu_quota is not None:
                    cgroup = cgroups.enter_context(quota_cgroup(args.cpu_quota, f"cnnserve-ab-{side}"))
                    prefix = cgroup.enter_prefix()
                servers[side] = start_cnnserve(
                    [*common, *flags[side]],
                    workdir,
                    name=f"server_{side}",
                    cwd=other_code.path if other_code else None,
                    env=other_code.env() if other_code else None,
                    prefix=prefix,
                )
            _measure_rounds(args, levels, servers, result)
        finally:
            for server, _ in servers.values():
                server.stop()
    return result


def _measure_rounds(args: argparse.Namespace, levels: tuple[Level, ...], servers: dict, result: dict) -> None:
    for index in range(args.rounds):
        print(f"server_ab: round {index + 1} of {args.rounds}", file=sys.stderr)
        records = {side: [] for side in ("a", "b")}
        for level in levels:
            for side in ("a", "b"):
                target = servers[side][1].grpc_target
                records[side].append(measure(target, args.model, level, args.duration, args.warmup))
        result["rounds"].append(records)


# What a table may show besides req/s and p50: (record field, format, column name).
P99 = ("p99_ms", ".2f", "p99 ms")
OWN_TIME = ("server_total_us", ",.0f", "own µs")  # the server's own time, as its trailers say


def table(result: dict, p99: bool = False, own_time: bool = False) -> str:
    """Per level: req/s and p50 (with `p99`, p99; with `own_time`, the server's own time per
    request) of A and B in each round, then the median ratio B / A."""
    a, b = result["a"] or "(defaults)", result["b"] or "(defaults)"
    a_code = f" at {result['a_revision']}" if result.get("a_revision") else ""
    b_code = " in the working tree" if a_code else ""
    quota = result.get("cpu_quota")
    limited = f"; each server in its own cgroup limited to {quota:g} CPU(s)" if quota is not None else ""
    fields = [("requests_per_s", ",.0f", "req/s"), ("p50_ms", ".2f", "p50 ms")]
    fields += [P99] if p99 else []
    fields += [OWN_TIME] if own_time else []
    header = ["level"]
    for _, _, name in fields:
        by_round = " by round" if name == "req/s" else ""
        header += [f"A {name}{by_round}", f"B {name}{by_round}", f"B / A {name.split()[0]} (median)"]
    lines = [
        f"A: `{a}`{a_code}; B: `{b}`{b_code}; {result['model']}, V2, {len(result['rounds'])} round(s) of "
        f"{result['duration_s']:g} s per level, A then B{limited}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    for index, level in enumerate(result["levels"]):
        pairs = [(r["a"][index], r["b"][index]) for r in result["rounds"]]
        cells = [Level(**level).label]
        for field, spec, _ in fields:
            cells += [" / ".join(f"{pair[side][field]:{spec}}" for pair in pairs) for side in (0, 1)]
            cells.append(f"{statistics.median(y[field] / x[field] for x, y in pairs):.2f}×")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _commit(a_revision: str | None) -> str | None:
    """The commit of a recorded --a-revision ("HEAD (0468c20e3017)"), however it was named."""
    return a_revision.split()[-1].strip("()") if a_revision else None


def pooled(results: Sequence[dict]) -> str:
    """Every round of several runs of the same A and B, level by level (in the order levels first
    appear): how many rounds, in how many B served more and took less of its own time, and the
    median ratios. For effects smaller than what one run's rounds vary by."""
    rounds: dict[Level, list[tuple[dict, dict]]] = {}
    for result in results:
        for recorded in result["rounds"]:
            for level, a, b in zip(result["levels"], recorded["a"], recorded["b"], strict=True):
                rounds.setdefault(Level(**level), []).append((a, b))
    lines = [
        f"{len(results)} run(s) of {results[0]['model']}, A then B in each round.",
        "",
        "| level | rounds | B / A req/s (median) | rounds B served more | B / A own µs (median) "
        "| rounds B took less own time |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for level, pairs in rounds.items():
        served = [b["requests_per_s"] / a["requests_per_s"] for a, b in pairs]
        own = [b["server_total_us"] / a["server_total_us"] for a, b in pairs]
        lines.append(
            f"| {level.label} | {len(pairs)} | {statistics.median(served):.2f}× | "
            f"{sum(r > 1 for r in served)} | {statistics.median(own):.2f}× | {sum(r < 1 for r in own)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("bench_results/models"))
    parser.add_argument("--model", default="mnist_cnn")
    parser.add_argument("--a", default="", help="serve flags of server A, one string")
    parser.add_argument("--b", default="", help="serve flags of server B, one string")
    parser.add_argument(
        "--a-revision",
        metavar="REV",
        help="server A runs this git revision's code (exported with git archive), B the working tree's",
    )
    parser.add_argument("--levels", default="1,32,2x64",
                        help="C or CxIMAGES items, s at the end to stream (default: 1,32,2x64)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--cpu-quota", type=float, metavar="CORES",
                        help="each server in a new cgroup limited to CORES CPUs (Linux, root)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the run here")
    parser.add_argument("--table", type=Path, metavar="JSON", help="only print the table of a recorded run")
    parser.add_argument("--pool", type=Path, nargs="+", metavar="JSON",
                        help="only print the rounds of these recorded runs, pooled by level")  # fmt: skip
    parser.add_argument("--p99", action="store_true", help="the table shows each side's p99 too")
    parser.add_argument("--own-time", action="store_true",
                        help="the table shows each side's own time per request too")  # fmt: skip
    args = parser.parse_args(argv)
    if args.pool:
        runs = [json.loads(path.read_text()) for path in args.pool]
        if len({(run["model"], run["a"], run["b"], _commit(run["a_revision"])) for run in runs}) > 1:
            raise SystemExit("server_ab: --pool needs runs of the same model, A and B (and --a-revision)")
        print(pooled(runs))
        return 0
    if args.table:
        print(table(json.loads(args.table.read_text()), args.p99, args.own_time))
        return 0
    if args.rounds < 1:
        raise SystemExit("server_ab: --rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="cnnserve-ab-") as workdir:
        try:
            result = run(args, Path(workdir))
        except CnnserveError as error:
            raise SystemExit(f"server_ab: {error}") from None
    if args.json:
        write_run(result, args.json)
    print(table(result, args.p99, args.own_time))
    return 0


if __name__ == "__main__":
    sys.exit(main())
