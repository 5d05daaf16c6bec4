"""Rollout benchmark: a new version committed into a polled repository under steady load.

    .venv/bin/python bench/rollout.py --model-file models/mnist_cnn/1/model.onnx --out rollout.json

Copies the model into a scratch repository as version 1, starts `cnnserve serve` polling it,
runs closed-loop clients (Classifier Predict, one image, each on its own connection) and, after
a steady-state window, commits version 2 the way `cnnserve export` does (a staging folder
renamed into place). It reports the time from the end of that commit to the earliest answer
from version 2 and until every client is on it, and request latency p50/p99 in the steady
window against the swap window (from the start of the write until every client answers from
version 2, plus one second) and against the calls sent while version 2 was loading (commit to
its first answer), and the status of every call (all must be OK).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from cnnserve.bench.serve_process import LOOPBACK, start_cnnserve
from cnnserve.contracts.model_repository import ModelConfig, TensorSpec
from cnnserve.contracts.names import CPU_PROVIDER
from cnnserve.export.repository import VersionWriter
from cnnserve.protos import classifier_pb2 as pb
from cnnserve.serving.converters import encode_tensor

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class Calls:
    """Every call: when it was sent and answered (monotonic s), by which version, with what code."""

    sent_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    version: list[str] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)


async def _client(target: str, request: bytes, calls: Calls, stop: asyncio.Event) -> None:
    async with grpc.aio.insecure_channel(target, options=OWN_CONNECTION) as channel:
        predict = channel.unary_unary(
            "/cnnserve.v1.Classifier/Predict", response_deserializer=pb.PredictResponse.FromString
        )
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = await predict(request, timeout=30)
                code = "OK"
            except grpc.aio.AioRpcError as error:
                code = error.code().name
                response = None
            calls.codes[code] = calls.codes.get(code, 0) + 1
            if response is not None:
                calls.sent_s.append(sent)
                calls.latency_s.append(time.monotonic() - sent)
                calls.version.append(response.model_version)


def _percentiles(latency_s: np.ndarray) -> dict[str, float]:
    if latency_s.size == 0:
        return {"requests": 0}
    return {
        "requests": int(latency_s.size),
        "p50_ms": round(float(np.percentile(latency_s, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(latency_s, 99)) * 1e3, 3),
    }


def _config(model_file: Path, name: str) -> ModelConfig:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file), providers=[CPU_PROVIDER])
    shape = tuple(-1 if not isinstance(d, int) else d for d in session.get_inputs()[0].shape)
    outputs = tuple(TensorSpec(o.name, "float32", (-1, int(o.shape[-1]))) for o in session.get_outputs())
    classes = outputs[0].shape[-1]
    return ModelConfig(
        name=name,
        platform="onnxruntime_onnx",
        inputs=(TensorSpec(session.get_inputs()[0].name, "uint8", shape),),
        outputs=outputs,
        class_labels=tuple(str(i) for i in range(classes)),
    )


def _commit(repository: Path, config: ModelConfig, version: int, model_file: Path) -> float:
    """Writes the version as `cnnserve export` does; returns when its commit (rename, config.json) ended."""
    with VersionWriter(repository, config.name, version, overwrite=False, platform=config.platform) as slot:
        assert slot.staging is not None
        shutil.copyfile(model_file, slot.staging / config.model_file)
        slot.commit(config)
        return time.monotonic()


async def _measure(target: str, args: argparse.Namespace, repository: Path, config: ModelConfig) -> dict:
    height, width, channels = config.inputs[0].shape[1:]
    image = np.random.default_rng(0).integers(0, 256, (1, height, width, channels), dtype=np.uint8)
    request = pb.PredictRequest(model_name=config.name, images=encode_tensor(image)).SerializeToString()
    calls, stop = Calls(), asyncio.Event()
    clients = [asyncio.create_task(_client(target, request, calls, stop)) for _ in range(args.concurrency)]
    await asyncio.sleep(args.warmup_s)
    steady_from = time.monotonic()
    await asyncio.sleep(args.steady_s)
    writing = time.monotonic()
    committed = await asyncio.to_thread(_commit, repository, config, 2, args.model_file)
    deadline = committed + args.timeout_s
    all_on_new = None
    while time.monotonic() < deadline:
        recent = calls.version[-args.concurrency * 4 :]
        if recent and all(v == "2" for v in recent):
            all_on_new = time.monotonic()
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(1.0)
    swap_until = time.monotonic()
    stop.set()
    await asyncio.gather(*clients)

    sent = np.array(calls.sent_s)
    latency = np.array(calls.latency_s)
    versions = np.array(calls.version)
    if not (versions == "2").any():
        raise SystemExit(f"no answer from version 2 within --timeout-s {args.timeout_s:g}")
    first_new = (sent + latency)[versions == "2"].min()  # the earliest answer, not the earliest sent
    steady = latency[(sent >= steady_from) & (sent < writing)]
    swap = latency[(sent >= writing) & (sent < swap_until)]
    loading = latency[(sent >= committed) & (sent < first_new)]
    return {
        "poll_interval_s": args.poll_interval_s,
        "concurrency": args.concurrency,
        "commit_to_first_v2_response_s": round(float(first_new - committed), 3),
        "commit_to_all_clients_on_v2_s": None if all_on_new is None else round(all_on_new - committed, 3),
        "steady": _percentiles(steady),
        "swap": _percentiles(swap),
        "until_first_v2_response": _percentiles(loading),
        "copy_and_commit_s": round(committed - writing, 3),
        "codes": calls.codes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-file", type=Path, required=True, help="an ONNX file from cnnserve export")
    parser.add_argument("--name", default="rollout", help="model name in the scratch repository")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--poll-interval-s", type=float, default=2.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--steady-s", type=float, default=5.0)
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    args = parser.parse_args(argv)
    if not args.model_file.is_file():
        parser.error(
            f"--model-file {args.model_file}: no such file; run 'make demo' or 'cnnserve export' first"
        )
    with tempfile.TemporaryDirectory(prefix="cnnserve-rollout-") as scratch:
        workdir = Path(scratch)
        repository = workdir / "models"
        config = _config(args.model_file, args.name)
        (repository / args.name).mkdir(parents=True)
        _commit(repository, config, 1, args.model_file)
        server, ports = start_cnnserve(
            ["--repository", str(repository), "--host", LOOPBACK, "--port", "0", "--metrics-port", "off",
             "--http-port", "off", "--poll-interval-s", str(args.poll_interval_s)],
            workdir,
        )  # fmt: skip
        try:
            result = asyncio.run(_measure(ports.grpc_target, args, repository, config))
        finally:
            server.stop()
    result["model_file"] = str(args.model_file)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if set(result["codes"]) == {"OK"} else 1


if __name__ == "__main__":
    sys.exit(main())
