"""Datasets on disk → uint8 NHWC arrays, split as the source tutorials split them.

Readers check every file they open (magic numbers, lengths, label ranges) and name the file and
the problem when something is wrong. Nothing here imports TensorFlow; `pipeline.py` turns the
arrays into `tf.data` pipelines.
"""

from __future__ import annotations

import gzip
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from cnnserve.contracts.errors import CnnserveError

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

IDX_UBYTE = 0x08
CIFAR_RECORD_BYTES = 1 + 32 * 32 * 3

DATASETS = ("fashion_mnist", "mnist", "cifar10", "synthetic")


class DataError(CnnserveError):
    """A dataset file is missing, corrupt or not in the expected format."""


@dataclass(frozen=True)
class Split:
    """Images as uint8 NHWC and labels as int64 class indices."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 NHWC, got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: slice | np.ndarray) -> Split:
        return Split(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class Dataset:
    name: str
    class_names: tuple[str, ...]
    train: Split
    val: Split | None
    test: Split

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


# --------------------------------------------------------------------------- IDX (MNIST family)


def _open_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataError(f"{path}: corrupt gzip stream ({error})") from None
    return raw


def read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Reads an IDX file (gzipped or not) of unsigned bytes, checking its header and length."""
    data = _open_maybe_gzip(path)
    if len(data) < 4:
        raise DataError(f"{path}: file is {len(data)} bytes, too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{path}: bad magic number 0x{data[:4].hex()} (an IDX file starts with two zero bytes)"
        )
    if data[2] != IDX_UBYTE:
        raise DataError(f"{path}: IDX element type 0x{data[2]:02x}, expected 0x08 (unsigned byte)")
    ndim = data[3]
    if ndim != expected_ndim:
        raise DataError(f"{path}: IDX file has {ndim} dimensions, expected {expected_ndim}")
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected_bytes = header_bytes + int(np.prod(shape))
    if len(data) != expected_bytes:
        raise DataError(
            f"{path}: wrong length: header says shape {shape} ({expected_bytes} bytes), "
            f"file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_bytes).reshape(shape)


def _find_file(directory: Path, candidates: tuple[str, ...]) -> Path | None:
    for name in candidates:
        path = directory / name
        if path.is_file():
            return path
    return None


def _idx_names(stem: str, kind: str) -> tuple[str, ...]:
    # The canonical names, gzipped or not, and the `train-images.idx3-ubyte` spelling some
    # mirrors use.
    base = f"{stem}-{kind}"
    dotted = base.replace("-idx", ".idx")
    return (f"{base}.gz", base, f"{dotted}.gz", dotted)


def _load_idx_split(directory: Path, prefix: str, num_classes: int) -> Split:
    images_path = _find_file(directory, _idx_names(f"{prefix}-images", "idx3-ubyte"))
    labels_path = _find_file(directory, _idx_names(f"{prefix}-labels", "idx1-ubyte"))
    missing = [
        name
        for name, path in ((f"{prefix}-images-idx3-ubyte", images_path),
                           (f"{prefix}-labels-idx1-ubyte", labels_path))
        if path is None
    ]  # fmt: skip
    if missing:
        raise DataError(f"{directory}: missing {', '.join(missing)} (.gz or uncompressed)")
    assert images_path is not None and labels_path is not None
    images = read_idx(images_path, expected_ndim=3)
    labels = read_idx(labels_path, expected_ndim=1).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    _check_labels(labels, num_classes, labels_path)
    return Split(images[..., np.newaxis].copy(), labels)


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if labels.size and int(labels.max()) >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise DataError(
            f"{path}: label {int(labels[bad])} at index {bad} is out of range (expected 0..{num_classes - 1})"
        )


def load_fashion_mnist(data_dir: Path | None) -> tuple[Split, Split]:
    directory = data_dir if data_dir is not None else FASHION_MNIST_SYSTEM_DIR
    if _find_file(directory, _idx_names("train-images", "idx3-ubyte")) is None:
        searched = f"--data-dir {data_dir}" if data_dir is not None else str(directory)
        raise DataError(
            f"Fashion-MNIST not found in {searched} (default {FASHION_MNIST_SYSTEM_DIR}). "
            "Install it with 'sudo apt-get update && sudo apt-get install dataset-fashion-mnist', "
            "or pass --data-dir with the four IDX files"
        )
    return (
        _load_idx_split(directory, "train", 10),
        _load_idx_split(directory, "t10k", 10),
    )


def load_mnist(data_dir: Path | None) -> tuple[Split, Split]:
    if data_dir is None:
        raise DataError(
            "MNIST needs --data-dir: a folder with train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"
        )
    return _load_idx_split(data_dir, "train", 10), _load_idx_split(data_dir, "t10k", 10)


# --------------------------------------------------------------------------- CIFAR-10


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Accepts plain containers, bytes and numpy arrays; refuses every other global.

    A pickle downloaded from the internet can name any callable; only numpy's array
    reconstruction helpers are let through, so loading cannot run code.
    """

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        module = module.replace("numpy.core.", "numpy._core.")
        return super().find_class(module, name)


def _unpickle_batch(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            batch = _ArraysOnlyUnpickler(io.BufferedReader(handle), encoding="bytes").load()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({error})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(batch).__name__}")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}


def _cifar_py_batch(path: Path) -> Split:
    batch = _unpickle_batch(path)
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: missing 'data' or 'labels' (keys: {sorted(batch)})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: 'data' must be a uint8 N×3072 array")
    if data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' rows have {data.shape[1]} values, expected 3072")
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but {labels.size} labels")
    _check_labels(labels, 10, path)
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: negative label {int(labels.min())}")
    # Rows are channel-major (1024 R, 1024 G, 1024 B): CHW → HWC.
    return Split(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels)


def _cifar_bin_batch(path: Path) -> Split:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None
    if len(raw) == 0 or len(raw) % CIFAR_RECORD_BYTES:
        raise DataError(
            f"{path}: wrong length {len(raw)} bytes, expected a multiple of {CIFAR_RECORD_BYTES} "
            "(1 label byte + 3072 pixel bytes per record)"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, 10, path)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return Split(images, labels)


def _concat(splits: list[Split]) -> Split:
    return Split(np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits]))


def load_cifar10(data_dir: Path | None) -> tuple[Split, Split]:
    """Reads `cifar-10-batches-py` (pickled) or `cifar-10-batches-bin` (binary records)."""
    if data_dir is None:
        raise DataError(
            "CIFAR-10 needs --data-dir: the folder holding cifar-10-batches-py/ or "
            "cifar-10-batches-bin/ (or one of those folders itself)"
        )
    layouts: tuple[tuple[str, Callable[[Path], Split], str], ...] = (
        ("cifar-10-batches-py", _cifar_py_batch, ""),
        ("cifar-10-batches-bin", _cifar_bin_batch, ".bin"),
    )
    for folder, read_batch, suffix in layouts:
        for directory in (data_dir / folder, data_dir):
            if (directory / f"data_batch_1{suffix}").is_file():
                names = [f"data_batch_{i}{suffix}" for i in range(1, 6)]
                missing = [n for n in [*names, f"test_batch{suffix}"] if not (directory / n).is_file()]
                if missing:
                    raise DataError(f"{directory}: missing {', '.join(missing)}")
                train = _concat([read_batch(directory / name) for name in names])
                return train, read_batch(directory / f"test_batch{suffix}")
    raise DataError(
        f"no CIFAR-10 batches under {data_dir}: expected cifar-10-batches-py/data_batch_1 or "
        "cifar-10-batches-bin/data_batch_1.bin (download and extract the archive yourself)"
    )


# --------------------------------------------------------------------------- synthetic


def synthetic_split(image_shape: tuple[int, int, int], count: int, seed: int, num_classes: int = 10) -> Split:
    """Deterministic, learnable images: a fixed random template per class plus noise."""
    templates = np.random.default_rng(1234).integers(40, 216, size=(num_classes, *image_shape))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=count)
    noise = rng.normal(0.0, 40.0, size=(count, *image_shape))
    images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    return Split(images, labels.astype(np.int64))


# --------------------------------------------------------------------------- entry point

# Validation images held out of the training files, as the source tutorials do it: the first
# 5,000 for MNIST-style data (TensorFlow's read_data_sets), the last 1,000 for CIFAR-10 (CS231n).
DEFAULT_VAL_SIZE = {"fashion_mnist": 5000, "mnist": 5000, "cifar10": 1000, "synthetic": 256}


def _split_validation(name: str, train: Split, val_size: int | None) -> tuple[Split, Split | None]:
    if val_size is None:
        val_size = min(DEFAULT_VAL_SIZE[name], len(train) // 10)
    if val_size < 0:
        raise DataError(f"--val-size must be >= 0, received {val_size}")
    if val_size == 0:
        return train, None
    if val_size >= len(train):
        raise DataError(f"--val-size {val_size} leaves no training images (train has {len(train)})")
    if name == "cifar10":
        cut = len(train) - val_size
        return train.take(slice(0, cut)), train.take(slice(cut, None))
    return train.take(slice(val_size, None)), train.take(slice(0, val_size))


def class_names_for(name: str) -> tuple[str, ...]:
    return {
        "fashion_mnist": FASHION_MNIST_CLASSES,
        "mnist": MNIST_CLASSES,
        "cifar10": CIFAR10_CLASSES,
        "synthetic": tuple(f"class_{i}" for i in range(10)),
    }[name]


def load_dataset(
    name: str,
    data_dir: Path | None = None,
    val_size: int | None = None,
    synthetic_shape: tuple[int, int, int] = (28, 28, 1),
    synthetic_size: int = 4096,
    seed: int = 0,
) -> Dataset:
    """Loads a dataset by name. `synthetic` makes `synthetic_size` training images of any shape."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is not None and not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir} is not a directory")
    if name == "synthetic":
        train = synthetic_split(synthetic_shape, synthetic_size, seed=seed)
        test = synthetic_split(synthetic_shape, max(synthetic_size // 4, 1), seed=seed + 1)
    else:
        loader = {"fashion_mnist": load_fashion_mnist, "mnist": load_mnist, "cifar10": load_cifar10}
        train, test = loader[name](data_dir)
    train, val = _split_validation(name, train, val_size)
    return Dataset(name, class_names_for(name), train, val, test)
