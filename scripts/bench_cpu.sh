#!/usr/bin/env bash
# `make bench`: the CPU benchmark set behind BENCHMARKS.md, from a clean checkout, into OUT
# (default bench_results/): the models, the in-process sweep of every zoo model and backend,
# the server sweeps, then OUT/tables.md rendered from the JSON by scripts/render_benchmarks.py.
#   scripts/bench_cpu.sh [OUT]
set -euo pipefail
out=${1:-${BENCH_OUT:-bench_results}}
bin=${BIN:-.venv/bin}
mkdir -p "$out"
started=$(date +%s)
scripts/bench_models.sh "$out"
"$bin/cnnserve" bench local --synthetic --model all --backends onnxruntime,tensorflow,tflite --device cpu \
    --batch-sizes 1,64,256 --min-time-s 1 --json "$out/local_cpu.json" --csv "$out/local_cpu.csv"
scripts/bench_server.sh "$out"
"$bin/python" scripts/render_benchmarks.py "$out" > "$out/tables.md"
echo "bench: $(( $(date +%s) - started )) s; tables in $out/tables.md"
