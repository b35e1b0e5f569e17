"""Readers for the datasets' native on-disk formats.

Every reader returns ``(images, labels)``: images uint8 ``(N, C, H, W)`` (channels first),
labels int64 ``(N,)``. Nothing here downloads; a missing or damaged file raises
:class:`~ensemble_lab.errors.DatasetError` naming the file, where it was expected and how to get it.

Expected layout under one data root (torchvision's where torchvision has one, so its
downloaders can fill it; for SVHN give torchvision ``root=<data root>/svhn``)::

    cifar-10-batches-py/data_batch_1..5, test_batch     CIFAR-10 python pickles
    cifar-100-python/train, test, meta                   CIFAR-100 python pickles (fine labels)
    svhn/test_32x32.mat                                  SVHN, MATLAB v5
    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    FashionMNIST/raw/...                                 same names as MNIST
    CIFAR-10-C/<corruption>.npy, labels.npy              Zenodo record 2535967
    CIFAR-100-C/<corruption>.npy, labels.npy             Zenodo record 3555552
    mnist_c/<corruption>/test_images.npy, test_labels.npy   Zenodo record 3239543

The shared file errors live in :mod:`ensemble_lab.data.files` and the .npy corruption readers in
:mod:`ensemble_lab.data.corruptions`; their names stay importable from here.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import scipy.io

from ensemble_lab.data.corruptions import (
    CIFAR10_TEST_SIZE,
    CIFAR10C_CORRUPTIONS,
    CIFAR10C_IMAGE_SHAPE,
    CIFAR10C_SEVERITIES,
    CIFAR100_CLASSES,
    MNIST_C_CORRUPTIONS,
    MNIST_C_IMAGE_SHAPE,
    cifar10c_shapes,
    mnist_c_shapes,
    read_cifar10c,
    read_mnist_c,
)
from ensemble_lab.data.files import (
    CIFAR10_URL,
    CIFAR10C_URL,
    CIFAR100_URL,
    CIFAR100C_URL,
    MNIST_C_URL,
    NUM_CLASSES,
    SVHN_URL,
    check_label_range,
    damaged_file_error,
    missing_file_error,
    require_file,
)
from ensemble_lab.errors import ConfigError

__all__ = [
    "CIFAR10C_CORRUPTIONS", "CIFAR10C_IMAGE_SHAPE", "CIFAR10C_SEVERITIES", "CIFAR10C_URL", "CIFAR10_TEST_SIZE",
    "CIFAR10_URL", "MNIST_C_CORRUPTIONS", "MNIST_C_IMAGE_SHAPE", "MNIST_C_URL", "NUM_CLASSES", "SVHN_SPLITS",
    "SVHN_URL", "cifar10c_shapes", "damaged_file_error", "idx_split_size", "missing_file_error", "mnist_c_shapes",
    "read_cifar10", "read_cifar10c", "read_fashion_mnist", "read_idx_images", "read_idx_labels", "read_mnist",
    "read_mnist_c", "read_svhn", "CIFAR100_CLASSES", "CIFAR100_URL", "CIFAR100C_URL", "cifar100_files", "read_cifar100",
]

SVHN_SPLITS = ("train", "test", "extra")


# --------------------------------------------------------------------------- CIFAR-10
class _ArrayUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR batch holds (numpy arrays, lists, bytes).

    A plain unpickler calls whatever a file names, so a tampered download could run code.
    """

    _NUMPY_NAMES = {"_reconstruct", "_frombuffer", "ndarray", "dtype", "scalar"}

    def find_class(self, module: str, name: str) -> object:
        if module.split(".")[0] == "numpy" and name in self._NUMPY_NAMES:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 stores bytes from Python 3
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")




def _read_cifar_batch(
    path: Path, dataset: str = "CIFAR-10", label_key: str = "labels", num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """One python-pickle batch of CIFAR-10 (``labels``) or CIFAR-100 (``fine_labels``): images (N, 3, 32, 32), labels (N,)."""
    require_file(path, dataset)
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the batches were pickled by Python 2, keys come back as bytes
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any unpickling failure means the file is not a CIFAR batch
        raise damaged_file_error(path, dataset, f"cannot unpickle: {e}") from e
    if not isinstance(batch, dict):
        raise damaged_file_error(path, dataset, f"holds a {type(batch).__name__}, not a dict")
    data, labels = batch.get(b"data", batch.get("data")), batch.get(label_key.encode(), batch.get(label_key))
    if data is None or labels is None:
        raise damaged_file_error(path, dataset, f"no 'data' or '{label_key}' entry")
    try:
        data, labels = np.asarray(data), np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:  # labels that are not integers
        raise damaged_file_error(path, dataset, f"bad labels: {e}") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise damaged_file_error(
            path, dataset, f"data is {data.dtype} {data.shape}, expected uint8 (N, 3072)"
        )
    if labels.shape != (len(data),):
        raise damaged_file_error(
            path, dataset, f"{len(data)} images but labels shaped {labels.shape}"
        )
    check_label_range(path, dataset, labels, high=num_classes - 1)
    # each row is three 32x32 planes, R then G then B, each row-major: exactly (3, 32, 32)
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10(root: Path | str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from ``root/cifar-10-batches-py``: train = data_batch_1..5, test = test_batch.

    Returns images uint8 (N, 3, 32, 32) and labels int64 (N,).
    """
    folder = Path(root).expanduser() / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    parts = [_read_cifar_batch(folder / name) for name in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def cifar100_files(root: Path | str) -> list[Path]:
    """CIFAR-100's python-pickle files under ``root/cifar-100-python``: train, test and meta (the class names)."""
    folder = Path(root).expanduser() / "cifar-100-python"
    return [folder / name for name in ("train", "test", "meta")]


def read_cifar100(root: Path | str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100 from ``root/cifar-100-python/{train,test}`` with its 100 fine labels (the coarse 20 are not used).

    Returns images uint8 (N, 3, 32, 32) and labels int64 (N,) in 0..99.
    """
    train_path, test_path, _ = cifar100_files(root)
    return _read_cifar_batch(train_path if train else test_path, "CIFAR-100", "fine_labels", CIFAR100_CLASSES)


# --------------------------------------------------------------------------- SVHN
def read_svhn(root: Path | str, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """SVHN cropped digits from ``root/svhn/<split>_32x32.mat`` (MATLAB v5).

    Returns images uint8 (N, 3, 32, 32) and labels int64 (N,) in 0..9: the file stores
    digit 0 as label 10, which is mapped back to 0.
    """
    if split not in SVHN_SPLITS:
        raise ConfigError(f"SVHN split '{split}' unknown; choose one of {', '.join(SVHN_SPLITS)}")
    path = require_file(Path(root).expanduser() / "svhn" / f"{split}_32x32.mat", "SVHN")
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as e:  # scipy raises several types for a damaged .mat
        raise damaged_file_error(path, "SVHN", f"cannot read as a MATLAB file: {e}") from e
    if "X" not in mat or "y" not in mat:
        raise damaged_file_error(path, "SVHN", "no 'X' or 'y' variable")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        why = f"X is {x.dtype} {x.shape}, expected uint8 (32, 32, 3, N)"
        raise damaged_file_error(path, "SVHN", why)
    labels = y.reshape(-1).astype(np.int64)
    if len(labels) != x.shape[3]:
        raise damaged_file_error(path, "SVHN", f"{x.shape[3]} images but {len(labels)} labels")
    check_label_range(path, "SVHN", labels, 1, 10)
    labels[labels == 10] = 0
    # MATLAB stores (H, W, C, N); we want (N, C, H, W)
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


# --------------------------------------------------------------------------- MNIST idx
_IDX_IMAGES = 0x00000803  # unsigned byte, 3 dimensions
_IDX_LABELS = 0x00000801  # unsigned byte, 1 dimension
_GZIP_MAGIC = b"\x1f\x8b"


def _read_idx(path: Path, magic: int, dataset: str) -> np.ndarray:
    require_file(path, dataset)
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == _GZIP_MAGIC  # decide by content, whatever the suffix says
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as f:
            raw = bytearray(f.read())  # bytearray: the array built on it stays writable
    except (OSError, EOFError, zlib.error) as e:  # gzip: truncated stream, bad CRC, or a damaged deflate stream
        raise damaged_file_error(path, dataset, f"cannot decompress: {e}") from e
    if len(raw) < 4:
        raise damaged_file_error(path, dataset, f"only {len(raw)} bytes")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise damaged_file_error(path, dataset, f"magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise damaged_file_error(path, dataset, "truncated header")
    shape = struct.unpack(f">{ndim}I", raw[4:start])
    expected = start + int(np.prod(shape))
    if len(raw) != expected:
        raise damaged_file_error(
            path, dataset, f"{len(raw)} bytes, expected {expected} for shape {shape}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(shape)


def read_idx_images(path: Path | str, dataset: str = "MNIST") -> np.ndarray:
    """Images from an idx3-ubyte file, raw or gzipped: uint8 (N, 1, H, W).

    ``dataset`` only names the dataset in error messages.
    """
    images = _read_idx(Path(path).expanduser(), _IDX_IMAGES, dataset)
    return images[:, None]  # (N, H, W) -> (N, 1, H, W)


def read_idx_labels(path: Path | str, dataset: str = "MNIST") -> np.ndarray:
    """Labels from an idx1-ubyte file, raw or gzipped: int64 (N,)."""
    return _read_idx(Path(path).expanduser(), _IDX_LABELS, dataset).astype(np.int64)


def _find_idx(folder: Path, stem: str, dataset: str) -> Path:
    """``stem`` as torchvision extracts it, else the ``.gz`` it was downloaded as."""
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    raise missing_file_error(folder / stem, dataset)


def _read_idx_pair(root: Path | str, dataset: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    folder = Path(root).expanduser() / dataset / "raw"
    prefix = "train" if train else "t10k"
    image_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte", dataset)
    label_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte", dataset)
    images = read_idx_images(image_path, dataset)
    labels = read_idx_labels(label_path, dataset)
    if len(images) != len(labels):
        raise damaged_file_error(
            label_path, dataset, f"{len(labels)} labels for {len(images)} images in {image_path.name}"
        )
    check_label_range(label_path, dataset, labels)
    return images, labels


def idx_split_size(root: Path | str, dataset: str, train: bool) -> int:
    """Images in a split of MNIST-style ``root/<dataset>/raw``, from its label file's header alone (8 bytes)."""
    folder = Path(root).expanduser() / dataset / "raw"
    path = _find_idx(folder, f"{'train' if train else 't10k'}-labels-idx1-ubyte", dataset)
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == _GZIP_MAGIC
        with (gzip.open if gzipped else open)(path, "rb") as f:
            header = f.read(8)
    except (OSError, EOFError, zlib.error) as e:
        raise damaged_file_error(path, dataset, f"cannot decompress: {e}") from e
    if len(header) < 8 or int.from_bytes(header[:4], "big") != _IDX_LABELS:
        raise damaged_file_error(path, dataset, "not an idx1-ubyte label file (bad or truncated header)")
    return int.from_bytes(header[4:8], "big")


def read_mnist(root: Path | str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """MNIST from ``root/MNIST/raw``: images uint8 (N, 1, 28, 28), labels int64 (N,)."""
    return _read_idx_pair(root, "MNIST", train)


def read_fashion_mnist(root: Path | str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """FashionMNIST from ``root/FashionMNIST/raw``: images uint8 (N, 1, 28, 28), labels int64 (N,)."""
    return _read_idx_pair(root, "FashionMNIST", train)


