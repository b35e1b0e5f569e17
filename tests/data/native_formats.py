"""Writers of tiny datasets in the datasets' exact native on-disk formats, for tests.

Nothing binary is committed: a test builds its fixture data with these functions under a
``tmp_path`` and points a reader or datamodule at that root. Every writer takes arrays in the
readers' convention (images uint8 ``(N, C, H, W)``, labels integer ``(N,)``), writes the files
exactly where :mod:`ensemble_lab.data.readers` looks under ``root``, and reading them back gives
the same arrays. Example::

    x, y = random_images(20, 3, 32), random_labels(20)
    write_cifar10(tmp_path, x, y, x[:10], y[:10])
    write_svhn_test(tmp_path, x[:8], y[:8])
    write_cifar10c(tmp_path, n_per_severity=4)      # then read with block_size=4
    write_cifar100(tmp_path, x, y * 9, x[:10], y[:10] * 9)   # fine labels 0..99
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.io

from ensemble_lab.data.readers import CIFAR10C_CORRUPTIONS, MNIST_C_CORRUPTIONS

CIFAR10_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
                       "dog", "frog", "horse", "ship", "truck"]


def random_images(n: int, channels: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` random uint8 images shaped (n, channels, size, size)."""
    return np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def random_labels(n: int, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    """``n`` random int64 labels in [0, num_classes)."""
    return np.random.default_rng(seed + 1).integers(0, num_classes, n, dtype=np.int64)


def _uint8(images: np.ndarray, channels: int, size: int) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != (channels, size, size):
        want = f"uint8 (N, {channels}, {size}, {size})"
        raise ValueError(f"expected {want}, got {images.dtype} {images.shape}")
    return images


# --------------------------------------------------------------------------- CIFAR-10
def _write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, name: str) -> None:
    batch = {
        b"batch_label": name.encode(),
        b"labels": [int(v) for v in labels],  # a plain list, as in the real files
        b"data": images.reshape(len(images), 3 * 32 * 32),  # R plane, G plane, B plane per row
        b"filenames": [f"{name}_{i}.png".encode() for i in range(len(images))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)  # the real batches are protocol-2 pickles


def write_cifar10(
    root: Path | str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    batches: int = 5,
) -> Path:
    """CIFAR-10 python batches in ``root/cifar-10-batches-py``; returns that folder.

    Images uint8 (N, 3, 32, 32). The train set is split over ``data_batch_1..batches``; a value
    below 5 leaves the set incomplete (for missing-file tests).
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_images, test_images = _uint8(train_images, 3, 32), _uint8(test_images, 3, 32)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    chunks = zip(np.array_split(train_images, batches), np.array_split(train_labels, batches))
    for i, (x, y) in enumerate(chunks, start=1):
        _write_cifar_batch(folder / f"data_batch_{i}", x, y, f"training batch {i} of 5")
    _write_cifar_batch(folder / "test_batch", test_images, test_labels, "testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as f:
        meta = {b"label_names": [n.encode() for n in CIFAR10_LABEL_NAMES], b"num_vis": 3072}
        pickle.dump(meta, f, protocol=2)
    return folder


# --------------------------------------------------------------------------- CIFAR-100
def _write_cifar100_split(path: Path, images: np.ndarray, fine: np.ndarray, name: str) -> None:
    split = {
        b"filenames": [f"{name}_{i}.png".encode() for i in range(len(images))],
        b"batch_label": f"{name} batch 1 of 1".encode(),
        b"fine_labels": [int(v) for v in fine],  # plain lists, as in the real files
        b"coarse_labels": [int(v) // 5 for v in fine],  # the 20 superclasses (not their real mapping: unused)
        b"data": images.reshape(len(images), 3 * 32 * 32),  # R plane, G plane, B plane per row
    }
    with open(path, "wb") as f:
        pickle.dump(split, f, protocol=2)


def write_cifar100(
    root: Path | str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    meta: bool = True,
) -> Path:
    """CIFAR-100 python pickles ``root/cifar-100-python/{train,test,meta}``; returns that folder.

    Images uint8 (N, 3, 32, 32), fine labels 0..99 (stored as ``fine_labels``, beside ``coarse_labels``);
    ``meta`` False leaves the meta file out (for missing-file tests).
    """
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    _write_cifar100_split(folder / "train", _uint8(train_images, 3, 32), np.asarray(train_labels), "training")
    _write_cifar100_split(folder / "test", _uint8(test_images, 3, 32), np.asarray(test_labels), "testing")
    if meta:
        with open(folder / "meta", "wb") as f:
            names = {b"fine_label_names": [f"class_{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"super_{i}".encode() for i in range(20)]}
            pickle.dump(names, f, protocol=2)
    return folder


# --------------------------------------------------------------------------- SVHN
def write_svhn_test(root: Path | str, images: np.ndarray, labels: np.ndarray) -> Path:
    """SVHN ``root/svhn/test_32x32.mat`` from uint8 (N, 3, 32, 32) and digits 0..9; returns its path.

    As in the real file, 'X' is (32, 32, 3, N) and 'y' is (N, 1) with digit 0 stored as 10.
    """
    images, labels = _uint8(images, 3, 32), np.asarray(labels)
    folder = Path(root) / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "test_32x32.mat"
    y = np.where(labels == 0, 10, labels).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(path, {"X": images.transpose(2, 3, 1, 0), "y": y}, format="5")  # (H, W, C, N)
    return path


# --------------------------------------------------------------------------- MNIST idx
def write_idx(path: Path | str, array: np.ndarray, gz: bool = False) -> Path:
    """An idx file (uint8, 1 dim for labels or 3 for images), gzipped if ``gz``; returns ``path``.

    ``path`` is used as given: the readers detect gzip by content, not by suffix.
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim)  # 0x08 = unsigned byte, then the rank
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + array.tobytes())
    return path


def _write_idx_set(
    folder: Path,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    gz: bool,
) -> Path:
    suffix = ".gz" if gz else ""
    splits = (("train", train_images, train_labels), ("t10k", test_images, test_labels))
    for prefix, images, labels in splits:
        images = np.asarray(images)
        images = images[:, 0] if images.ndim == 4 else images  # (N, 1, H, W) -> (N, H, W)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.asarray(labels), gz)
    return folder


def write_mnist(
    root: Path | str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    gz: bool = False,
) -> Path:
    """MNIST idx files in ``root/MNIST/raw`` (``.gz`` names if ``gz``); returns that folder.

    Images uint8 (N, 1, 28, 28) or (N, 28, 28).
    """
    folder = Path(root) / "MNIST" / "raw"
    return _write_idx_set(folder, train_images, train_labels, test_images, test_labels, gz)


def write_fashion_mnist(
    root: Path | str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    gz: bool = False,
) -> Path:
    """FashionMNIST idx files in ``root/FashionMNIST/raw``; same arguments as :func:`write_mnist`."""
    folder = Path(root) / "FashionMNIST" / "raw"
    return _write_idx_set(folder, train_images, train_labels, test_images, test_labels, gz)


# --------------------------------------------------------------------------- corruptions (.npy)
def write_cifar10c(
    root: Path | str,
    corruptions: Sequence[str] = CIFAR10C_CORRUPTIONS,
    labels: np.ndarray | None = None,
    n_per_severity: int | None = None,
    folder_name: str = "CIFAR-10-C",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10-C files ``root/CIFAR-10-C/<corruption>.npy`` and ``labels.npy`` (``folder_name``
    "CIFAR-100-C": CIFAR-100-C's, the same layout; pass labels 0..99).

    Each file holds (5 * n, 32, 32, 3) uint8, severity k in rows [(k-1) n, k n), read them with
    ``block_size=n``. ``labels`` (n,) default to ``arange(n) % 10``; ``n_per_severity`` defaults
    to len(labels), else 4. Pixels are random but stamped so a block is recognisable: in every
    image, pixel (0, 0) holds (severity, corruption index + 1, row within block % 256) in
    channels (R, G, B). Returns {corruption: (images (5n, 3, 32, 32), labels (5n,) int64)} in the
    readers' convention.
    """
    if labels is None:
        n = 4 if n_per_severity is None else n_per_severity
        labels = np.arange(n) % 10
    labels = np.asarray(labels)
    n = len(labels)
    if n_per_severity is not None and n_per_severity != n:
        raise ValueError(f"n_per_severity={n_per_severity} but {n} labels")
    folder = Path(root) / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    all_labels = np.tile(labels, 5).astype(np.uint8)  # the real labels.npy repeats the test labels
    np.save(folder / "labels.npy", all_labels)
    written = {}
    for c in corruptions:
        index = CIFAR10C_CORRUPTIONS.index(c)
        x = np.random.default_rng(index).integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8)
        x[:, 0, 0, 0] = np.repeat(np.arange(1, 6), n)  # severity
        x[:, 0, 0, 1] = index + 1
        x[:, 0, 0, 2] = np.tile(np.arange(n) % 256, 5)
        np.save(folder / f"{c}.npy", x)
        written[c] = (x.transpose(0, 3, 1, 2).copy(), all_labels.astype(np.int64))
    return written


def write_mnist_c(
    root: Path | str, corruptions: Sequence[str] = MNIST_C_CORRUPTIONS, n: int = 8
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST-C test files ``root/mnist_c/<corruption>/test_{images,labels}.npy``, ``n`` per corruption.

    Images (n, 28, 28, 1) uint8 are random with pixel (0, 0) = corruption index + 1; labels
    ``arange(n) % 10`` as uint8. Returns {corruption: (images (n, 1, 28, 28), labels int64)}.
    """
    written = {}
    for c in corruptions:
        index = MNIST_C_CORRUPTIONS.index(c)
        folder = Path(root) / "mnist_c" / c
        folder.mkdir(parents=True, exist_ok=True)
        x = np.random.default_rng(100 + index).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
        x[:, 0, 0, 0] = index + 1
        y = (np.arange(n) % 10).astype(np.uint8)
        np.save(folder / "test_images.npy", x)
        np.save(folder / "test_labels.npy", y)
        written[c] = (x.transpose(0, 3, 1, 2).copy(), y.astype(np.int64))
    return written
