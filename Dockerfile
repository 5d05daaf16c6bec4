# cnnserve inference server: `cnnserve serve` on ONNX Runtime, no TensorFlow.
#
# CPU image (default):
#   docker build -t cnnserve:cpu .
# CUDA image (CUDA 13 + cuDNN 9, what onnxruntime-gpu 1.31 requires):
#   docker build --build-arg DEVICE=cuda -t cnnserve:cuda .
# The CPU image installs ONNX Runtime's CPU build (`onnxruntime`, same version as the pinned
# onnxruntime-gpu; deploy/image/onnxruntime_for_device.py swaps the requirement before
# `pip install .`) and runs `cnnserve serve --device cpu`; the CUDA image installs onnxruntime-gpu.
# Run with the model repository mounted read-only:
#   docker run --rm -p 8500:8500 -p 8002:8002 -v "$PWD/models:/models:ro" cnnserve:cpu
#   docker run --rm --gpus all -p 8500:8500 -p 8002:8002 -v "$PWD/models:/models:ro" cnnserve:cuda
# Arguments after the image name replace the default CMD (keep --repository /models).
# `docker stop -t 35` gives the server its 30 s drain (--grace-s) before SIGKILL.

ARG DEVICE=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# --- interpreter bases: the venv is built on the same base it runs on -------------------------
FROM ${PYTHON_IMAGE} AS base-cpu

FROM ${CUDA_IMAGE} AS base-cuda
# Ubuntu's python3 (3.12) follows the base image's security updates, hence unpinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# --- build: install the serving packages (serving dependencies only, no TensorFlow) -------------
# base-${DEVICE} is a stage of this file, not a registry image: nothing to tag.
# hadolint ignore=DL3006
FROM base-${DEVICE} AS build
ARG DEVICE
WORKDIR /src
COPY pyproject.toml README.md ./
COPY deploy/image/onnxruntime_for_device.py /usr/local/bin/
# Only what the server and the clients import: no training, export or bench code in the image.
COPY cnnserve ./cnnserve
COPY contracts ./contracts
COPY serving ./serving
COPY protos ./protos
# The package's own metadata names the ONNX Runtime it gets, so `pip check` is clean in both images.
RUN python3 /usr/local/bin/onnxruntime_for_device.py --device "${DEVICE}" --serving-only pyproject.toml \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check .

# --- runtime ---------------------------------------------------------------------------------
# base-${DEVICE} is a stage of this file, not a registry image: nothing to tag.
# hadolint ignore=DL3006
FROM base-${DEVICE} AS runtime
# ORT_DISABLE_TELEMETRY: ONNX Runtime 1.31 otherwise keeps a telemetry database under $HOME, which
# uid 10001 does not have, and warns at every start that it could not.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1
COPY --from=build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin cnnserve \
    && mkdir -p /models \
    && chown cnnserve:cnnserve /models
USER 10001:10001
VOLUME ["/models"]
# 8500: gRPC (cnnserve.v1.Classifier, KServe V2, health, reflection). 8000: KServe V2 REST. 8002: Prometheus /metrics.
EXPOSE 8500 8000 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["cnnserve", "health", "--target", "127.0.0.1:8500"]
# Exec form: the server is PID 1 and gets SIGTERM directly, for a graceful drain on `docker stop`.
ENTRYPOINT ["cnnserve", "serve"]
CMD ["--repository", "/models", "--host", "0.0.0.0", "--port", "8500", "--metrics-port", "8002"]

# --- the image for DEVICE ---------------------------------------------------------------------
# CPU: ONNX Runtime's CPU build has no CUDA provider, so `--device auto` would only ever fall back
# (with a warning); --device cpu is in the entrypoint so replacing the CMD keeps it.
FROM runtime AS runtime-cpu
ENTRYPOINT ["cnnserve", "serve", "--device", "cpu"]
CMD ["--repository", "/models", "--host", "0.0.0.0", "--port", "8500", "--metrics-port", "8002"]

# CUDA: `--device auto` uses CUDA when a session confirms it.
FROM runtime AS runtime-cuda

# runtime-${DEVICE} is a stage of this file, not a registry image: nothing to tag.
# hadolint ignore=DL3006
FROM runtime-${DEVICE}
