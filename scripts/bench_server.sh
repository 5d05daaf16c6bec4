#!/usr/bin/env bash
# Through the server (CPU): the sweeps of BENCHMARKS.md's "Through the server" section, each
# into OUT/server_*.json. The server, its models and the load generator share this machine's
# cores. Needs scripts/bench_models.sh first.
#   scripts/bench_server.sh [OUT]   (default: bench_results)
set -euo pipefail
out=${1:-${BENCH_OUT:-bench_results}}
bin=${BIN:-.venv/bin}
repo=$out/models
run="--duration ${BENCH_DURATION_S:-5} --warmup ${BENCH_WARMUP_S:-1}"
server_pid=

start_server() {  # start_server NAME [serve flags...]: the server on a free port, $port set
  local name=$1; shift
  rm -f "$out/$name.ready.json"
  "$bin/cnnserve" serve --repository "$repo" --models mnist_cnn,cs231n_complex,noop,noop_cifar \
      --host 127.0.0.1 --port 0 --http-port off --metrics-port off --http-port off --ready-file "$out/$name.ready.json" "$@" \
      > "$out/$name.server.log" 2>&1 &
  server_pid=$!
  while [ ! -f "$out/$name.ready.json" ]; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$out/$name.server.log"; exit 1; }
    sleep 0.2
  done
  port=$("$bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["grpc_port"])' "$out/$name.ready.json")
}

stop_server() {
  kill -TERM "$server_pid" && wait "$server_pid"
  server_pid=
}
trap '[ -z "$server_pid" ] || kill -TERM "$server_pid" 2>/dev/null' EXIT

bench() {  # bench NAME [bench server flags...]
  local name=$1; shift
  "$bin/cnnserve" bench server --target "127.0.0.1:$port" $run --json "$out/server_$name.json" \
      --csv "$out/server_$name.csv" "$@"
}

# Exported models keep max_queue_delay_ms 0 (Triton's default): the server as exported.
start_server default
bench mnist_v2 --model mnist_cnn --protocol v2 --concurrency 1,4,16,32,64 --noop-model noop
bench mnist_cnnserve --model mnist_cnn --protocol cnnserve --concurrency 1,4,16,32,64 --noop-model noop
bench mnist_64 --model mnist_cnn --protocol v2 --concurrency 1,2,4,8 --images-per-request 64 --noop-model ''
bench cs231n_complex_v2 --model cs231n_complex --protocol v2 --concurrency 1,4,16,64 --noop-model noop_cifar
bench mnist_stream --model mnist_cnn --protocol v2 --streaming --concurrency 1,32 --noop-model ''
# Open loop: latency from each request's scheduled send time, Poisson arrivals.
bench mnist_open --model mnist_cnn --protocol v2 --request-rate 250,500,1000,2000 --arrivals poisson \
    --noop-model ''
stop_server

# The same server waiting up to 2 ms for a batch to fill.
start_server delay2 --max-queue-delay-ms 2
bench mnist_delay2 --model mnist_cnn --protocol v2 --concurrency 1,32 --noop-model ''
stop_server

# ONNX Runtime's session options through the server, the standard library's event loop, and
# two model instances (one intra-op thread each).
for option in spinning threads1 asyncio instances2; do
  case $option in
    spinning) flags=(--cpu-spinning) ;;
    threads1) flags=(--cpu-threads 1) ;;
    asyncio) flags=(--event-loop asyncio) ;;
    instances2) flags=(--instances 2) ;;
  esac
  start_server "$option" "${flags[@]}"
  bench "opt_${option}" --model mnist_cnn --protocol v2 --concurrency 1,32 --noop-model ''
  bench "opt_${option}_64" --model mnist_cnn --protocol v2 --concurrency 1,4,8 --images-per-request 64 \
      --noop-model ''
  stop_server
done
echo "server results in $out/server_*.json"
