"""Readers for the datasets' native on-disk formats.

Every reader returns ``(images, labels)``: images uint8 ``(N, C, H, W)`` (channels first),
labels int64 ``(N,)``. Nothing here downloads; a missing or damaged file raises
:class:`~ensemble_lab.errors.DatasetError` naming the file, where it was expected and how to get it.

Expected layout under one data root (torchvision's where torchvision has one, so its
downloaders can fill it; for SVHN give torchvision ``root=<data root>/svhn``)::

    cifar-10-batches-py/data_batch_1..5, test_batch     CIFAR-10 python pickles
    svhn/test_32x32.mat                                  SVHN, MATLAB v5
    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    FashionMNIST/raw/...                                 same names as MNIST
    CIFAR-10-C/<corruption>.npy, labels.npy              Zenodo record 2535967
    mnist_c/<corruption>/test_images.npy, test_labels.npy   Zenodo record 3239543
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.io

from ensemble_lab.errors import ConfigError, DatasetError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/{split}_32x32.mat"
CIFAR10C_URL = "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1"
MNIST_C_URL = "https://zenodo.org/records/3239543/files/mnist_c.zip?download=1"

CIFAR10_TEST_SIZE = 10_000  # CIFAR-10's test split; CIFAR-10-C renders it once per corruption and severity
CIFAR10C_SEVERITIES = (1, 2, 3, 4, 5)
CIFAR10C_IMAGE_SHAPE = (32, 32, 3)  # one CIFAR-10-C image as stored: height, width, channels last
MNIST_C_IMAGE_SHAPE = (28, 28, 1)  # one MNIST-C image as stored
CIFAR10C_CORRUPTIONS = (
    "brightness", "contrast", "defocus_blur", "elastic_transform", "fog", "frost",
    "gaussian_blur", "gaussian_noise", "glass_blur", "impulse_noise", "jpeg_compression",
    "motion_blur", "pixelate", "saturate", "shot_noise", "snow", "spatter",
    "speckle_noise", "zoom_blur",
)
MNIST_C_CORRUPTIONS = (
    "brightness", "canny_edges", "dotted_line", "fog", "glass_blur", "impulse_noise",
    "motion_blur", "rotate", "scale", "shear", "shot_noise", "spatter", "stripe",
    "translate", "zigzag",
)
SVHN_SPLITS = ("train", "test", "extra")

_DOWNLOAD_FLAG = "set `download: true` in the datamodule config (`--data.download true`)"
_HOW_TO_GET = {
    "CIFAR-10": f"{_DOWNLOAD_FLAG}, or extract {CIFAR10_URL} into the data root",
    "SVHN": f"{_DOWNLOAD_FLAG}, or save {SVHN_URL.format(split='test')} into <root>/svhn/",
    "MNIST": f"{_DOWNLOAD_FLAG} (torchvision's MNIST downloader fills <root>/MNIST/raw/)",
    "FashionMNIST": f"{_DOWNLOAD_FLAG} (torchvision's FashionMNIST downloader fills "
    "<root>/FashionMNIST/raw/)",
    "CIFAR-10-C": f"{_DOWNLOAD_FLAG} (2.9 GB), or download CIFAR-10-C.tar from Zenodo "
    f"({CIFAR10C_URL}) and extract it into the data root",
    "MNIST-C": f"{_DOWNLOAD_FLAG}, or download mnist_c.zip from Zenodo ({MNIST_C_URL}) "
    "and extract it into the data root",
}


def missing_file_error(path: Path, dataset: str) -> DatasetError:
    """The error for a dataset file that is not where a reader looks for it."""
    return DatasetError(
        f"{dataset} file '{path.name}' not found: expected it at {path}. "
        f"To get it: {_HOW_TO_GET.get(dataset, _DOWNLOAD_FLAG)}."
    )


def damaged_file_error(path: Path, dataset: str, why: str) -> DatasetError:
    """The error for a dataset file that exists but cannot be what the reader expects."""
    return DatasetError(
        f"{dataset} file '{path.name}' at {path} is damaged ({why}). Delete it and get it "
        f"again: {_HOW_TO_GET.get(dataset, _DOWNLOAD_FLAG)}."
    )


def _require_file(path: Path, dataset: str) -> Path:
    if not path.is_file():
        raise missing_file_error(path, dataset)
    return path


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


#: every dataset here has 10 classes, labelled 0..9 (SVHN's file stores 1..10, mapped on reading)
NUM_CLASSES = 10


def _check_label_range(path: Path, dataset: str, labels: np.ndarray, low: int = 0, high: int = NUM_CLASSES - 1) -> None:
    """A damaged label file names itself here, not as an index error in the loss after training starts."""
    if len(labels) and (labels.min() < low or labels.max() > high):
        raise damaged_file_error(path, dataset, f"labels range over {labels.min()}..{labels.max()}, expected {low}..{high}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    _require_file(path, "CIFAR-10")
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the batches were pickled by Python 2, keys come back as bytes
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any unpickling failure means the file is not a CIFAR batch
        raise damaged_file_error(path, "CIFAR-10", f"cannot unpickle: {e}") from e
    if not isinstance(batch, dict):
        raise damaged_file_error(path, "CIFAR-10", f"holds a {type(batch).__name__}, not a dict")
    data, labels = batch.get(b"data", batch.get("data")), batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise damaged_file_error(path, "CIFAR-10", "no 'data' or 'labels' entry")
    try:
        data, labels = np.asarray(data), np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:  # labels that are not integers
        raise damaged_file_error(path, "CIFAR-10", f"bad labels: {e}") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise damaged_file_error(
            path, "CIFAR-10", f"data is {data.dtype} {data.shape}, expected uint8 (N, 3072)"
        )
    if labels.shape != (len(data),):
        raise damaged_file_error(
            path, "CIFAR-10", f"{len(data)} images but labels shaped {labels.shape}"
        )
    _check_label_range(path, "CIFAR-10", labels)
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


# --------------------------------------------------------------------------- SVHN
def read_svhn(root: Path | str, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """SVHN cropped digits from ``root/svhn/<split>_32x32.mat`` (MATLAB v5).

    Returns images uint8 (N, 3, 32, 32) and labels int64 (N,) in 0..9: the file stores
    digit 0 as label 10, which is mapped back to 0.
    """
    if split not in SVHN_SPLITS:
        raise ConfigError(f"SVHN split '{split}' unknown; choose one of {', '.join(SVHN_SPLITS)}")
    path = _require_file(Path(root).expanduser() / "svhn" / f"{split}_32x32.mat", "SVHN")
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
    _check_label_range(path, "SVHN", labels, 1, 10)
    labels[labels == 10] = 0
    # MATLAB stores (H, W, C, N); we want (N, C, H, W)
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


# --------------------------------------------------------------------------- MNIST idx
_IDX_IMAGES = 0x00000803  # unsigned byte, 3 dimensions
_IDX_LABELS = 0x00000801  # unsigned byte, 1 dimension
_GZIP_MAGIC = b"\x1f\x8b"


def _read_idx(path: Path, magic: int, dataset: str) -> np.ndarray:
    _require_file(path, dataset)
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
    _check_label_range(label_path, dataset, labels)
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


# --------------------------------------------------------------------------- .npy corruptions
def cifar10c_shapes(
    root: Path | str, corruptions: Sequence[str] = CIFAR10C_CORRUPTIONS, block_size: int | None = None
) -> dict[Path, tuple[int, ...]]:
    """CIFAR-10-C's files under ``root/CIFAR-10-C`` and the shape each has: the one statement of its layout.

    Each ``<corruption>.npy`` stacks 5 severity blocks (severity 1 first) of ``block_size`` images,
    uint8 (5 * block_size, 32, 32, 3); ``labels.npy`` holds the 5 * block_size labels. A block is
    CIFAR-10's test set rendered with that corruption, so ``block_size`` is the test set's length
    (default ``CIFAR10_TEST_SIZE``, 10,000; tiny test fixtures have smaller test sets).
    """
    block = CIFAR10_TEST_SIZE if block_size is None else block_size
    if block < 1:
        raise ConfigError(f"block_size must be positive, got {block}")
    folder = Path(root).expanduser() / "CIFAR-10-C"
    rows = len(CIFAR10C_SEVERITIES) * block
    shapes: dict[Path, tuple[int, ...]] = {folder / f"{c}.npy": (rows, *CIFAR10C_IMAGE_SHAPE) for c in corruptions}
    shapes[folder / "labels.npy"] = (rows,)
    return shapes


def mnist_c_shapes(root: Path | str, corruptions: Sequence[str] = MNIST_C_CORRUPTIONS) -> dict[Path, tuple[int, ...]]:
    """MNIST-C's test files under ``root/mnist_c/<corruption>/`` and their shapes, -1 for any length:
    images uint8 (N, 28, 28, 1), labels (N,)."""
    folder = Path(root).expanduser() / "mnist_c"
    shapes: dict[Path, tuple[int, ...]] = {}
    for c in corruptions:
        shapes[folder / c / "test_images.npy"] = (-1, *MNIST_C_IMAGE_SHAPE)
        shapes[folder / c / "test_labels.npy"] = (-1,)
    return shapes


def _load_npy(path: Path, dataset: str) -> np.ndarray:
    _require_file(path, dataset)
    try:
        # mmap: only the rows sliced later are read from disk (a CIFAR-10-C file is 150 MB)
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # bad header, or shorter than the header says
        raise damaged_file_error(path, dataset, f"not a readable .npy array: {e}") from e


def _check_images(path: Path, dataset: str, images: np.ndarray, hwc: tuple[int, int, int]) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != hwc:
        why = f"array is {images.dtype} {images.shape}, expected uint8 (N, {', '.join(map(str, hwc))})"
        raise damaged_file_error(path, dataset, why)


def _check_labels(path: Path, dataset: str, labels: np.ndarray, n: int) -> None:
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise damaged_file_error(
            path, dataset, f"labels are {labels.dtype} {labels.shape}, expected {n} integers"
        )
    _check_label_range(path, dataset, labels)


def read_cifar10c(
    root: Path | str,
    corruption: str,
    severities: Sequence[int] = (5,),
    block_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10-C corruption from ``root/CIFAR-10-C/<corruption>.npy`` and ``labels.npy``.

    The file stacks the 5 severities in blocks of ``block_size`` rows, severity 1 first (see
    :func:`cifar10c_shapes`; the block is the CIFAR-10 test set's length, 10,000 by default).
    Returns the blocks of ``severities`` concatenated in the order given: images uint8
    (len(severities) * block_size, 3, 32, 32) and labels int64. Unknown corruption or severity
    raises ConfigError.
    """
    if corruption not in CIFAR10C_CORRUPTIONS:
        allowed = ", ".join(CIFAR10C_CORRUPTIONS)
        raise ConfigError(f"unknown CIFAR-10-C corruption '{corruption}'; choose from {allowed}")
    severities = list(severities)
    if not severities or any(s not in CIFAR10C_SEVERITIES for s in severities):
        raise ConfigError(f"CIFAR-10-C severities must be a non-empty list of 1..5, got {severities}")
    (image_path, (rows, *_)), (label_path, _) = cifar10c_shapes(root, [corruption], block_size).items()
    block = rows // len(CIFAR10C_SEVERITIES)
    images, labels = _load_npy(image_path, "CIFAR-10-C"), _load_npy(label_path, "CIFAR-10-C")
    _check_images(image_path, "CIFAR-10-C", images, CIFAR10C_IMAGE_SHAPE)
    if len(images) != rows:
        raise damaged_file_error(
            image_path, "CIFAR-10-C",
            f"{len(images)} rows, expected 5 severity blocks of {block} = {rows} (one block per severity, "
            "each the CIFAR-10 test set)",
        )
    _check_labels(label_path, "CIFAR-10-C", labels, rows)
    blocks = [slice((s - 1) * block, s * block) for s in severities]
    x = np.concatenate([images[b] for b in blocks])  # (S * block, 32, 32, 3), read from disk here
    y = np.concatenate([labels[b] for b in blocks]).astype(np.int64)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y  # (N, 3, 32, 32)


def read_mnist_c(root: Path | str, corruption: str) -> tuple[np.ndarray, np.ndarray]:
    """One MNIST-C corruption's test split from ``root/mnist_c/<corruption>/test_*.npy``.

    Returns images uint8 (N, 1, 28, 28) and labels int64 (N,). Unknown corruption raises ConfigError.
    """
    if corruption not in MNIST_C_CORRUPTIONS:
        allowed = ", ".join(MNIST_C_CORRUPTIONS)
        raise ConfigError(f"unknown MNIST-C corruption '{corruption}'; choose from {allowed}")
    image_path, label_path = mnist_c_shapes(root, [corruption])
    images, labels = _load_npy(image_path, "MNIST-C"), _load_npy(label_path, "MNIST-C")
    _check_images(image_path, "MNIST-C", images, MNIST_C_IMAGE_SHAPE)
    _check_labels(label_path, "MNIST-C", labels, len(images))
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels.astype(np.int64)
