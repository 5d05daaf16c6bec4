"""Writers for the real on-disk dataset formats, so loader tests read exactly what users have."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gzipped: bool) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gzipped else data)
    return path


def write_mnist_dir(directory: Path, train: int = 60, test: int = 20, gzipped: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    suffix = ".gz" if gzipped else ""
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, gzipped)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gzipped)
        arrays[prefix] = (images, labels)
    return arrays


def cifar_rows(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, 3072), dtype=np.uint8), rng.integers(0, 10, size=count)


def write_cifar_py(directory: Path, per_batch: int = 8) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`cifar-10-batches-py`: pickled dicts with bytes keys, `data` N×3072 CHW rows, `labels` list."""
    folder = directory / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for index, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        data, labels = cifar_rows(per_batch, seed=index)
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
                 b"filenames": [b"x.png"] * per_batch}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (data, labels)
    return written


def write_cifar_bin(directory: Path, per_batch: int = 8) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`cifar-10-batches-bin`: records of 1 label byte + 3072 pixel bytes."""
    folder = directory / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for index, name in enumerate([*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]):
        data, labels = cifar_rows(per_batch, seed=100 + index)
        records = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
        (folder / name).write_bytes(records.tobytes())
        written[name] = (data, labels)
    return written
