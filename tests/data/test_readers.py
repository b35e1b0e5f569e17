"""Readers on tiny native-format fixtures: exact round trips, slicing, and the errors users see."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from ensemble_lab.data import corruptions, download, readers
from ensemble_lab.errors import DatasetError
from tests.data.native_formats import (
    random_images,
    random_labels,
    write_cifar10,
    write_cifar10c,
    write_fashion_mnist,
    write_idx,
    write_mnist,
    write_mnist_c,
    write_svhn_test,
)


# --------------------------------------------------------------------------- CIFAR-10
def test_cifar10_round_trip(tmp_path: Path) -> None:
    x, y = random_images(23, 3, 32), random_labels(23)
    write_cifar10(tmp_path, x, y, x[:7], y[:7])
    train, test = readers.read_cifar10(tmp_path, train=True), readers.read_cifar10(tmp_path, train=False)
    np.testing.assert_array_equal(train[0], x)
    np.testing.assert_array_equal(train[1], y)
    np.testing.assert_array_equal(test[0], x[:7])
    assert train[0].dtype == np.uint8 and train[1].dtype == np.int64


def test_cifar10_rows_are_rgb_planes(tmp_path: Path) -> None:
    # checked against the raw pickle, so a writer and reader wrong the same way cannot both pass
    x = np.zeros((1, 3, 32, 32), np.uint8)
    x[0, 0], x[0, 1], x[0, 2] = 10, 20, 30  # R, G, B
    x[0, 0, 0, 1] = 99  # row 0, column 1 of the red plane
    folder = write_cifar10(tmp_path, x, [3], x, [3], batches=1)
    with open(folder / "test_batch", "rb") as f:
        row = pickle.load(f, encoding="bytes")[b"data"][0]
    assert row[1] == 99 and row[1024] == 20 and row[2048] == 30
    images, _ = readers.read_cifar10(tmp_path, train=False)
    assert images[0, 0, 0, 1] == 99 and images[0, 1, 5, 5] == 20 and images[0, 2, 5, 5] == 30


def test_cifar10_missing_batch_names_path_and_flag(tmp_path: Path) -> None:
    x, y = random_images(6, 3, 32), random_labels(6)
    folder = write_cifar10(tmp_path, x, y, x, y, batches=3)
    with pytest.raises(DatasetError) as err:
        readers.read_cifar10(tmp_path, train=True)
    assert str(folder / "data_batch_4") in str(err.value)
    assert "--data.download true" in str(err.value)


def test_cifar10_unpicklable_and_unsafe_batches(tmp_path: Path) -> None:
    x, y = random_images(4, 3, 32), random_labels(4)
    folder = write_cifar10(tmp_path, x, y, x, y)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="damaged") as err:
        readers.read_cifar10(tmp_path, train=False)
    assert str(folder / "test_batch") in str(err.value)
    # a pickle that names arbitrary callables is refused, not executed
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Path("x")}, protocol=2))
    with pytest.raises(DatasetError, match="refusing"):
        readers.read_cifar10(tmp_path, train=False)


def test_cifar10_python2_numpy_module_names(tmp_path: Path) -> None:
    # the real batches were pickled by Python 2's numpy, whose arrays name numpy.core.multiarray
    x, y = random_images(2, 3, 32), random_labels(2)
    folder = write_cifar10(tmp_path, x, y, x, y)
    raw = (folder / "test_batch").read_bytes()
    old = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")  # numpy >= 2 writes _core
    assert b"cnumpy.core.multiarray\n_reconstruct" in old
    (folder / "test_batch").write_bytes(old)
    np.testing.assert_array_equal(readers.read_cifar10(tmp_path, train=False)[0], x)


def test_cifar10_wrong_row_length(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError, match="3072"):
        readers.read_cifar10(tmp_path, train=False)


# --------------------------------------------------------------------------- SVHN
def test_svhn_round_trip_and_label_10_is_digit_0(tmp_path: Path) -> None:
    x, y = random_images(12, 3, 32), np.arange(12) % 10
    path = write_svhn_test(tmp_path, x, y)
    raw = scipy.io.loadmat(path)
    assert raw["X"].shape == (32, 32, 3, 12) and raw["y"].shape == (12, 1)
    assert raw["y"][0, 0] == 10 and raw["y"][1, 0] == 1
    np.testing.assert_array_equal(raw["X"][:, :, 2, 5], x[5, 2])  # (H, W, C, N) on disk
    images, labels = readers.read_svhn(tmp_path)
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(labels, y)
    assert images.flags.c_contiguous and labels.dtype == np.int64


def test_svhn_missing_and_damaged(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        readers.read_svhn(tmp_path)
    assert str(tmp_path / "svhn" / "test_32x32.mat") in str(err.value)
    path = write_svhn_test(tmp_path, random_images(3, 3, 32), [1, 2, 3])
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DatasetError, match="damaged"):
        readers.read_svhn(tmp_path)


# --------------------------------------------------------------------------- idx (MNIST)
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    x, y = random_images(9, 1, 28), random_labels(9)
    images = readers.read_idx_images(write_idx(tmp_path / "img", x[:, 0], gz))
    labels = readers.read_idx_labels(write_idx(tmp_path / "lab", y, gz))
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(labels, y)
    assert images.flags.writeable and labels.dtype == np.int64


def test_idx_header_is_big_endian_magic(tmp_path: Path) -> None:
    raw = write_idx(tmp_path / "img", np.zeros((2, 28, 28), np.uint8)).read_bytes()
    assert raw[:16] == bytes.fromhex("00000803" "00000002" "0000001c" "0000001c")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_and_fashion_mnist_layout(tmp_path: Path, gz: bool) -> None:
    x, y = random_images(10, 1, 28), random_labels(10)
    folder = write_mnist(tmp_path, x, y, x[:4], y[:4], gz=gz)
    assert (folder / ("t10k-labels-idx1-ubyte" + (".gz" if gz else ""))).is_file()
    np.testing.assert_array_equal(readers.read_mnist(tmp_path, train=True)[0], x)
    np.testing.assert_array_equal(readers.read_mnist(tmp_path, train=False)[1], y[:4])
    write_fashion_mnist(tmp_path, x[::-1], y[::-1], x, y, gz=gz)
    images, labels = readers.read_fashion_mnist(tmp_path, train=True)
    np.testing.assert_array_equal(images, x[::-1])
    np.testing.assert_array_equal(labels, y[::-1])


def test_idx_truncated_and_bad_magic(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "img", random_images(3, 1, 28)[:, 0])
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetError, match="expected") as err:
        readers.read_idx_images(path)
    assert str(path) in str(err.value)
    labels = write_idx(tmp_path / "lab", np.arange(3))
    with pytest.raises(DatasetError, match="magic number 0x00000801"):
        readers.read_idx_images(labels)  # a labels file where images belong
    gz = write_idx(tmp_path / "img.gz", random_images(3, 1, 28)[:, 0], gz=True)
    gz.write_bytes(gz.read_bytes()[:-20])
    with pytest.raises(DatasetError, match="decompress"):
        readers.read_idx_images(gz)


def test_mnist_missing_and_count_mismatch(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        readers.read_fashion_mnist(tmp_path, train=False)
    assert str(tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte") in str(err.value)
    x, y = random_images(5, 1, 28), random_labels(5)
    folder = write_mnist(tmp_path, x, y, x, y)
    write_idx(folder / "t10k-labels-idx1-ubyte", y[:3])
    with pytest.raises(DatasetError, match="3 labels for 5 images"):
        readers.read_mnist(tmp_path, train=False)


# --------------------------------------------------------------------------- download (never the network)
def test_verify_md5(tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(b"hello")
    download.verify_md5(path, "5d41402abc4b2a76b9719d911017c592")
    with pytest.raises(DatasetError, match="delete it and download again") as err:
        download.verify_md5(path, "0" * 32)
    assert str(path) in str(err.value)
    with pytest.raises(DatasetError, match="not found"):
        download.verify_md5(tmp_path / "absent", "0" * 32)


def _fake_archive_download(monkeypatch: pytest.MonkeyPatch, effect=lambda: None) -> list:
    """Replace the archive download with ``effect`` (standing in for the extraction); record calls."""
    calls: list = []

    def fake(url: str, root: Path, filename: str, md5: str) -> None:
        calls.append((url, filename, md5))
        effect()

    monkeypatch.setattr(download, "_download_archive", fake)
    return calls


def test_download_cifar10_skips_verified_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = random_images(5, 3, 32), random_labels(5)
    folder = write_cifar10(tmp_path, x, y, x, y)
    # the fixture's own checksums stand in for the real ones
    fixture_md5 = {name: download.file_md5(folder / name) for name in download.CIFAR10_FILE_MD5}
    monkeypatch.setattr(download, "CIFAR10_FILE_MD5", fixture_md5)
    calls = _fake_archive_download(monkeypatch)
    assert download.download_cifar10(tmp_path) == folder and calls == []
    (folder / "data_batch_2").write_bytes(b"damaged")
    calls = _fake_archive_download(monkeypatch, lambda: write_cifar10(tmp_path, x, y, x, y))
    download.download_cifar10(tmp_path)
    assert calls == [(readers.CIFAR10_URL, "cifar-10-python.tar.gz", download.CIFAR10_MD5)]


def test_download_mnist_c_skips_present_and_fetches_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_mnist_c(tmp_path, n=3)
    calls = _fake_archive_download(monkeypatch)
    download.download_mnist_c(tmp_path)
    assert calls == []
    (tmp_path / "mnist_c" / "shear" / "test_labels.npy").unlink()
    calls = _fake_archive_download(monkeypatch, lambda: write_mnist_c(tmp_path, ["shear"], n=3))
    download.download_mnist_c(tmp_path)
    assert calls == [(readers.MNIST_C_URL, "mnist_c.zip", download.MNIST_C_MD5)]
    # a download that still leaves a file missing says which
    (tmp_path / "mnist_c" / "shear" / "test_labels.npy").unlink()
    _fake_archive_download(monkeypatch)
    with pytest.raises(DatasetError, match="test_labels.npy"):
        download.download_mnist_c(tmp_path)


def test_download_cifar10c_fetches_zenodo_tar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corruptions, "CIFAR10_TEST_SIZE", 2)  # tiny fixture blocks stand in for 10,000
    calls = _fake_archive_download(monkeypatch, lambda: write_cifar10c(tmp_path, n_per_severity=2))
    download.download_cifar10c(tmp_path)
    assert calls == [(readers.CIFAR10C_URL, "CIFAR-10-C.tar", download.CIFAR10C_MD5)]
    calls = _fake_archive_download(monkeypatch)
    download.download_cifar10c(tmp_path)
    assert calls == []


def test_download_failure_becomes_dataset_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline() -> None:
        raise OSError("network unreachable")

    _fake_archive_download(monkeypatch, offline)
    with pytest.raises(DatasetError, match="could not download CIFAR-10-C") as err:
        download.download_cifar10c(tmp_path)
    assert str(tmp_path / "CIFAR-10-C") in str(err.value)


def test_download_mnist_skips_readable_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = random_images(4, 1, 28), random_labels(4)
    write_mnist(tmp_path, x, y, x, y, gz=True)
    created: list[str] = []

    class FakeMNIST:  # stands in for torchvision's, whose constructor would download
        def __init__(self, root: str, train: bool, download: bool) -> None:
            created.append(root)
            write_mnist(root, x, y, x, y)

    monkeypatch.setattr(download, "_torchvision_dataset", lambda name: FakeMNIST)
    assert download.download_mnist(tmp_path) == tmp_path / "MNIST" / "raw" and created == []
    download.download_mnist(tmp_path / "fresh")
    assert created == [str(tmp_path / "fresh")]


def test_gzip_fixture_is_real_gzip(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "lab.gz", np.arange(4), gz=True)
    with gzip.open(path, "rb") as f:
        assert f.read()[:4] == bytes.fromhex("00000801")


# --------------------------------------------------------------------------- damage that used to escape as another error
def test_labels_outside_0_to_9_name_their_file(tmp_path: Path) -> None:
    """A label of 200 was read as data and failed later, in the loss, without naming the file."""
    x3, x28 = random_images(4, 3, 32), random_images(4, 1, 28)
    bad = np.array([3, 200, 1, 0])
    folder = write_cifar10(tmp_path / "c", x3, random_labels(4), x3, bad, batches=1)
    with pytest.raises(DatasetError, match=r"labels range over 0\.\.200, expected 0\.\.9") as err:
        readers.read_cifar10(tmp_path / "c", train=False)
    assert str(folder / "test_batch") in str(err.value)
    write_mnist(tmp_path / "m", x28, random_labels(4), x28, bad)
    with pytest.raises(DatasetError, match=r"0\.\.200, expected 0\.\.9") as err:
        readers.read_mnist(tmp_path / "m", train=False)
    assert "t10k-labels-idx1-ubyte" in str(err.value)
    write_cifar10c(tmp_path / "cc", ["fog"], labels=np.array([3, 1, 4]))
    np.save(tmp_path / "cc" / "CIFAR-10-C" / "labels.npy", np.array([3, 1, 4, 0, 0, 0, 0, 0, 0, 0, 11, 0, 0, 0, 0], np.uint8))
    with pytest.raises(DatasetError, match=r"labels\.npy.*0\.\.11, expected 0\.\.9"):
        readers.read_cifar10c(tmp_path / "cc", "fog", [1], block_size=3)
    write_mnist_c(tmp_path / "mc", ["fog"], n=4)
    np.save(tmp_path / "mc" / "mnist_c" / "fog" / "test_labels.npy", np.array([1, 2, 10, 3], np.uint8))
    with pytest.raises(DatasetError, match=r"1\.\.10, expected 0\.\.9"):
        readers.read_mnist_c(tmp_path / "mc", "fog")
    assert readers.read_mnist(tmp_path / "m", train=True)[1].max() <= 9  # good files still read


def test_a_damaged_deflate_stream_is_a_dataset_error(tmp_path: Path) -> None:
    """Bytes flipped inside a gzip (not cut off) raise zlib.error, which escaped both idx readers."""
    x, y = random_images(6, 1, 28), random_labels(6)
    folder = write_mnist(tmp_path, x, y, x, y, gz=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        raw = bytearray(gzip.compress(gzip.decompress((folder / name).read_bytes())))  # a 10-byte header, no file name
        raw[12:20] = b"\xff" * 8  # inside the deflate stream: 'invalid block type' or a bad distance
        (folder / name).write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="cannot decompress") as err:
        readers.read_mnist(tmp_path, train=False)
    assert "t10k-images-idx3-ubyte.gz" in str(err.value)
    with pytest.raises(DatasetError, match="cannot decompress"):
        readers.idx_split_size(tmp_path, "MNIST", train=False)


def test_an_empty_npy_is_named_not_an_eof_error(tmp_path: Path) -> None:
    """What an interrupted extraction or `touch` leaves: np.load raises EOFError on it."""
    write_mnist_c(tmp_path, ["fog"], n=4)
    empty = tmp_path / "mnist_c" / "fog" / "test_images.npy"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match="not a readable .npy array") as err:
        download.check_npy_files(readers.mnist_c_shapes(tmp_path, ["fog"]), "MNIST-C")
    assert str(empty) in str(err.value)
