#!/usr/bin/env bash
# The models every benchmark script serves: mnist_cnn and cs231n_complex trained briefly on
# synthetic data (latency does not depend on the weights) and exported exactly as a user would,
# plus the no-op models that measure the server's own overhead. Idempotent: an existing
# repository is kept (delete OUT/models to rebuild it).
#   scripts/bench_models.sh [OUT]   (default: bench_results)
set -euo pipefail
out=${1:-${BENCH_OUT:-bench_results}}
bin=${BIN:-.venv/bin}
repo=$out/models
mkdir -p "$out/runs"
for model in mnist_cnn cs231n_complex; do
  if [ -f "$repo/$model/1/model.onnx" ]; then continue; fi
  "$bin/cnnserve" train --model "$model" --dataset synthetic --steps 50 --batch-size 64 \
      --out "$out/runs/$model" --overwrite --no-progress
  "$bin/cnnserve" export "$out/runs/$model" --format onnx --repository "$repo" --version 1 --overwrite
done
[ -d "$repo/noop" ] || "$bin/cnnserve" bench noop-model --repository "$repo" --name noop --shape 28,28,1
[ -d "$repo/noop_cifar" ] || "$bin/cnnserve" bench noop-model --repository "$repo" --name noop_cifar --shape 32,32,3
echo "models in $repo"
