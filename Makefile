# Every target creates what it needs: a fresh machine runs `make demo` or `make test` directly.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist
DEMO_DIR := runs/demo
DEMO_REPO := models
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup data demo test lint clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The real Fashion-MNIST IDX files come from Debian's dataset-fashion-mnist package.
data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'"; exit 1; \
	  fi; \
	fi

# The whole product on the real Fashion-MNIST: train (and fold) → export → serve → classify → bench.
demo: setup
	$(BIN)/cnnserve models
	$(BIN)/cnnserve train --model mnist_cnn --dataset fashion_mnist --epochs 2 --lr 1e-3 --out $(DEMO_DIR) --overwrite
	$(BIN)/cnnserve export $(DEMO_DIR) --format onnx --repository $(DEMO_REPO) --version 1 --overwrite
	$(BIN)/cnnserve export $(DEMO_DIR) --format tflite --quantize int8 --repository $(DEMO_REPO) --version 1 --overwrite
	$(BIN)/python -m cnnserve.training.samples --dataset fashion_mnist --count 6 --out $(DEMO_DIR)/samples
	$(BIN)/cnnserve bench noop-model --repository $(DEMO_REPO) --name noop --shape 28,28,1 --overwrite
	rm -f $(DEMO_DIR)/server.json
	$(BIN)/cnnserve serve --repository $(DEMO_REPO) --models mnist_cnn,noop --port 0 --http-port 0 --metrics-port 0 \
	    --ready-file $(DEMO_DIR)/server.json & server=$$!; \
	trap 'kill -TERM $$server 2>/dev/null; wait $$server' EXIT; \
	while [ ! -f $(DEMO_DIR)/server.json ]; do kill -0 $$server || exit 1; sleep 0.2; done; \
	port=$$($(BIN)/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["grpc_port"])' $(DEMO_DIR)/server.json); \
	$(BIN)/cnnserve classify --target localhost:$$port --model mnist_cnn --top-k 3 $(DEMO_DIR)/samples/*.png && \
	$(BIN)/cnnserve bench server --target localhost:$$port --model mnist_cnn --protocol v2 \
	    --concurrency 1,8,32 --duration 3 --warmup 1 && \
	kill -TERM $$server && wait $$server && trap - EXIT && echo "server drained and exited cleanly"
	$(BIN)/cnnserve bench local --repository $(DEMO_REPO) --model mnist_cnn --backends onnxruntime,tflite \
	    --batch-sizes 1,64 --min-time-s 1 --plot $(DEMO_DIR)/bench_local.png

test: setup
	$(BIN)/pytest -q -n 2 --dist loadgroup

# The CPU benchmark set behind BENCHMARKS.md (models, in-process, through the server) into
# $(BENCH_OUT)/*.json, and $(BENCH_OUT)/tables.md rendered from them; bench-peers puts Seldon
# MLServer and KServe beside cnnserve (their venvs outside the repository, bench/peers/setup.sh).
BENCH_OUT ?= bench_results
.PHONY: bench bench-peers
bench: setup
	BIN=$(BIN) scripts/bench_cpu.sh $(BENCH_OUT)

bench-peers: setup
	BIN=$(BIN) scripts/bench_peers.sh $(BENCH_OUT)
	$(BIN)/python scripts/render_benchmarks.py $(BENCH_OUT) > $(BENCH_OUT)/tables.md

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs models build *.egg-info

# Regenerate the checked-in gRPC/protobuf modules next to protos/*.proto.
.PHONY: protos
protos: $(STAMP)
	$(BIN)/python scripts/generate_protos.py

# On a machine with a CUDA GPU: train two zoo models briefly, export, bench local and bench server on
# CUDA, write runs/gpu_check/gpu_check.{json,md}. Exits 2 with "no CUDA GPU: ..." anywhere else.
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(BIN)/python -m cnnserve.bench.gpu_check --out runs/gpu_check
