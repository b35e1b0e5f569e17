"""Where dataset files come from and the errors a reader raises about them, shared by every reader.

A missing or damaged file raises :class:`~ensemble_lab.errors.DatasetError` in one line that names
the file, where it was expected and how to get it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ensemble_lab.errors import DatasetError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/{split}_32x32.mat"
CIFAR10C_URL = "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100C_URL = "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar?download=1"
MNIST_C_URL = "https://zenodo.org/records/3239543/files/mnist_c.zip?download=1"

_DOWNLOAD_FLAG = "set `download: true` in the datamodule config (`--data.download true`)"
_HOW_TO_GET = {
    "CIFAR-10": f"{_DOWNLOAD_FLAG}, or extract {CIFAR10_URL} into the data root",
    "CIFAR-100": f"{_DOWNLOAD_FLAG}, or extract {CIFAR100_URL} into the data root",
    "SVHN": f"{_DOWNLOAD_FLAG}, or save {SVHN_URL.format(split='test')} into <root>/svhn/",
    "MNIST": f"{_DOWNLOAD_FLAG} (torchvision's MNIST downloader fills <root>/MNIST/raw/)",
    "FashionMNIST": f"{_DOWNLOAD_FLAG} (torchvision's FashionMNIST downloader fills "
    "<root>/FashionMNIST/raw/)",
    "CIFAR-10-C": f"{_DOWNLOAD_FLAG} (2.9 GB), or download CIFAR-10-C.tar from Zenodo "
    f"({CIFAR10C_URL}) and extract it into the data root",
    "CIFAR-100-C": f"{_DOWNLOAD_FLAG} (2.9 GB), or download CIFAR-100-C.tar from Zenodo "
    f"({CIFAR100C_URL}) and extract it into the data root",
    "MNIST-C": f"{_DOWNLOAD_FLAG}, or download mnist_c.zip from Zenodo ({MNIST_C_URL}) "
    "and extract it into the data root",
}


def missing_file_error(path: Path, dataset: str, how: str | None = None) -> DatasetError:
    """The error for a dataset file that is not where a reader looks for it; ``how`` says how to get it
    (default: the dataset's entry in the table above, else the download flag)."""
    return DatasetError(
        f"{dataset} file '{path.name}' not found: expected it at {path}. "
        f"To get it: {how or _HOW_TO_GET.get(dataset, _DOWNLOAD_FLAG)}."
    )


def damaged_file_error(path: Path, dataset: str, why: str, how: str | None = None) -> DatasetError:
    """The error for a dataset file that exists but cannot be what the reader expects (``how``: as above)."""
    return DatasetError(
        f"{dataset} file '{path.name}' at {path} is damaged ({why}). Delete it and get it "
        f"again: {how or _HOW_TO_GET.get(dataset, _DOWNLOAD_FLAG)}."
    )


def require_file(path: Path, dataset: str, how: str | None = None) -> Path:
    """``path`` if it is a file, else the missing-file error (``how``: as in :func:`missing_file_error`)."""
    if not path.is_file():
        raise missing_file_error(path, dataset, how)
    return path


#: the classes of every dataset here but CIFAR-100 (100), labelled 0..9 (SVHN's file stores 1..10, mapped on reading)
NUM_CLASSES = 10


def check_label_range(path: Path, dataset: str, labels: np.ndarray, low: int = 0, high: int = NUM_CLASSES - 1) -> None:
    """DatasetError unless every label is in low..high: a damaged label file names itself here, not as an index error in the loss after training starts."""
    if len(labels) and (labels.min() < low or labels.max() > high):
        raise damaged_file_error(path, dataset, f"labels range over {labels.min()}..{labels.max()}, expected {low}..{high}")

