"""Encoded images: PNG/JPEG files sent as V2 BYTES (gRPC and HTTP) or the Classifier's
encoded_images, decoded and resized by the server exactly as `cnnserve classify` does locally."""

from __future__ import annotations

import io
import json
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import tritonclient.http as http
from conftest import ServerProcess
from onnx_models import images
from PIL import Image
from test_serving_cli import _png_declaring
from tritonclient.utils import InferenceServerException

from cnnserve.cli import main
from cnnserve.protos import classifier_pb2 as pb
from cnnserve.serving.client import load_images


def png(array: np.ndarray, size: tuple[int, int] | None = None, mode: str = "L") -> bytes:
    picture = Image.fromarray(array[:, :, 0]).convert(mode)
    if size:
        picture = picture.resize(size, Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def files(tmp_path: Path, blobs: list[bytes]) -> list[Path]:
    paths = []
    for i, blob in enumerate(blobs):
        paths.append(tmp_path / f"image{i}.png")
        paths[-1].write_bytes(blob)
    return paths


def expected_logits(server: ServerProcess, paths: list[Path]) -> np.ndarray:
    """What the model gives for the images as the client-side loader decodes them."""
    batch, _ = load_images(paths, (28, 28, 1))
    session = ort.InferenceSession(
        str(server.repository / "cnn/2/model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(["logits"], {"images": batch})[0]


@pytest.fixture
def encoded(tmp_path: Path) -> list[Path]:
    batch = images(3, seed=21)
    return files(tmp_path, [png(batch[0]), png(batch[1], (56, 56), "RGB"), png(batch[2], (20, 33))])


def test_v2_bytes_inputs_over_grpc_and_http(server: ServerProcess, encoded: list[Path]) -> None:
    expected = expected_logits(server, encoded)
    blobs = np.array([path.read_bytes() for path in encoded], dtype=np.object_)
    tensor = triton.InferInput("images", [3], "BYTES")
    tensor.set_data_from_numpy(blobs)
    result = triton.InferenceServerClient(server.target).infer("cnn", [tensor])
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)

    rest = http.InferInput("images", [3, 1], "BYTES")
    rest.set_data_from_numpy(blobs.reshape(3, 1), binary_data=True)
    result = http.InferenceServerClient(server.http_target).infer("cnn", [rest])
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)


def test_classifier_encoded_images_and_the_cli(
    server: ServerProcess, encoded: list[Path], capsys: pytest.CaptureFixture
) -> None:
    expected = expected_logits(server, encoded)
    request = pb.PredictRequest(model_name="cnn", encoded_images=[p.read_bytes() for p in encoded])
    with grpc.insecure_channel(server.target) as channel:
        predict = channel.unary_unary(
            "/cnnserve.v1.Classifier/Predict", response_deserializer=pb.PredictResponse.FromString
        )
        response = predict(request.SerializeToString(), timeout=30)
    logits = np.frombuffer(response.logits.data, dtype=np.float32).reshape(3, 10)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)

    argv = ["classify", "--target", server.target, "--model", "cnn", "--json", *map(str, encoded)]
    assert main([*argv, "--send", "encoded"]) == 0
    served_remotely = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    decoded_locally = json.loads(capsys.readouterr().out)
    assert [r["top"] for r in served_remotely["results"]] == [r["top"] for r in decoded_locally["results"]]


def test_decompression_bombs_and_oversized_files_name_the_limit(start_server) -> None:
    server = start_server("--models", "cnn", "--max-image-bytes", "4000", "--max-image-pixels", "1000000")
    client = triton.InferenceServerClient(server.target)

    def infer(blob: bytes) -> InferenceServerException:
        tensor = triton.InferInput("images", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([blob], dtype=np.object_))
        with pytest.raises(InferenceServerException) as raised:
            client.infer("cnn", [tensor])
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
        return raised.value

    bomb = infer(_png_declaring(20000, 20000))
    assert "20000x20000 = 400000000 pixels, over the limit of 1000000 (--max-image-pixels)" in bomb.message()
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 1), dtype=np.uint8)
    large = infer(png(noise))
    assert "bytes is over the limit of 4000 (--max-image-bytes)" in large.message()
    garbage = infer(b"GIF89a but not really")
    assert "not a readable image" in garbage.message()
    assert "Traceback" not in server.log()
