"""What the peers are started with, written in one place (standard library only, so the driver in
the project's venv and the tests can import it without either peer installed).

MLServer reads a folder: `settings.json` (the server) and `<model>/model-settings.json` (one
model, here with adaptive batching as MLServer documents it). KServe's ModelServer takes its
settings as flags. Both serve the very ONNX file that `cnnserve export` wrote, by absolute path.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MLSERVER_RUNTIME = "mlserver_onnx.OnnxImageClassifier"
# MLServer's adaptive batching: up to 32 requests, waiting at most 2 ms for them to arrive.
MLSERVER_MAX_BATCH_SIZE = 32
MLSERVER_MAX_BATCH_TIME_S = 0.002


@dataclass(frozen=True)
class ModelFile:
    name: str  # served model name
    path: Path  # the ONNX file, absolute
    image_shape: tuple[int, int, int]  # H, W, C (uint8 NHWC, as every cnnserve export takes)
    classes: int


def mlserver_settings(grpc_port: int, http_port: int, metrics_port: int) -> dict:
    """settings.json: loopback ports; everything else MLServer's defaults (parallel_workers 1:
    the model runs in one inference-pool process beside the server's)."""
    return {
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": http_port,
        "metrics_port": metrics_port,
        "load_models_at_startup": True,
    }


def mlserver_model_settings(model: ModelFile) -> dict:
    return {
        "name": model.name,
        "implementation": MLSERVER_RUNTIME,
        "max_batch_size": MLSERVER_MAX_BATCH_SIZE,
        "max_batch_time": MLSERVER_MAX_BATCH_TIME_S,
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, *model.image_shape]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, model.classes]}],
        "parameters": {"uri": str(model.path), "version": "1"},
    }


def write_mlserver_folder(folder: Path, model: ModelFile, grpc_port: int, http_port: int,
                          metrics_port: int) -> Path:  # fmt: skip
    """The folder `mlserver start FOLDER` serves, with the runtime module beside the settings
    (MLServer puts the folder on sys.path to import `implementation`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(
        json.dumps(mlserver_settings(grpc_port, http_port, metrics_port), indent=2) + "\n"
    )
    model_dir = folder / model.name
    model_dir.mkdir(exist_ok=True)
    model_settings = json.dumps(mlserver_model_settings(model), indent=2) + "\n"
    (model_dir / "model-settings.json").write_text(model_settings)
    shutil.copy2(HERE / "mlserver_onnx.py", folder / "mlserver_onnx.py")
    return folder


def kserve_argv(model: ModelFile, grpc_port: int, http_port: int) -> list[str]:
    """Arguments after `python kserve_onnx.py`: ModelServer's own flags plus the model file.
    One worker, KServe's default; its REST server needs a port even when only gRPC is used."""
    return [
        "--model_name", model.name,
        "--model_path", str(model.path),
        "--grpc_port", str(grpc_port),
        "--http_port", str(http_port),
        "--workers", "1",
        "--enable_latency_logging", "false",
    ]  # fmt: skip
