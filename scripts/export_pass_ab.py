"""What each exporter graph pass and the CPU filter padding buy, in-process, on the machine at hand.

For every zoo model asked for (random weights: latency does not depend on them), the model is
folded and converted once with tf2onnx, as `cnnserve export` does. From that one conversion it
builds the exporter's full pipeline and, for each pass that rewrote something, the pipeline
without that pass; and the full pipeline opened without the filter padding the server applies to
CPU sessions. Every variant must give the full pipeline's logits (to a relative 1e-5), then all
are timed in one process, in alternating rounds, with the server's session options, so a slow
spell of a shared machine lands on every variant alike:

    .venv/bin/python scripts/export_pass_ab.py --models all --json bench_results/export_passes.json
    .venv/bin/python scripts/export_pass_ab.py --table bench_results/export_passes.json

BENCHMARKS.md ("What the exporter's graph passes and the CPU filter padding buy") is that table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

# Passes the others build on (shapes) or that only sweep up (cleanup): the pipeline without them
# is not the exporter's graph minus one change, so they are not measured on their own.
_FOUNDATIONS = ("fold_batch_invariant_shapes", "remove_dead_nodes")
NO_PADDING = "cpu_filter_padding"
EXACT = 1e-5  # relative to the largest logit: the passes are exact, float summation order aside


@dataclass(frozen=True)
class Timing:
    model: str
    change: str  # a pass's name, or NO_PADDING
    rewrites: int  # what the change rewrote in the full pipeline (padded convs for NO_PADDING)
    batch: int
    with_ms: float  # p50 per batch, the full pipeline as the server opens it
    without_ms: float  # p50 per batch, without the change
    with_round_ms: tuple[float, ...]  # each round's p50, to show the spread
    without_round_ms: tuple[float, ...]
    max_relative_error: float

    @property
    def speedup(self) -> float:
        return self.without_ms / self.with_ms


def _variants(model_name: str, workdir: Path) -> tuple[dict[str, tuple[bytes | str, int]], dict]:
    """name → (what a CPU session opens, rewrites), and the full pipeline's report."""
    import onnx

    from cnnserve.bench.export_adapter import folded_source
    from cnnserve.export.onnx_export import convert
    from cnnserve.export.onnx_optimize import PASSES, optimize
    from cnnserve.serving.nchwc_padding import cpu_session_model
    from cnnserve.training.models import build_model

    raw = convert(folded_source(model_name, build_model(model_name), workdir))

    def session_model(model: onnx.ModelProto, name: str) -> tuple[bytes | str, int]:
        path = workdir / f"{name}.onnx"
        onnx.save(model, str(path))
        source, padded = cpu_session_model(path, "all")
        return source, len(padded)

    full, report = optimize(raw)
    padded_source, padded_convs = session_model(full, "full")
    variants = {"full": (padded_source, 0)}
    if padded_convs:
        variants[NO_PADDING] = (str(workdir / "full.onnx"), padded_convs)
    for graph_pass in PASSES:
        name = graph_pass.__name__
        if name in _FOUNDATIONS or not report.passes.get(name):
            continue
        without, _ = optimize(raw, tuple(p for p in PASSES if p is not graph_pass))
        variants[name] = (session_model(without, name)[0], report.passes[name])
    return variants, report.passes


def _p50_runs(session, feed: dict, min_time_s: float, min_runs: int) -> list[float]:
    session.run(None, feed)  # warm after the other variants ran
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_time_s:
        begin = time.perf_counter_ns()
        session.run(None, feed)
        times.append((time.perf_counter_ns() - begin) / 1e6)
    return times


def measure_model(
    model_name: str, batch_sizes: Sequence[int], rounds: int, min_time_s: float
) -> list[Timing]:
    with tempfile.TemporaryDirectory(prefix=f"pass_ab_{model_name}_") as tmp:
        variants, _ = _variants(model_name, Path(tmp))
        return measure_variants(model_name, variants, batch_sizes, rounds, min_time_s)


def measure_variants(
    model_name: str,
    variants: dict[str, tuple[bytes | str, int]],
    batch_sizes: Sequence[int],
    rounds: int,
    min_time_s: float,
) -> list[Timing]:
    import onnxruntime as ort

    from cnnserve.serving.session import CPU, SessionSettings, providers, session_options

    options = session_options(SessionSettings(CPU))
    sessions = {
        name: ort.InferenceSession(source, options, providers=providers(CPU))
        for name, (source, _) in variants.items()
    }
    spec = sessions["full"].get_inputs()[0]
    rng = np.random.default_rng(0)
    timings = []
    for batch in batch_sizes:
        feed = {spec.name: rng.integers(0, 256, (batch, *spec.shape[1:]), dtype=np.uint8)}
        expected = sessions["full"].run(None, feed)[0].astype(np.float64)
        scale = max(1.0, float(np.abs(expected).max()))
        errors = {}
        for name, session in sessions.items():
            got = session.run(None, feed)[0].astype(np.float64)
            errors[name] = float(np.abs(got - expected).max() / scale)
            if errors[name] > EXACT:
                raise SystemExit(
                    f"{model_name} without {name}: logits differ by {errors[name]:.3g} of the largest"
                )
        per_round: dict[str, list[list[float]]] = {name: [] for name in sessions}
        for round_index in range(rounds):
            order = list(sessions) if round_index % 2 == 0 else list(reversed(sessions))
            for name in order:
                per_round[name].append(_p50_runs(sessions[name], feed, min_time_s, 5))
        with_all = [t for r in per_round["full"] for t in r]
        for name in sessions:
            if name == "full":
                continue
            without_all = [t for r in per_round[name] for t in r]
            timings.append(Timing(
                model_name, name, variants[name][1], batch,
                float(np.median(with_all)), float(np.median(without_all)),
                tuple(round(float(np.median(r)), 4) for r in per_round["full"]),
                tuple(round(float(np.median(r)), 4) for r in per_round[name]),
                errors[name],
            ))  # fmt: skip
    return timings


def table(records: Sequence[dict]) -> str:
    lines = [
        "| model | without | rewrites | batch | with (ms) | without (ms) | without ÷ with "
        "| rounds' p50 with / without (ms) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        spread = (
            f"{min(r['with_round_ms']):.3f}–{max(r['with_round_ms']):.3f} / "
            f"{min(r['without_round_ms']):.3f}–{max(r['without_round_ms']):.3f}"
        )
        lines.append(
            f"| {r['model']} | `{r['change']}` | {r['rewrites']} | {r['batch']} | {r['with_ms']:.3f} | "
            f"{r['without_ms']:.3f} | {r['without_ms'] / r['with_ms']:.2f}× | {spread} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="all", help="zoo models, comma-separated, or 'all'")
    parser.add_argument("--batch-sizes", default="1,64,256")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per batch size")
    parser.add_argument("--min-time-s", type=float, default=0.3, help="per variant per round")
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--table", type=Path, help="print the table of a recorded JSON and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())["records"]))
        return 0
    from cnnserve.training.models import ZOO

    models = list(ZOO) if args.models == "all" else args.models.split(",")
    unknown = [m for m in models if m not in ZOO]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; the zoo has {', '.join(ZOO)}")
    try:
        sizes = [int(size) for size in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes takes positive integers, comma-separated; received {args.batch_sizes!r}")
    if min(sizes) < 1 or args.rounds < 1 or args.min_time_s < 0:
        parser.error("--batch-sizes and --rounds must be at least 1, --min-time-s at least 0")
    started = time.time()
    records = []
    for name in models:
        for timing in measure_model(name, sizes, args.rounds, args.min_time_s):
            records.append({**asdict(timing), "speedup": timing.speedup})
            print(table([records[-1]]).splitlines()[-1], flush=True)
    from cnnserve.bench.report import write_run
    from cnnserve.bench.system import collect

    result = {"command": " ".join(sys.argv), "seconds": round(time.time() - started, 1),
              "system": asdict(collect()), "records": records}  # fmt: skip
    if args.json:
        write_run(result, args.json)
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
