"""Glue between the native-format readers and the datamodules: presence checks and tensors."""

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from ensemble_lab.data.base import LabeledImages
from ensemble_lab.data.readers import missing_file_error


def _owned(array: np.ndarray) -> torch.Tensor:
    """A tensor on the array's memory, copied first if that memory is read-only (a .npy memory map)."""
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def labeled(images: np.ndarray, labels: np.ndarray) -> LabeledImages:
    """A reader's (uint8 (N, C, H, W), int64 (N,)) arrays as tensors, in memory the tensors own."""
    return LabeledImages(_owned(images), _owned(labels))


def require_files(expected: Iterable[tuple[str, Sequence[Path]]]) -> None:
    """Fail fast, before any training, on the first dataset file that is missing.

    ``expected`` holds (dataset name, accepted paths) pairs; a file counts as present if any of its
    accepted paths exists (e.g. an idx file raw or ``.gz``). The error is the readers' own: it names
    the file, where it was expected and how to download it.
    """
    for dataset, paths in expected:
        if not any(Path(p).is_file() for p in paths):
            raise missing_file_error(Path(paths[0]), dataset)


def idx_files(folder: Path, dataset: str, prefixes: Sequence[str] = ("train", "t10k")) -> list[tuple[str, list[Path]]]:
    """The idx image and label files of MNIST-style ``folder`` for :func:`require_files` (raw or .gz)."""
    stems = [f"{p}-{kind}" for p in prefixes for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    return [(dataset, [folder / stem, folder / f"{stem}.gz"]) for stem in stems]
