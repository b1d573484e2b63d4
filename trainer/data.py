"""Data sets as numpy arrays: idx files (Fashion-MNIST) and CIFAR-10 python batches.

Images are kept as raw u8 in CHW order, shape [N, C, H, W]; preprocessing (Contract 1) happens
in `preprocess`, the one place that turns pixels into the stage-0 input tensor.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np

DEFAULT_FASHION_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_LABELS = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]

# idx element type codes -> big-endian numpy dtypes.
_IDX_TYPES = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_IDX_CODES = {np.dtype(v).newbyteorder("=").str: k for k, v in _IDX_TYPES.items()}


def read_idx(path: str) -> np.ndarray:
    """Reads an idx file (gzipped or not, detected by its magic bytes) of any rank."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic number)")
    code, rank = raw[2], raw[3]
    if code not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown idx element type 0x{code:02x}")
    if rank < 1:
        raise ValueError(f"{path}: idx file has no dimensions")
    header = 4 + 4 * rank
    if len(raw) < header:
        raise ValueError(f"{path}: idx header is truncated")
    shape = struct.unpack(f">{rank}I", raw[4:header])
    dtype = _IDX_TYPES[code]
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header < count * dtype.itemsize:
        raise ValueError(f"{path}: idx body holds {len(raw) - header} bytes, shape {list(shape)} needs "
                         f"{count * dtype.itemsize}")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def encode_idx(array: np.ndarray) -> bytes:
    """Encodes an array as idx bytes (big-endian body, as the format requires)."""
    arr = np.ascontiguousarray(array)
    key = arr.dtype.newbyteorder("=").str
    if key not in _IDX_CODES:
        raise ValueError(f"dtype {arr.dtype} has no idx element type")
    if arr.ndim < 1 or arr.ndim > 255:
        raise ValueError("idx arrays need 1..255 dimensions")
    code = _IDX_CODES[key]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(_IDX_TYPES[code]).tobytes()


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes an idx file; gzipped when `path` ends in .gz, with mtime 0 so the bytes are reproducible."""
    data = encode_idx(array)
    with open(path, "wb") as f:
        f.write(gzip_bytes(data) if path.endswith(".gz") else data)


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip: no file name and mtime 0 in the header."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


@dataclass
class Split:
    """One split of a data set: u8 images [N, C, H, W] and int64 labels [N]."""
    images: np.ndarray
    labels: np.ndarray


@dataclass
class Dataset:
    name: str
    labels: list[str]
    train: Split
    test: Split


def _as_chw(images: np.ndarray) -> np.ndarray:
    """idx images [N, H, W] become [N, 1, H, W]; [N, C, H, W] stay as they are."""
    if images.ndim == 3:
        return images[:, None, :, :]
    return images


def _find(data_dir: str, stem: str) -> str:
    for candidate in (stem + ".gz", stem):
        path = os.path.join(data_dir, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{data_dir}: neither {stem}.gz nor {stem} exists")


def load_fashion_mnist(data_dir: str = DEFAULT_FASHION_DIR) -> Dataset:
    """Fashion-MNIST from its four idx files (Debian's dataset-fashion-mnist puts them in DEFAULT_FASHION_DIR)."""
    def split(prefix: str) -> Split:
        images = read_idx(_find(data_dir, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(data_dir, f"{prefix}-labels-idx1-ubyte"))
        return Split(_as_chw(images.astype(np.uint8)), labels.astype(np.int64))
    return Dataset("fashion-mnist", list(FASHION_LABELS), split("train"), split("t10k"))


def read_cifar_batch(path: str) -> Split:
    """One CIFAR-10 python batch: a pickled dict with b'data' [N, 3072] u8 (CHW) and b'labels'."""
    with open(path, "rb") as f:
        # The batches are pickles by design of the data set; only point this at files you trust.
        batch = pickle.load(f, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"{path}: expected b'data' [N, 3072] and N b'labels', got {data.shape} and {labels.shape}")
    return Split(data.reshape(-1, 3, 32, 32), labels)


def load_cifar10(data_dir: str) -> Dataset:
    """CIFAR-10 from its python batches (data_batch_1..5, test_batch); missing train batches are skipped."""
    parts = [os.path.join(data_dir, f"data_batch_{i}") for i in range(1, 6)]
    parts = [p for p in parts if os.path.exists(p)]
    if not parts:
        raise FileNotFoundError(f"{data_dir}: no CIFAR-10 data_batch_N files")
    train = [read_cifar_batch(p) for p in parts]
    test = read_cifar_batch(os.path.join(data_dir, "test_batch"))
    labels = list(CIFAR10_LABELS)
    meta = os.path.join(data_dir, "batches.meta")
    if os.path.exists(meta):
        with open(meta, "rb") as f:
            names = pickle.load(f, encoding="bytes").get(b"label_names")
        if names:
            labels = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return Dataset("cifar10", labels,
                   Split(np.concatenate([s.images for s in train]), np.concatenate([s.labels for s in train])),
                   test)


DATASETS = ("fashion-mnist", "cifar10")


def load_dataset(name: str, data_dir: str | None) -> Dataset:
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir or DEFAULT_FASHION_DIR)
    if name == "cifar10":
        if not data_dir:
            raise ValueError("cifar10 needs --data-dir pointing at its python batches (data_batch_1..5, test_batch)")
        return load_cifar10(data_dir)
    raise ValueError(f"unknown data set {name!r} (choose from {', '.join(DATASETS)})")


def channel_stats(images: np.ndarray, scale: float) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of u8 * scale, rounded to 4 decimals so the manifest stays readable."""
    x = images.astype(np.float64) * scale
    axes = (0,) + tuple(range(2, images.ndim))
    mean = x.mean(axis=axes)
    std = x.std(axis=axes)
    return [round(float(m), 4) for m in mean], [max(round(float(s), 4), 1e-4) for s in std]


def preprocess(images: np.ndarray, scale: float, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Contract 1: x = (u8 * scale - mean[c]) / std[c], each step rounded to float32 like the TypeScript runtime.

    `images` is [N, C, ...]; mean and std hold 1 value (all channels) or C values.
    """
    channels = images.shape[1]
    shape = (1, channels) + (1,) * (images.ndim - 2)

    def per_channel(values: Sequence[float]) -> np.ndarray:
        v = np.asarray(values, dtype=np.float32)
        if v.size not in (1, channels):
            raise ValueError(f"{v.size} mean/std values for {channels} channels (give 1 or {channels})")
        return np.broadcast_to(v, (channels,)).reshape(shape)

    x = images.astype(np.float32) * np.float32(scale)
    x = x - per_channel(mean)
    return (x / per_channel(std)).astype(np.float32)


def reshape_images(images: np.ndarray, shape: Sequence[int], source: str = "images") -> np.ndarray:
    """Gives idx images the bundle's per-sample shape ([N, 28, 28] -> [N, 1, 28, 28]); same element count required."""
    per_sample = int(np.prod(shape))
    if images.ndim < 1 or int(np.prod(images.shape[1:])) != per_sample:
        raise ValueError(f"{source}: samples of shape {list(images.shape[1:])} do not fit the input shape "
                         f"{list(shape)} ({per_sample} values per sample)")
    return images.reshape((images.shape[0],) + tuple(shape))



def write_sample(dataset: str, split: str, count: int, out_dir: str, data_dir: str | None) -> tuple[str, str]:
    """The first `count` images and labels of a split as gzipped idx files (reproducible bytes)."""
    data = load_dataset(dataset, data_dir)
    part = data.test if split == "test" else data.train
    if count > len(part.labels):
        raise ValueError(f"--count {count}: the {split} split holds only {len(part.labels)} samples")
    tag = "t10k" if split == "test" and dataset == "fashion-mnist" else split
    images = part.images[:count]
    if images.shape[1] == 1:
        images = images[:, 0]  # [N, H, W], the layout of the original idx3 files
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{dataset}-{tag}-{count}")
    images_path = f"{stem}-images-idx{images.ndim}-ubyte.gz"
    labels_path = f"{stem}-labels-idx1-ubyte.gz"
    write_idx(images_path, images)
    write_idx(labels_path, part.labels[:count].astype(np.uint8))
    return images_path, labels_path
