"""Loaders read the real formats byte for byte and name the file and the fault when one is bad."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

from cnnserve.training import data
from cnnserve.training.data import DataError, load_dataset
from tests.training.idx_files import (
    idx_bytes,
    write_cifar_bin,
    write_cifar_py,
    write_idx,
    write_mnist_dir,
)

REAL_FASHION_MNIST = data.FASHION_MNIST_SYSTEM_DIR


@pytest.mark.skipif(
    not (REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="make setup installs dataset-fashion-mnist",
)
def test_real_fashion_mnist_loads_with_tutorial_split():
    dataset = load_dataset("fashion_mnist")
    assert dataset.train.images.shape == (55_000, 28, 28, 1)
    assert dataset.val.images.shape == (5_000, 28, 28, 1)
    assert dataset.test.images.shape == (10_000, 28, 28, 1)
    assert dataset.train.images.dtype == np.uint8
    # The real test set has exactly 1,000 images of each of the ten classes.
    assert np.bincount(dataset.test.labels).tolist() == [1000] * 10
    assert dataset.class_names[9] == "Ankle boot"
    assert 60 < dataset.test.images.mean() < 90  # real clothing pictures, not noise


def test_missing_fashion_mnist_names_both_paths_and_the_fix(tmp_path: Path):
    with pytest.raises(DataError) as error:
        load_dataset("fashion_mnist", data_dir=tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message
    assert "/usr/share/datasets/fashion-mnist" in message
    assert "apt-get install dataset-fashion-mnist" in message


@pytest.mark.parametrize("gzipped", [True, False])
def test_mnist_idx_round_trip_and_validation_split(tmp_path: Path, gzipped: bool):
    arrays = write_mnist_dir(tmp_path, train=60, test=20, gzipped=gzipped)
    dataset = load_dataset("mnist", data_dir=tmp_path, val_size=10)
    train_images, train_labels = arrays["train"]
    # TensorFlow's read_data_sets holds out the *first* images as validation.
    np.testing.assert_array_equal(dataset.val.images[..., 0], train_images[:10])
    np.testing.assert_array_equal(dataset.train.images[..., 0], train_images[10:])
    np.testing.assert_array_equal(dataset.train.labels, train_labels[10:])
    np.testing.assert_array_equal(dataset.test.images[..., 0], arrays["t10k"][0])
    assert dataset.train.images.shape == (50, 28, 28, 1)


def test_mnist_default_validation_is_at_most_a_tenth(tmp_path: Path):
    write_mnist_dir(tmp_path, train=60, test=20)
    dataset = load_dataset("mnist", data_dir=tmp_path)
    assert len(dataset.val) == 6 and len(dataset.train) == 54


def test_mnist_without_data_dir_says_what_to_pass():
    with pytest.raises(DataError, match="MNIST needs --data-dir"):
        load_dataset("mnist")


def test_idx_bad_magic_names_file(tmp_path: Path):
    write_mnist_dir(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = bytearray(idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    raw[0] = 0x12
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: bad magic number"):
        load_dataset("mnist", data_dir=tmp_path)


def test_idx_truncated_file_reports_lengths(tmp_path: Path):
    write_mnist_dir(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((20, 28, 28), np.uint8))[:-100]))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: wrong length"):
        load_dataset("mnist", data_dir=tmp_path)


def test_idx_label_out_of_range_names_index(tmp_path: Path):
    write_mnist_dir(tmp_path, train=60)
    labels = np.zeros(60, np.uint8)
    labels[7] = 12
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, gzipped=True)
    with pytest.raises(DataError, match=r"label 12 at index 7 is out of range"):
        load_dataset("mnist", data_dir=tmp_path)


def test_idx_image_label_count_mismatch(tmp_path: Path):
    write_mnist_dir(tmp_path, train=60)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(59, np.uint8), gzipped=True)
    with pytest.raises(DataError, match=r"60 images but .* has 59 labels"):
        load_dataset("mnist", data_dir=tmp_path)


@pytest.mark.parametrize("writer", [write_cifar_py, write_cifar_bin])
def test_cifar_formats_round_trip_chw_to_hwc_and_cs231n_split(tmp_path: Path, writer):
    written = writer(tmp_path, per_batch=8)
    dataset = load_dataset("cifar10", data_dir=tmp_path, val_size=4)
    first_rows, first_labels = next(iter(written.values()))
    # Pixel (row 0, col 1) of channel G is element 1024 + 1 of the CHW row.
    assert dataset.train.images[0, 0, 1, 1] == first_rows[0, 1024 + 1]
    np.testing.assert_array_equal(
        dataset.train.images[0], first_rows[0].reshape(3, 32, 32).transpose(1, 2, 0)
    )
    np.testing.assert_array_equal(dataset.train.labels[:8], first_labels)
    assert len(dataset.train) == 36 and len(dataset.val) == 4  # CS231n: the *last* images validate
    last_rows = list(written.values())[4][0]
    np.testing.assert_array_equal(dataset.val.images[-1], last_rows[-1].reshape(3, 32, 32).transpose(1, 2, 0))
    assert dataset.test.images.shape == (8, 32, 32, 3)


def test_cifar_pickle_that_runs_code_is_refused(tmp_path: Path):
    write_cifar_py(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(DataError, match=r"data_batch_3: not a CIFAR-10 python batch .*refusing"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()


def test_cifar_bin_wrong_record_length(tmp_path: Path):
    write_cifar_bin(tmp_path)
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"data_batch_2\.bin: wrong length .* multiple of 3073"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_label_out_of_range(tmp_path: Path):
    write_cifar_py(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 10]}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"test_batch: label 10 at index 1 is out of range"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_missing_batches_listed(tmp_path: Path):
    write_cifar_py(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing data_batch_4"):
        load_dataset("cifar10", data_dir=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no CIFAR-10 batches under"):
        load_dataset("cifar10", data_dir=empty)


def test_synthetic_is_deterministic_in_any_shape():
    first = load_dataset("synthetic", synthetic_shape=(32, 32, 3), synthetic_size=64, seed=3)
    second = load_dataset("synthetic", synthetic_shape=(32, 32, 3), synthetic_size=64, seed=3)
    np.testing.assert_array_equal(first.train.images, second.train.images)
    assert first.train.images.shape[1:] == (32, 32, 3)
    assert first.train.images.dtype == np.uint8


def test_unknown_dataset_lists_choices():
    with pytest.raises(DataError, match="choose one of fashion_mnist, mnist, cifar10, synthetic"):
        load_dataset("imagenet")
