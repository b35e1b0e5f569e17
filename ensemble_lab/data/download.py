"""Downloads into the layout :mod:`ensemble_lab.data.readers` reads, with torchvision's utilities.

Every function skips what is already present and verified, so a datamodule can call it on every
run (``prepare_data``). "Verified" is the strongest check each dataset allows cheaply: the per-file
MD5 where one is published (CIFAR-10 batches, SVHN), otherwise the extracted files must parse with
the expected shapes (MNIST / FashionMNIST idx, CIFAR-10-C and MNIST-C .npy headers).

torchvision is imported only when something must be fetched: ``torchvision.datasets`` takes
seconds to import, and the skip path runs on every training start.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np

from ensemble_lab.data.readers import (
    CIFAR10_URL,
    CIFAR10C_URL,
    CIFAR100_URL,
    CIFAR100C_URL,
    MNIST_C_URL,
    SVHN_URL,
    cifar10c_shapes,
    damaged_file_error,
    missing_file_error,
    mnist_c_shapes,
    read_fashion_mnist,
    read_mnist,
)
from ensemble_lab.errors import DatasetError

CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # cifar-10-python.tar.gz
CIFAR10_FILE_MD5 = {  # the extracted batches, so a present copy is verified without the tarball
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
SVHN_TEST_MD5 = "eb5a983be6a315427106f1b64d4c7e5f"  # test_32x32.mat
CIFAR10C_MD5 = "56bf5dcef84df0e2308c6dcbcbbd8499"  # CIFAR-10-C.tar, Zenodo record 2535967
MNIST_C_MD5 = "4b34b33045869ee6d424616cd3a65da3"  # mnist_c.zip, Zenodo record 3239543
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # cifar-100-python.tar.gz
CIFAR100_FILE_MD5 = {  # the extracted pickles
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
CIFAR100C_MD5 = "11f0ed0f1191edbf9fa23466ae6021d3"  # CIFAR-100-C.tar, Zenodo record 3555552


# --------------------------------------------------------------------------- checks
def file_md5(path: Path | str) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks (CIFAR-10-C is 2.9 GB)."""
    digest = hashlib.md5(usedforsecurity=False)  # a checksum, not security: allowed in FIPS mode
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path | str, md5: str) -> None:
    """Raise DatasetError unless ``path`` exists and its MD5 is ``md5``."""
    path = Path(path)
    if not path.is_file():
        raise missing_file_error(path, "dataset")
    actual = file_md5(path)
    if actual != md5:
        raise DatasetError(
            f"damaged file {path}: MD5 {actual}, expected {md5}; delete it and download again"
        )


def _md5_ok(path: Path, md5: str) -> bool:
    return path.is_file() and file_md5(path) == md5


def _npy_shape(path: Path) -> tuple[int, ...] | None:
    """Shape from a .npy header (no data read), or None if the file is missing or unreadable."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError, EOFError):  # EOFError: an empty file (an interrupted extraction)
        return None


def _first_bad(expected: dict[Path, tuple[int, ...]]) -> Path | None:
    """The first file whose .npy header is missing or does not match its shape, else None."""
    for path, shape in expected.items():
        found = _npy_shape(path)
        if found is None or len(found) != len(shape):
            return path
        if any(want not in (-1, got) for want, got in zip(shape, found)):  # -1: any length
            return path
    return None


def check_npy_files(expected: dict[Path, tuple[int, ...]], dataset: str) -> None:
    """Name the first .npy file that is missing, truncated or of the wrong shape (headers only, no data read).

    ``expected`` maps each path to its shape, -1 for any length.
    """
    bad = _first_bad(expected)
    if bad is not None and not bad.is_file():
        raise missing_file_error(bad, dataset)
    if bad is not None:
        found = _npy_shape(bad)
        want = "(" + ", ".join("N" if n == -1 else str(n) for n in expected[bad]) + ("," if len(expected[bad]) == 1 else "") + ")"
        why = "not a readable .npy array" if found is None else f"array shaped {found}"
        why += f", expected {want}"
        raise damaged_file_error(bad, dataset, why)


# --------------------------------------------------------------------------- fetching
def _download_archive(url: str, root: Path, filename: str, md5: str) -> None:
    """Download, check the MD5, extract into ``root``, then delete the archive (not needed again)."""
    from torchvision.datasets.utils import download_and_extract_archive  # torchvision only when downloading

    download_and_extract_archive(url, root, filename=filename, md5=md5, remove_finished=True)


def _download_file(url: str, folder: Path, filename: str, md5: str) -> None:
    """Download one file into ``folder`` and check its MD5."""
    from torchvision.datasets.utils import download_url  # torchvision only when downloading

    download_url(url, folder, filename, md5)


def _torchvision_dataset(name: str) -> type:
    """torchvision's MNIST or FashionMNIST class; its constructor downloads into root/<name>/raw."""
    import torchvision.datasets  # torchvision only when downloading

    return getattr(torchvision.datasets, name)


def _fetch(dataset: str, url: str, target: Path, fetch: Callable[[], object]) -> None:
    """Run one download; a network or checksum failure becomes a DatasetError."""
    try:
        fetch()
    except DatasetError:
        raise
    except (RuntimeError, OSError) as e:  # URLError is an OSError; a bad checksum a RuntimeError
        raise DatasetError(
            f"could not download {dataset} from {url} into {target}: {e}. Check the network, "
            f"or download it by hand and place it at {target}."
        ) from e


# --------------------------------------------------------------------------- datasets
def download_cifar10(root: Path | str) -> Path:
    """CIFAR-10 python batches into ``root/cifar-10-batches-py``; returns that folder."""
    root = Path(root).expanduser()
    folder = root / "cifar-10-batches-py"
    if all(_md5_ok(folder / name, md5) for name, md5 in CIFAR10_FILE_MD5.items()):
        return folder
    _fetch("CIFAR-10", CIFAR10_URL, folder,
           lambda: _download_archive(CIFAR10_URL, root, "cifar-10-python.tar.gz", CIFAR10_MD5))
    for name, md5 in CIFAR10_FILE_MD5.items():
        verify_md5(folder / name, md5)
    return folder


def download_cifar100(root: Path | str) -> Path:
    """CIFAR-100 python pickles (train, test, meta) into ``root/cifar-100-python``; returns that folder."""
    root = Path(root).expanduser()
    folder = root / "cifar-100-python"
    if all(_md5_ok(folder / name, md5) for name, md5 in CIFAR100_FILE_MD5.items()):
        return folder
    _fetch("CIFAR-100", CIFAR100_URL, folder,
           lambda: _download_archive(CIFAR100_URL, root, "cifar-100-python.tar.gz", CIFAR100_MD5))
    for name, md5 in CIFAR100_FILE_MD5.items():
        verify_md5(folder / name, md5)
    return folder


def download_svhn_test(root: Path | str) -> Path:
    """SVHN's test split into ``root/svhn/test_32x32.mat``; returns the file's path."""
    folder = Path(root).expanduser() / "svhn"
    path = folder / "test_32x32.mat"
    if _md5_ok(path, SVHN_TEST_MD5):
        return path
    url = SVHN_URL.format(split="test")
    _fetch("SVHN", url, path, lambda: _download_file(url, folder, path.name, SVHN_TEST_MD5))
    verify_md5(path, SVHN_TEST_MD5)
    return path


def _download_idx(root: Path | str, name: str, read: Callable) -> Path:
    """MNIST-style: torchvision's downloader writes ``root/<name>/raw``; we verify by parsing."""
    root = Path(root).expanduser()
    folder = root / name / "raw"
    try:
        read(root, train=True)
        read(root, train=False)
        return folder
    except DatasetError:
        pass
    # train=False: the constructor fetches all four files, then loads only the small split
    _fetch(name, f"torchvision's {name} mirrors", folder,
           lambda: _torchvision_dataset(name)(str(root), train=False, download=True))
    # torchvision keeps files that exist, damaged or not: reading them names any damaged one
    read(root, train=True)
    read(root, train=False)
    return folder


def download_mnist(root: Path | str) -> Path:
    """MNIST idx files into ``root/MNIST/raw`` (torchvision's downloader); returns that folder."""
    return _download_idx(root, "MNIST", read_mnist)


def download_fashion_mnist(root: Path | str) -> Path:
    """FashionMNIST idx files into ``root/FashionMNIST/raw``; returns that folder."""
    return _download_idx(root, "FashionMNIST", read_fashion_mnist)


def download_cifar10c(root: Path | str) -> Path:
    """CIFAR-10-C (2.9 GB tar from Zenodo) into ``root/CIFAR-10-C``; returns that folder."""
    root = Path(root).expanduser()
    folder = root / "CIFAR-10-C"
    expected = cifar10c_shapes(root)  # all 19 corruptions, 5 blocks of the 10,000 test images each
    if _first_bad(expected) is None:
        return folder
    _fetch("CIFAR-10-C", CIFAR10C_URL, folder,
           lambda: _download_archive(CIFAR10C_URL, root, "CIFAR-10-C.tar", CIFAR10C_MD5))
    check_npy_files(expected, "CIFAR-10-C")
    return folder


def download_cifar100c(root: Path | str) -> Path:
    """CIFAR-100-C (2.9 GB tar from Zenodo) into ``root/CIFAR-100-C``; returns that folder."""
    root = Path(root).expanduser()
    folder = root / "CIFAR-100-C"
    expected = cifar10c_shapes(root, dataset="CIFAR-100-C")  # the same 19 corruptions × 5 blocks of 10,000
    if _first_bad(expected) is None:
        return folder
    _fetch("CIFAR-100-C", CIFAR100C_URL, folder,
           lambda: _download_archive(CIFAR100C_URL, root, "CIFAR-100-C.tar", CIFAR100C_MD5))
    check_npy_files(expected, "CIFAR-100-C")
    return folder


def download_mnist_c(root: Path | str) -> Path:
    """MNIST-C (zip from Zenodo) into ``root/mnist_c/<corruption>/``; returns ``root/mnist_c``."""
    root = Path(root).expanduser()
    folder = root / "mnist_c"
    expected = mnist_c_shapes(root)  # all 15 corruptions
    if _first_bad(expected) is None:
        return folder
    _fetch("MNIST-C", MNIST_C_URL, folder,
           lambda: _download_archive(MNIST_C_URL, root, "mnist_c.zip", MNIST_C_MD5))
    check_npy_files(expected, "MNIST-C")
    return folder
