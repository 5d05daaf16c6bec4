"""HTTP beside gRPC on one server, and whether decoding encoded images stalls other requests.

    .venv/bin/python bench/protocols.py --model-file models/mnist_cnn/1/model.onnx --out protocols.json

Starts one `cnnserve serve` on a scratch copy of the model and measures, with closed-loop
clients on their own connections (asyncio, one process):
1. single-image V2 inference at concurrency 1 and 16 over gRPC (raw tensors) and over HTTP
   (Triton's binary-tensor extension): requests/s and p50/p99;
2. single-image gRPC latency at concurrency 1 alone, then again while 4 other clients keep
   sending 1024x1024 PNG files as encoded images: if decoding ran on the event loop, the small
   requests would wait behind every decode and their p99 would jump to the decode time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import grpc
import numpy as np
from PIL import Image

from cnnserve.bench.serve_process import LOOPBACK, start_cnnserve
from cnnserve.serving.wire_format import length_delimited, varint

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
ONE_IMAGE = np.random.default_rng(0).integers(0, 256, (1, 28, 28, 1), dtype=np.uint8)


def _v2_grpc_request(name: str, tensor: bytes, datatype: str, shape: list[int]) -> bytes:
    """A V2 ModelInferRequest, serialized by hand (this script must not import either copy of
    the V2 protos): fields model_name=1, inputs=5 {name=1, datatype=2, shape=3}, raw_input_contents=7."""
    field = length_delimited
    packed_shape = b"".join(varint(d) for d in shape)
    tensor_message = field(1, b"images") + field(2, datatype.encode()) + field(3, packed_shape)
    return field(1, name.encode()) + field(5, tensor_message) + field(7, tensor)


def _percentiles(latency_s: list[float], window_s: float) -> dict:
    values = np.array(latency_s)
    return {
        "requests": int(values.size),
        "req_per_s": round(values.size / window_s, 1),
        "p50_ms": round(float(np.percentile(values, 50)) * 1e3, 3) if values.size else None,
        "p99_ms": round(float(np.percentile(values, 99)) * 1e3, 3) if values.size else None,
    }


async def _grpc_loop(target: str, request: bytes, until: float, latency: list[float] | None) -> None:
    async with grpc.aio.insecure_channel(target, options=OWN_CONNECTION) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        while time.monotonic() < until:
            sent = time.monotonic()
            await infer(request, timeout=60)
            if latency is not None:
                latency.append(time.monotonic() - sent)


async def _http_loop(url: str, body: bytes, header_length: int, until: float, latency: list[float]) -> None:
    headers = {
        "Inference-Header-Content-Length": str(header_length),
        "Content-Type": "application/octet-stream",
    }
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < until:
            sent = time.monotonic()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                assert response.status == 200, await response.text()
            latency.append(time.monotonic() - sent)


async def _measure(grpc_target: str, http_base: str, name: str, seconds: float) -> dict:
    raw = _v2_grpc_request(name, ONE_IMAGE.tobytes(), "UINT8", [1, 28, 28, 1])
    head = json.dumps(
        {
            "inputs": [
                {"name": "images", "datatype": "UINT8", "shape": [1, 28, 28, 1],
                 "parameters": {"binary_data_size": ONE_IMAGE.nbytes}}
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    body = head + ONE_IMAGE.tobytes()
    results: dict = {"protocols": {}, "decoding": {}}
    for concurrency in (1, 16):
        for protocol in ("grpc", "http"):
            latency: list[float] = []
            until = time.monotonic() + seconds
            if protocol == "grpc":
                loops = [_grpc_loop(grpc_target, raw, until, latency) for _ in range(concurrency)]
            else:
                url = f"{http_base}/v2/models/{name}/infer"
                loops = [_http_loop(url, body, len(head), until, latency) for _ in range(concurrency)]
            await asyncio.gather(*loops)
            results["protocols"][f"{protocol}_c{concurrency}"] = _percentiles(latency, seconds)

    picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (1024, 1024), dtype=np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    encoded = buffer.getvalue()
    encoded_request = _v2_grpc_request(name, struct.pack("<I", len(encoded)) + encoded, "BYTES", [1])
    for background in (0, 4):
        latency = []
        decoded: list[float] = []
        until = time.monotonic() + seconds
        loops = [_grpc_loop(grpc_target, raw, until, latency)]
        loops += [_grpc_loop(grpc_target, encoded_request, until, decoded) for _ in range(background)]
        await asyncio.gather(*loops)
        key = "alone" if not background else f"beside_{background}_png_clients"
        results["decoding"][key] = _percentiles(latency, seconds)
        if background:
            results["decoding"]["png_1024x1024_requests"] = _percentiles(decoded, seconds)
    results["png_bytes"] = len(encoded)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-file", type=Path, required=True, help="a 28x28x1 ONNX file from cnnserve export"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not args.model_file.is_file():
        parser.error(f"--model-file {args.model_file}: no such file; run 'make demo' first")
    config = args.model_file.parent.parent / "config.json"
    with tempfile.TemporaryDirectory(prefix="cnnserve-protocols-") as scratch:
        repository = Path(scratch) / "models"
        (repository / "bench" / "1").mkdir(parents=True)
        shutil.copyfile(args.model_file, repository / "bench" / "1" / "model.onnx")
        raw = json.loads(config.read_text())
        raw["name"] = "bench"
        (repository / "bench" / "config.json").write_text(json.dumps(raw))
        server, ports = start_cnnserve(
            ["--repository", str(repository), "--host", LOOPBACK, "--port", "0", "--http-port", "0",
             "--metrics-port", "off"],
            Path(scratch),
        )  # fmt: skip
        try:
            result = asyncio.run(_measure(ports.grpc_target, ports.http_base, "bench", args.seconds))
        finally:
            server.stop()
    result["model_file"] = str(args.model_file)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
