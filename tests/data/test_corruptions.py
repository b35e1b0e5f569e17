"""The .npy corruption readers (CIFAR-10-C, MNIST-C) on tiny native-format fixtures: slicing and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ensemble_lab.data import corruptions
from ensemble_lab.errors import ConfigError, DatasetError
from tests.data.native_formats import write_cifar10c, write_mnist_c


# --------------------------------------------------------------------------- CIFAR-10-C
def test_cifar10c_severity_slicing(tmp_path: Path) -> None:
    written = write_cifar10c(tmp_path, ["fog", "snow"], labels=np.array([3, 1, 4]))
    full_x, full_y = written["snow"]
    for severities in ([5], [1, 3], [4, 2]):
        images, labels = corruptions.read_cifar10c(tmp_path, "snow", severities, block_size=3)
        assert images.shape == (3 * len(severities), 3, 32, 32)
        np.testing.assert_array_equal(images[:, 0, 0, 0], np.repeat(severities, 3))  # stamp, channel R
        np.testing.assert_array_equal(images[:, 1, 0, 0], corruptions.CIFAR10C_CORRUPTIONS.index("snow") + 1)
        np.testing.assert_array_equal(images[:, 2, 0, 0], np.tile([0, 1, 2], len(severities)))
        expected = np.concatenate([full_x[(s - 1) * 3 : s * 3] for s in severities])
        np.testing.assert_array_equal(images, expected)
        np.testing.assert_array_equal(labels, np.tile([3, 1, 4], len(severities)))
        assert labels.dtype == np.int64 and np.array_equal(full_y[:3], [3, 1, 4])


def test_cifar10c_shapes_are_stated_once(tmp_path: Path) -> None:
    """Every CIFAR-10-C check (reader, datamodule, downloader) asks corruptions.cifar10c_shapes."""
    folder = tmp_path / "CIFAR-10-C"
    assert corruptions.cifar10c_shapes(tmp_path, ["fog", "snow"], block_size=3) == {
        folder / "fog.npy": (15, 32, 32, 3), folder / "snow.npy": (15, 32, 32, 3), folder / "labels.npy": (15,),
    }
    real = corruptions.cifar10c_shapes(tmp_path)  # the real files: 19 corruptions × 5 severities × 10,000 test images
    assert len(real) == 20 and real[folder / "labels.npy"] == (50_000,)
    assert corruptions.CIFAR10_TEST_SIZE == 10_000


def test_cifar10c_bad_arguments(tmp_path: Path) -> None:
    write_cifar10c(tmp_path, ["fog"], n_per_severity=2)
    with pytest.raises(ConfigError, match="zoom_blur"):  # lists the allowed names
        corruptions.read_cifar10c(tmp_path, "fogg", [5], block_size=2)
    for severities in ([0], [6], []):
        with pytest.raises(ConfigError, match="1..5"):
            corruptions.read_cifar10c(tmp_path, "fog", severities, block_size=2)
    with pytest.raises(DatasetError, match="5 severity blocks of 3"):  # 3 does not divide 10 rows
        corruptions.read_cifar10c(tmp_path, "fog", [1], block_size=3)
    with pytest.raises(DatasetError) as err:
        corruptions.read_cifar10c(tmp_path, "snow", [1], block_size=2)
    assert str(tmp_path / "CIFAR-10-C" / "snow.npy") in str(err.value)
    assert "zenodo.org/records/2535967" in str(err.value)


def test_cifar10c_damaged_arrays(tmp_path: Path) -> None:
    write_cifar10c(tmp_path, ["fog"], n_per_severity=2)
    folder = tmp_path / "CIFAR-10-C"
    np.save(folder / "fog.npy", np.zeros((10, 32, 32), np.uint8))
    with pytest.raises(DatasetError, match=r"expected uint8 \(N, 32, 32, 3\)"):
        corruptions.read_cifar10c(tmp_path, "fog", [1], block_size=2)
    np.save(folder / "fog.npy", np.zeros((10, 32, 32, 3), np.uint8))
    np.save(folder / "labels.npy", np.zeros(9, np.uint8))
    with pytest.raises(DatasetError, match="expected 10 integers"):
        corruptions.read_cifar10c(tmp_path, "fog", [1], block_size=2)
    (folder / "fog.npy").write_bytes((folder / "fog.npy").read_bytes()[:1000])  # truncated
    with pytest.raises(DatasetError, match="not a readable .npy") as err:
        corruptions.read_cifar10c(tmp_path, "fog", [1], block_size=2)
    assert str(folder / "fog.npy") in str(err.value)


# --------------------------------------------------------------------------- MNIST-C
def test_mnist_c_round_trip_and_errors(tmp_path: Path) -> None:
    written = write_mnist_c(tmp_path, ["fog", "zigzag"], n=6)
    images, labels = corruptions.read_mnist_c(tmp_path, "zigzag")
    np.testing.assert_array_equal(images, written["zigzag"][0])
    np.testing.assert_array_equal(labels, np.arange(6) % 10)
    assert images.shape == (6, 1, 28, 28) and (images[:, 0, 0, 0] == 15).all()
    assert len(corruptions.MNIST_C_CORRUPTIONS) == 15
    with pytest.raises(ConfigError, match="canny_edges"):
        corruptions.read_mnist_c(tmp_path, "identity")
    with pytest.raises(DatasetError) as err:
        corruptions.read_mnist_c(tmp_path, "rotate")
    assert str(tmp_path / "mnist_c" / "rotate" / "test_images.npy") in str(err.value)
    assert "zenodo.org/records/3239543" in str(err.value)
    np.save(tmp_path / "mnist_c" / "fog" / "test_images.npy", np.zeros((6, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match="damaged"):
        corruptions.read_mnist_c(tmp_path, "fog")
