"""Readers of the corrupted test sets stored as .npy arrays: CIFAR-10-C, CIFAR-100-C and MNIST-C.

Both return images uint8 ``(N, C, H, W)`` and labels int64 ``(N,)``, like every image reader; the
arrays are memory-mapped, so only the rows a caller slices are read from disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ensemble_lab.data.files import NUM_CLASSES, check_label_range, damaged_file_error, require_file
from ensemble_lab.errors import ConfigError

CIFAR10_TEST_SIZE = 10_000  # CIFAR-10's test split; CIFAR-10-C renders it once per corruption and severity
CIFAR10C_SEVERITIES = (1, 2, 3, 4, 5)
CIFAR100_CLASSES = 100
#: the -C datasets of CIFAR: their folder under the data root (also the name errors use) and their classes.
#: CIFAR-100-C (Zenodo record 3555552) has CIFAR-10-C's layout and 19 corruptions, rendered from CIFAR-100's test set
CIFAR_C_DATASETS = {"CIFAR-10-C": NUM_CLASSES, "CIFAR-100-C": CIFAR100_CLASSES}
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


def cifar10c_shapes(
    root: Path | str,
    corruptions: Sequence[str] = CIFAR10C_CORRUPTIONS,
    block_size: int | None = None,
    dataset: str = "CIFAR-10-C",
) -> dict[Path, tuple[int, ...]]:
    """CIFAR-10-C's (or, with ``dataset="CIFAR-100-C"``, CIFAR-100-C's) files under ``root/<dataset>`` and the
    shape each has: the one statement of their layout.

    Each ``<corruption>.npy`` stacks 5 severity blocks (severity 1 first) of ``block_size`` images,
    uint8 (5 * block_size, 32, 32, 3); ``labels.npy`` holds the 5 * block_size labels. A block is
    CIFAR-10's test set rendered with that corruption, so ``block_size`` is the test set's length
    (default ``CIFAR10_TEST_SIZE``, 10,000; tiny test fixtures have smaller test sets).
    """
    block = CIFAR10_TEST_SIZE if block_size is None else block_size
    if block < 1:
        raise ConfigError(f"block_size must be positive, got {block}")
    folder = Path(root).expanduser() / dataset
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
    require_file(path, dataset)
    try:
        # mmap: only the rows sliced later are read from disk (a CIFAR-10-C file is 150 MB)
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # bad header, or shorter than the header says
        raise damaged_file_error(path, dataset, f"not a readable .npy array: {e}") from e


def _check_images(path: Path, dataset: str, images: np.ndarray, hwc: tuple[int, int, int]) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != hwc:
        why = f"array is {images.dtype} {images.shape}, expected uint8 (N, {', '.join(map(str, hwc))})"
        raise damaged_file_error(path, dataset, why)


def _check_labels(path: Path, dataset: str, labels: np.ndarray, n: int, num_classes: int = NUM_CLASSES) -> None:
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise damaged_file_error(
            path, dataset, f"labels are {labels.dtype} {labels.shape}, expected {n} integers"
        )
    check_label_range(path, dataset, labels, high=num_classes - 1)


def read_cifar10c(
    root: Path | str,
    corruption: str,
    severities: Sequence[int] = (5,),
    block_size: int | None = None,
    dataset: str = "CIFAR-10-C",
) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10-C corruption from ``root/CIFAR-10-C/<corruption>.npy`` and ``labels.npy`` (``dataset``:
    "CIFAR-100-C" reads ``root/CIFAR-100-C`` instead, labels 0..99).

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
        raise ConfigError(f"{dataset} severities must be a non-empty list of 1..5, got {severities}")
    if dataset not in CIFAR_C_DATASETS:
        raise ConfigError(f"unknown corrupted CIFAR dataset {dataset!r}; choose from {', '.join(CIFAR_C_DATASETS)}")
    (image_path, (rows, *_)), (label_path, _) = cifar10c_shapes(root, [corruption], block_size, dataset).items()
    block = rows // len(CIFAR10C_SEVERITIES)
    images, labels = _load_npy(image_path, dataset), _load_npy(label_path, dataset)
    _check_images(image_path, dataset, images, CIFAR10C_IMAGE_SHAPE)
    if len(images) != rows:
        raise damaged_file_error(
            image_path, dataset,
            f"{len(images)} rows, expected 5 severity blocks of {block} = {rows} (one block per severity, "
            f"each the {dataset.removesuffix('-C')} test set)",
        )
    _check_labels(label_path, dataset, labels, rows, CIFAR_C_DATASETS[dataset])
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
