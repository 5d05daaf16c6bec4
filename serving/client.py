"""A small client for `cnnserve.v1.Classifier`, used by `cnnserve classify` and the tests.

Image files are read with Pillow (PNG, JPEG, ...) or numpy (`.npy`) and converted to the
model's input: its channel count, and its height and width (resized if they differ).
"""

from __future__ import annotations

import logging
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.names import MAX_MESSAGE_BYTES
from cnnserve.protos import classifier_pb2 as pb
from cnnserve.protos import classifier_pb2_grpc
from cnnserve.serving.converters import encode_tensor

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientTls:
    ca: Path | None = None  # trust this CA instead of the system roots
    cert: Path | None = None  # client certificate, for mutual TLS
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC credentials, once Python's ssl module has checked every file (gRPC itself would
        only report a failed handshake, long after)."""
        self._check()

        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))

    def _check(self) -> None:
        for flag, path in (("--tls-ca", self.ca), ("--tls-cert", self.cert), ("--tls-key", self.key)):
            if path is not None and not path.is_file():
                raise CnnserveError(f"{flag} {path}: no such file; give the PEM file's path")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.ca is not None:
            try:
                context.load_verify_locations(cafile=self.ca)
            except (ssl.SSLError, OSError) as error:
                raise CnnserveError(f"--tls-ca {self.ca}: not a PEM CA certificate ({error})") from None
        if self.cert is not None and self.key is not None:
            try:
                context.load_cert_chain(self.cert, self.key)
            except (ssl.SSLError, OSError) as error:
                raise CnnserveError(
                    f"--tls-cert {self.cert} / --tls-key {self.key}: not a matching PEM certificate "
                    f"and key ({error})"
                ) from None


def open_channel(
    target: str, tls: ClientTls | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> grpc.Channel:
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, tls.credentials(), options=options)


class ClassifierClient:
    def __init__(self, channel: grpc.Channel, timeout_s: float | None = 30.0) -> None:
        self._stub = classifier_pb2_grpc.ClassifierStub(channel)
        self._timeout_s = timeout_s

    def metadata(self, model: str, version: str = "") -> pb.GetModelMetadataResponse:
        request = pb.GetModelMetadataRequest(model_name=model, model_version=version)
        return self._stub.GetModelMetadata(request, timeout=self._timeout_s)

    def classify(
        self, model: str, images: np.ndarray, top_k: int = 1, version: str = ""
    ) -> pb.ClassifyResponse:
        request = pb.ClassifyRequest(
            model_name=model, model_version=version, images=encode_tensor(images), top_k=top_k
        )
        return self._stub.Classify(request, timeout=self._timeout_s)

    def classify_encoded(
        self, model: str, files: list[bytes], top_k: int = 1, version: str = ""
    ) -> pb.ClassifyResponse:
        """The server decodes and resizes the PNG/JPEG files itself."""
        request = pb.ClassifyRequest(
            model_name=model, model_version=version, encoded_images=files, top_k=top_k
        )
        return self._stub.Classify(request, timeout=self._timeout_s)

    def predict(self, model: str, images: np.ndarray, version: str = "") -> pb.PredictResponse:
        request = pb.PredictRequest(model_name=model, model_version=version, images=encode_tensor(images))
        return self._stub.Predict(request, timeout=self._timeout_s)

    def list_models(self) -> pb.ListModelsResponse:
        return self._stub.ListModels(pb.ListModelsRequest(), timeout=self._timeout_s)


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


class RepositoryClient:
    """KServe V2's repository extension (`cnnserve repository`). Importing our V2 messages is
    fine here: this client never runs in a process that has imported tritonclient."""

    def __init__(self, channel: grpc.Channel, timeout_s: float | None = 300.0) -> None:
        from cnnserve.protos import grpc_service_pb2 as v2
        from cnnserve.protos import grpc_service_pb2_grpc as v2_grpc

        self._v2 = v2
        self._stub = v2_grpc.GRPCInferenceServiceStub(channel)
        self._timeout_s = timeout_s

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        response = self._stub.RepositoryIndex(
            self._v2.RepositoryIndexRequest(ready=ready_only), timeout=self._timeout_s
        )
        return [IndexEntry(m.name, m.version, m.state, m.reason) for m in response.models]

    def load(self, model: str) -> None:
        self._stub.RepositoryModelLoad(
            self._v2.RepositoryModelLoadRequest(model_name=model), timeout=self._timeout_s
        )

    def unload(self, model: str) -> None:
        self._stub.RepositoryModelUnload(
            self._v2.RepositoryModelUnloadRequest(model_name=model), timeout=self._timeout_s
        )


def load_images(paths: list[Path], image_shape: tuple[int, int, int]) -> tuple[np.ndarray, list[str]]:
    """A uint8 [N, H, W, C] batch from image files and `.npy` arrays, and a name per image."""
    batches, names = [], []
    for path in paths:
        if not path.is_file():
            raise CnnserveError(f"{path}: no such file")
        array = (
            _load_npy(path, image_shape)
            if path.suffix.lower() == ".npy"
            else _load_picture(path, image_shape)
        )
        batches.append(array)
        names += [path.name] if len(array) == 1 else [f"{path.name}[{i}]" for i in range(len(array))]
    return np.concatenate(batches), names


def _load_npy(path: Path, image_shape: tuple[int, int, int]) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CnnserveError(f"{path}: not a readable .npy file ({error})") from None
    height, width, channels = image_shape
    if array.dtype != np.uint8:
        raise CnnserveError(f"{path}: expected uint8 pixels, got {array.dtype}")
    if array.ndim == 2 and channels == 1:
        array = array[None, :, :, None]
    elif array.ndim == 3 and array.shape[-1] == channels:
        array = array[None]
    elif array.ndim == 3 and channels == 1:
        array = array[..., None]  # [N, H, W] grey images
    if array.ndim != 4 or array.shape[1:] != (height, width, channels):
        raise CnnserveError(
            f"{path}: expected shape [N, {height}, {width}, {channels}] (or one image), "
            f"got {list(array.shape)}"
        )
    return array


def _load_picture(path: Path, image_shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    height, width, channels = image_shape
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that: refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise CnnserveError(
            f"{path}: refused to decode: {error} Is it really an image of the model's input?"
        ) from None
    except (UnidentifiedImageError, OSError) as error:
        raise CnnserveError(f"{path}: not a readable image ({error})") from None
    try:
        with picture:
            converted = picture.convert("L" if channels == 1 else "RGB")
            if converted.size != (width, height):
                _LOGGER.info("%s: resizing %dx%d to %dx%d", path.name, *converted.size, width, height)
                converted = converted.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(converted, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise CnnserveError(f"{path}: not a readable image ({error})") from None
    return array.reshape(1, height, width, channels)
