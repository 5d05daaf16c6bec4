"""Names more than one stage must spell the same way: the served signature's tensors, the
devices a user can ask for and the ONNX Runtime providers behind them, and the wire limits."""

from __future__ import annotations

# The folded SavedModel's signature (training writes it, export and bench read it) and the
# tensors every exported format and config.json use.
SERVING_SIGNATURE = "serving_default"  # TensorFlow's default signature key
INPUT_NAME = "images"  # uint8 [-1, H, W, C]
LOGITS = "logits"
PROBABILITIES = "probabilities"
OUTPUT_NAMES = (LOGITS, PROBABILITIES)

# `--device` for the server and `bench local`: auto is CUDA when a session really runs there.
DEVICES = ("auto", "cpu", "cuda")
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"

# gRPC's own default is 4 MiB, too small for a batch of 64 CIFAR-10 images as float32.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Requests waiting per model version before new ones are refused UNAVAILABLE.
DEFAULT_MAX_QUEUE_SIZE = 1024
