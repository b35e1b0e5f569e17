"""CIFAR10DataModule and MNISTDataModule on tiny native-format fixtures: names, roles, contents, errors."""

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble_lab.data import CIFAR10DataModule, MNISTDataModule
from ensemble_lab.data import download as dl
from ensemble_lab.data.augment import rotate
from ensemble_lab.data.readers import (
    CIFAR10C_CORRUPTIONS,
    MNIST_C_CORRUPTIONS,
    read_cifar10c,
    read_mnist_c,
)
from ensemble_lab.errors import ConfigError, DatasetError
from tests.data import paper_fixtures as fx
from tests.data.native_formats import write_cifar10c


def cifar(root: Path, **kwargs) -> CIFAR10DataModule:
    return CIFAR10DataModule(data_dir=str(root), val_size=fx.VAL_SIZE, **kwargs)


def mnist(root: Path, **kwargs) -> MNISTDataModule:
    return MNISTDataModule(data_dir=str(root), val_size=fx.VAL_SIZE, **kwargs)


# --------------------------------------------------------------------------- names and roles, no data needed
def test_cifar10_roles_are_known_without_any_file(tmp_path):
    dm = CIFAR10DataModule(data_dir=str(tmp_path / "nothing here"))
    assert dm.test_set_roles == {"cifar10": "id", "cifar10c": "shift", "svhn": "ood"}
    assert dm.corruptions == list(CIFAR10C_CORRUPTIONS) and dm.severities == [5]
    assert (dm.num_classes, dm.input_shape, dm.batch_size, dm.val_size) == (10, (3, 32, 32), 128, 5000)


def test_cifar10_per_corruption_sets(tmp_path):
    dm = CIFAR10DataModule(data_dir=str(tmp_path), corruptions=["fog", "snow"], severities=[3, 5], per_corruption=True)
    assert dm.test_set_roles == {
        "cifar10": "id", "cifar10c": "shift", "svhn": "ood",
        "cifar10c_fog_3": "shift", "cifar10c_fog_5": "shift", "cifar10c_snow_3": "shift", "cifar10c_snow_5": "shift",
    }
    assert len(CIFAR10DataModule(data_dir=str(tmp_path), per_corruption=True).test_set_roles) == 3 + 19


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"corruptions": ["fogg"]}, "unknown CIFAR-10-C corruption 'fogg'; choose from brightness"),
        ({"corruptions": []}, "at least one"),
        ({"corruptions": ["fog", "fog"]}, "'fog' twice"),
        ({"severities": [0]}, "unknown severity"),
        ({"severities": [5, 6]}, "unknown severity"),
        ({"severities": []}, "at least one"),
    ],
)
def test_cifar10_bad_options_fail_at_construction(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CIFAR10DataModule(data_dir=str(tmp_path), **kwargs)


def test_cifar10c_block_size_is_no_option(tmp_path):
    """CIFAR-10-C repeats the CIFAR-10 test set once per severity: its block is that set's length."""
    assert "cifar10c_block_size" not in inspect.signature(CIFAR10DataModule.__init__).parameters
    with pytest.raises(TypeError):
        CIFAR10DataModule(data_dir=str(tmp_path), cifar10c_block_size=2)


def test_mnist_roles_and_options(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path / "nothing here"))
    assert dm.test_set_roles == {"mnist": "id", "mnist_c": "shift", "rotated_mnist": "shift", "fashion_mnist": "ood"}
    assert dm.corruptions == list(MNIST_C_CORRUPTIONS) and dm.input_shape == (1, 28, 28)
    assert "mnist_c" not in MNISTDataModule(data_dir=str(tmp_path), mnist_c=False).test_set_roles
    with pytest.raises(ConfigError, match="unknown MNIST-C corruption 'snow'"):
        MNISTDataModule(data_dir=str(tmp_path), corruptions=["snow"])


# --------------------------------------------------------------------------- contents
def test_cifar10_splits_and_test_sets(tmp_path):
    fx.write_cifar_benchmark(tmp_path)
    dm = cifar(tmp_path, corruptions=["fog", "snow"], severities=[2, 5], per_corruption=True)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_set.images.shape == (fx.CIFAR_TRAIN - fx.VAL_SIZE, 3, 32, 32) and len(dm.val_set.labels) == fx.VAL_SIZE
    assert dm.train_set.images.dtype == torch.uint8 and dm.train_set.labels.dtype == torch.int64
    dm.setup("test")
    assert list(dm.test_sets) == list(dm.test_set_roles)
    assert len(dm.test_sets["cifar10"].labels) == fx.CIFAR_TEST and len(dm.test_sets["svhn"].labels) == fx.SVHN_TEST
    pooled = dm.test_sets["cifar10c"]
    assert pooled.images.shape == (2 * 2 * fx.CIFAR10C_BLOCK, 3, 32, 32)
    for corruption in ("fog", "snow"):
        for severity in (2, 5):
            part = dm.test_sets[f"cifar10c_{corruption}_{severity}"]
            x, y = read_cifar10c(tmp_path, corruption, [severity], block_size=fx.CIFAR10C_BLOCK)
            np.testing.assert_array_equal(part.images.numpy(), x)
            np.testing.assert_array_equal(part.labels.numpy(), y)
            assert (part.images[:, 0, 0, 0] == severity).all()  # the fixture's stamp: severity in R
            assert (part.images[:, 1, 0, 0] == CIFAR10C_CORRUPTIONS.index(corruption) + 1).all()
    # pooled = the per-corruption sets in order, corruption-major
    parts = [dm.test_sets[name].images for name in dm.corruption_set_names()]
    assert torch.equal(pooled.images, torch.cat(parts))


def test_cifar10c_block_follows_the_cifar10_test_set(tmp_path):
    """CIFAR-10-C files whose severity blocks are not the test set's length are refused before training."""
    fx.write_cifar_benchmark(tmp_path)
    assert fx.CIFAR10C_BLOCK == fx.CIFAR_TEST  # the fixture is laid out as the real files are
    labels = np.arange(fx.CIFAR_TEST + 1) % 10  # one image per severity too many
    write_cifar10c(tmp_path, ["fog"], labels=labels)
    with pytest.raises(DatasetError) as err:
        cifar(tmp_path, corruptions=["fog"]).prepare_data()
    rows = 5 * fx.CIFAR_TEST
    assert str(tmp_path / "CIFAR-10-C" / "fog.npy") in str(err.value)
    assert f"expected ({rows}, 32, 32, 3)" in str(err.value), err.value
    with pytest.raises(DatasetError, match=f"5 severity blocks of {fx.CIFAR_TEST}"):
        cifar(tmp_path, corruptions=["fog"]).setup("test")


def test_mnist_splits_and_test_sets(tmp_path):
    fx.write_mnist_benchmark(tmp_path)
    dm = mnist(tmp_path, corruptions=["fog", "zigzag"], rotation_degrees=90)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_set.images.shape == (fx.MNIST_TRAIN - fx.VAL_SIZE, 1, 28, 28)
    dm.setup("test")
    sets = dm.test_sets
    assert list(sets) == list(dm.test_set_roles)
    assert len(sets["fashion_mnist"].labels) == fx.FASHION_TEST
    expected = np.concatenate([read_mnist_c(tmp_path, c)[0] for c in ("fog", "zigzag")])
    np.testing.assert_array_equal(sets["mnist_c"].images.numpy(), expected)
    # rotated_mnist: the test digits turned 90° counter-clockwise, exactly what rot90 does
    assert torch.equal(sets["rotated_mnist"].images, torch.rot90(sets["mnist"].images, 1, dims=(2, 3)))
    assert torch.equal(sets["rotated_mnist"].labels, sets["mnist"].labels)


def test_rotate_is_deterministic_and_keeps_zero_angle():
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(rotate(images, 0), images)
    assert torch.equal(rotate(images, 30), rotate(images, 30)) and not torch.equal(rotate(images, 30), images)


def test_rotate_takes_one_angle_per_image_and_keeps_float_images_float():
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    angles = torch.tensor([0.0, 90.0, -30.0, 12.5])
    per_image = rotate(images, angles)
    for i, angle in enumerate(angles.tolist()):
        assert torch.equal(per_image[i : i + 1], rotate(images[i : i + 1], angle))
    assert torch.equal(per_image[1], torch.rot90(images[1], 1, dims=(1, 2)))  # counter-clockwise as displayed
    as_float = rotate(images.float() / 255, angles)
    assert as_float.dtype == torch.float32
    assert torch.equal((as_float * 255).round().clamp(0, 255).to(torch.uint8), per_image)


def test_one_home_for_rotation_and_cifar10c_shapes():
    """Rotation is written once (augment.rotate) and CIFAR-10-C's file shapes are stated once (corruptions;
    readers.py checks SVHN's (32, 32, 3, N) array)."""
    package = Path(__file__).resolve().parents[2] / "ensemble_lab" / "data"
    sources = {p.name: p.read_text() for p in package.glob("*.py")}
    assert [name for name, text in sources.items() if "affine_grid" in text] == ["augment.py"]
    assert sorted(name for name, text in sources.items() if "32, 32, 3)" in text) == ["corruptions.py", "readers.py"]


# --------------------------------------------------------------------------- missing files, download
def test_cifar10_missing_file_fails_before_training(tmp_path):
    fx.write_cifar_benchmark(tmp_path)
    (tmp_path / "svhn" / "test_32x32.mat").unlink()
    dm = cifar(tmp_path)
    with pytest.raises(DatasetError) as err:
        dm.prepare_data()  # runs before fit: a missing test set must not surface after 75 epochs
    assert str(tmp_path / "svhn" / "test_32x32.mat") in str(err.value) and "--data.download true" in str(err.value)
    (tmp_path / "CIFAR-10-C" / "zoom_blur.npy").unlink()
    with pytest.raises(DatasetError, match="zoom_blur.npy"):
        cifar(tmp_path).setup("test")


def test_truncated_or_misshapen_shift_files_fail_before_training(tmp_path):
    fx.write_cifar_benchmark(tmp_path / "cifar")
    fog = tmp_path / "cifar" / "CIFAR-10-C" / "fog.npy"
    fog.write_bytes(fog.read_bytes()[:-100])  # an interrupted copy
    with pytest.raises(DatasetError) as err:
        cifar(tmp_path / "cifar").prepare_data()
    assert str(fog) in str(err.value)
    assert "not a readable .npy array" in str(err.value)
    cifar(tmp_path / "cifar", corruptions=["snow"]).prepare_data()  # only the chosen corruptions are read

    fx.write_mnist_benchmark(tmp_path / "mnist")
    labels = tmp_path / "mnist" / "mnist_c" / "fog" / "test_labels.npy"
    np.save(labels, np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(DatasetError) as err:
        mnist(tmp_path / "mnist").prepare_data()
    assert str(labels) in str(err.value) and "array shaped (3, 2), expected (N,)" in str(err.value)


def test_mnist_missing_mnist_c_can_be_turned_off(tmp_path):
    fx.write_mnist_benchmark(tmp_path)
    (tmp_path / "mnist_c" / "fog" / "test_images.npy").unlink()
    with pytest.raises(DatasetError) as err:
        mnist(tmp_path).prepare_data()
    assert str(tmp_path / "mnist_c" / "fog" / "test_images.npy") in str(err.value)
    assert "--data.download true" in str(err.value)
    dm = mnist(tmp_path, mnist_c=False)
    dm.prepare_data()
    dm.setup("test")
    assert set(dm.test_sets) == {"mnist", "rotated_mnist", "fashion_mnist"}


def test_download_true_fetches_every_set(tmp_path, monkeypatch):
    calls = []
    for name in ("download_cifar10", "download_cifar10c", "download_svhn_test", "download_mnist",
                 "download_fashion_mnist", "download_mnist_c"):
        monkeypatch.setattr(dl, name, lambda root, name=name: calls.append((name, Path(root))))
    fx.write_cifar_benchmark(tmp_path)
    fx.write_mnist_benchmark(tmp_path)
    cifar(tmp_path, download=True).prepare_data()
    mnist(tmp_path, download=True, mnist_c=False).prepare_data()
    assert calls == [(n, tmp_path) for n in ("download_cifar10", "download_cifar10c", "download_svhn_test",
                                             "download_mnist", "download_fashion_mnist")]
    cifar(tmp_path).prepare_data()  # download false: nothing fetched
    assert len(calls) == 5


def test_mnist_per_corruption_sets_and_their_details(tmp_path):
    """MNIST-C is published at one severity: each corruption is one set, its severity recorded as null."""
    fx.write_mnist_benchmark(tmp_path)
    dm = mnist(tmp_path, corruptions=["fog", "zigzag"], per_corruption=True)
    assert list(dm.test_set_roles) == ["mnist", "mnist_c", "mnist_c_fog", "mnist_c_zigzag", "rotated_mnist", "fashion_mnist"]
    assert dm.test_set_details == {
        "mnist_c_fog": {"corrupted": "mnist_c", "corruption": "fog", "severity": None},
        "mnist_c_zigzag": {"corrupted": "mnist_c", "corruption": "zigzag", "severity": None},
        "fashion_mnist": {"ood_kind": "far"},
    }
    dm.prepare_data()
    dm.setup("test")
    for corruption in ("fog", "zigzag"):
        x, y = read_mnist_c(tmp_path, corruption)
        np.testing.assert_array_equal(dm.test_sets[f"mnist_c_{corruption}"].images.numpy(), x)
        np.testing.assert_array_equal(dm.test_sets[f"mnist_c_{corruption}"].labels.numpy(), y)
    assert "mnist_c_fog" not in mnist(tmp_path, mnist_c=False, per_corruption=True).test_set_roles
