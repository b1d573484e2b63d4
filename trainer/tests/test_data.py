import gzip
import os
import pickle

import numpy as np
import pytest

from trainer.data import (encode_idx, load_dataset, preprocess, read_cifar_batch, read_idx, reshape_images, write_idx,
                          write_sample)
from trainer.tests.conftest import FASHION_DIR, requires_fashion


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("array", [
    np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    np.arange(5, dtype=np.uint8),
    np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5),
    np.array([[1.5, -2.0]], dtype=np.float32),
    np.array([-7, 300000], dtype=np.int32),
])
def test_idx_round_trip(tmp_path, name, array):
    path = str(tmp_path / name)
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_big_endian_mnist_layout():
    raw = encode_idx(np.zeros((3, 28, 28), dtype=np.uint8))
    assert raw[:4] == bytes([0, 0, 0x08, 3])
    assert raw[4:16] == bytes([0, 0, 0, 3, 0, 0, 0, 28, 0, 0, 0, 28])


def test_gzipped_idx_is_reproducible(tmp_path):
    a, b = str(tmp_path / "a.gz"), str(tmp_path / "b.gz")
    write_idx(a, np.ones((4, 2), dtype=np.uint8))
    write_idx(b, np.ones((4, 2), dtype=np.uint8))
    assert open(a, "rb").read() == open(b, "rb").read()
    assert open(a, "rb").read()[4:8] == b"\0\0\0\0"  # gzip mtime


def test_read_idx_rejects_garbage(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(gzip.compress(b"\x01\x02\x08\x01"))
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(str(path))
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(ValueError, match="needs 9"):
        read_idx(str(path))


def _cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"test"}, f)
    return data, labels


def test_cifar_batches(tmp_path):
    d1, l1 = _cifar_batch(tmp_path / "data_batch_1", 5, 1)
    d2, l2 = _cifar_batch(tmp_path / "data_batch_2", 3, 2)
    dt, lt = _cifar_batch(tmp_path / "test_batch", 4, 3)
    split = read_cifar_batch(str(tmp_path / "test_batch"))
    assert split.images.shape == (4, 3, 32, 32) and split.images.dtype == np.uint8
    # CHW: the first 1024 bytes are the red plane.
    np.testing.assert_array_equal(split.images[1, 0].reshape(-1), dt[1, :1024])
    np.testing.assert_array_equal(split.images[1, 2].reshape(-1), dt[1, 2048:])
    data = load_dataset("cifar10", str(tmp_path))
    assert data.train.images.shape == (8, 3, 32, 32)
    np.testing.assert_array_equal(data.train.labels, l1 + l2)
    np.testing.assert_array_equal(data.test.labels, lt)
    assert data.labels[0] == "airplane" and len(data.labels) == 10


def test_preprocess_per_channel():
    images = np.array([[[[0, 255]], [[51, 102]]]], dtype=np.uint8)  # [1, 2, 1, 2]
    x = preprocess(images, 1 / 255, [0.5, 0.1], [0.5, 0.2])
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0, 0], [-1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(x[0, 1, 0], [0.5, 1.5], atol=1e-6)
    one = preprocess(images, 1 / 255, [0.0], [1.0])
    np.testing.assert_allclose(one.reshape(-1), images.reshape(-1) / 255, atol=1e-7)
    with pytest.raises(ValueError):
        preprocess(images, 1 / 255, [0.1, 0.2, 0.3], [1.0])


def test_reshape_images():
    assert reshape_images(np.zeros((4, 28, 28), np.uint8), [1, 28, 28]).shape == (4, 1, 28, 28)
    with pytest.raises(ValueError, match="do not fit"):
        reshape_images(np.zeros((4, 28, 28), np.uint8), [3, 32, 32])


@requires_fashion
def test_sample_is_the_head_of_the_test_split(tmp_path):
    images_path, labels_path = write_sample("fashion-mnist", "test", 50, str(tmp_path), None)
    assert os.path.basename(images_path) == "fashion-mnist-t10k-50-images-idx3-ubyte.gz"
    full = read_idx(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz"))
    np.testing.assert_array_equal(read_idx(images_path), full[:50])
    first = open(images_path, "rb").read()
    write_sample("fashion-mnist", "test", 50, str(tmp_path), None)
    assert open(images_path, "rb").read() == first
    assert read_idx(labels_path).shape == (50,)
