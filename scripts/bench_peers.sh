#!/usr/bin/env bash
# `make bench-peers`: cnnserve, Seldon MLServer and KServe's ModelServer serving the same ONNX
# file, one after the other, under the same load generator (bench/peers/compare.py), into
# OUT/peers.json. The peers' virtualenvs come from bench/peers/setup.sh (outside the repository).
#   scripts/bench_peers.sh [OUT]
set -euo pipefail
out=${1:-${BENCH_OUT:-bench_results}}
bin=${BIN:-.venv/bin}
bench/peers/setup.sh
scripts/bench_models.sh "$out"
"$bin/python" bench/peers/compare.py --repository "$out/models" --model mnist_cnn --json "$out/peers.json"
