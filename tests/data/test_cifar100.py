"""CIFAR100DataModule on tiny native-format files, and the OOD sets (near / far) both CIFAR datamodules choose."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble_lab.data import CIFAR10DataModule, CIFAR100DataModule, CIFARDataModule
from ensemble_lab.data import download as dl
from ensemble_lab.data.readers import CIFAR10C_CORRUPTIONS, read_cifar10, read_cifar10c, read_cifar100
from ensemble_lab.errors import ConfigError, DatasetError
from tests.data import paper_fixtures as fx
from tests.data.native_formats import random_images, write_cifar100

CORRUPTIONS = ("fog", "snow")


def cifar100(root: Path, **kwargs) -> CIFAR100DataModule:
    return CIFAR100DataModule(data_dir=str(root), val_size=fx.VAL_SIZE, corruptions=list(CORRUPTIONS), **kwargs)


def test_cifar100_shares_the_cifar_base_and_knows_its_sets_without_files(tmp_path):
    dm = CIFAR100DataModule(data_dir=str(tmp_path / "nothing"), severities=[1, 5], per_corruption=True, corruptions=["fog"])
    assert isinstance(dm, CIFARDataModule) and isinstance(CIFAR10DataModule(), CIFARDataModule)
    assert (dm.num_classes, dm.input_shape) == (100, (3, 32, 32))
    assert dm.test_set_roles == {
        "cifar100": "id", "cifar100c": "shift", "cifar100c_fog_1": "shift", "cifar100c_fog_5": "shift", "svhn": "ood", "cifar10": "ood",
    }  # fmt: skip
    assert dm.test_set_details == {
        "cifar100c_fog_1": {"corrupted": "cifar100c", "corruption": "fog", "severity": 1},
        "cifar100c_fog_5": {"corrupted": "cifar100c", "corruption": "fog", "severity": 5},
        "svhn": {"ood_kind": "far"},
        "cifar10": {"ood_kind": "near"},
    }
    # CIFAR-10's default stays [svhn] whatever is on disk; CIFAR-100 is a near OOD set on request
    assert CIFAR10DataModule(data_dir=str(tmp_path)).test_set_roles == {"cifar10": "id", "cifar10c": "shift", "svhn": "ood"}
    ten = CIFAR10DataModule(data_dir=str(tmp_path), ood_sets=["svhn", "cifar100"])
    assert ten.test_set_details == {"svhn": {"ood_kind": "far"}, "cifar100": {"ood_kind": "near"}}


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (CIFAR10DataModule, {"ood_sets": ["cifar10"]}, "unknown OOD set 'cifar10'; choose from svhn, cifar100"),
        (CIFAR100DataModule, {"ood_sets": ["imagenet"]}, "unknown OOD set 'imagenet'"),
        (CIFAR100DataModule, {"ood_sets": []}, "at least one"),
        (CIFAR100DataModule, {"corruptions": ["fogg"]}, "unknown CIFAR-100-C corruption 'fogg'"),
        (CIFAR100DataModule, {"severities": [6]}, "unknown severity"),
    ],
)
def test_bad_options_are_one_line_config_errors(tmp_path, cls, kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        cls(data_dir=str(tmp_path), **kwargs)
    assert "\n" not in str(err.value)


def test_cifar100_reads_its_native_files(tmp_path):
    fx.write_cifar100_benchmark(tmp_path, CORRUPTIONS)
    dm = cifar100(tmp_path, severities=[2, 4], per_corruption=True)
    dm.prepare_data()
    dm.setup("fit")
    x, y = read_cifar100(tmp_path, train=True)
    assert y.max() > 9 and y.max() <= 99  # fine labels, not the coarse 20 or CIFAR-10's 10
    assert dm.train_set.images.shape == (fx.CIFAR_TRAIN - fx.VAL_SIZE, 3, 32, 32)
    # train + validation are the file's images, split without loss
    together = torch.cat([dm.train_set.labels, dm.val_set.labels]).sort().values
    assert torch.equal(together, torch.from_numpy(np.sort(y)))
    dm.setup("test")
    assert list(dm.test_set_roles) == ["cifar100", "cifar100c", *dm.corruption_set_names(), "svhn", "cifar10"]
    test_x, test_y = read_cifar100(tmp_path, train=False)
    np.testing.assert_array_equal(dm.test_sets["cifar100"].images.numpy(), test_x)
    np.testing.assert_array_equal(dm.test_sets["cifar100"].labels.numpy(), test_y)
    for corruption in CORRUPTIONS:
        for severity in (2, 4):
            part = dm.test_sets[f"cifar100c_{corruption}_{severity}"]
            cx, cy = read_cifar10c(tmp_path, corruption, [severity], block_size=fx.CIFAR_TEST, dataset="CIFAR-100-C")
            np.testing.assert_array_equal(part.images.numpy(), cx)
            np.testing.assert_array_equal(part.labels.numpy(), test_y)  # CIFAR-100-C repeats the test labels
            assert (part.images[:, 0, 0, 0] == severity).all()  # the fixture's stamp
            assert (part.images[:, 1, 0, 0] == CIFAR10C_CORRUPTIONS.index(corruption) + 1).all()
    # CIFAR-10 as the near OOD set: its test images, labels already in range
    np.testing.assert_array_equal(dm.test_sets["cifar10"].images.numpy(), read_cifar10(tmp_path, train=False)[0])
    assert len(dm.test_sets["svhn"].labels) == fx.SVHN_TEST


def test_cifar100_normalises_with_its_training_statistics(tmp_path):
    dm = CIFAR100DataModule(data_dir=str(tmp_path), augment=True)
    images = torch.from_numpy(random_images(3, 3, 32, seed=7))
    expected = (images.numpy() / 255.0 - np.array([0.5071, 0.4865, 0.4409])[:, None, None]) / np.array([0.2673, 0.2564, 0.2762])[:, None, None]
    np.testing.assert_allclose(dm.preprocess(images, train=False).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_cifar100_as_near_ood_of_cifar10_folds_labels_into_range(tmp_path):
    fx.write_cifar100_benchmark(tmp_path, CORRUPTIONS)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_size=fx.VAL_SIZE, corruptions=["fog"], ood_sets=["svhn", "cifar100"])
    dm.prepare_data()
    dm.setup("test")
    x, y = read_cifar100(tmp_path, train=False)
    np.testing.assert_array_equal(dm.test_sets["cifar100"].images.numpy(), x)
    np.testing.assert_array_equal(dm.test_sets["cifar100"].labels.numpy(), y % 10)


def test_missing_or_damaged_cifar100_files_are_one_line_with_the_download_flag(tmp_path):
    fx.write_cifar100_benchmark(tmp_path, CORRUPTIONS)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DatasetError) as err:
        cifar100(tmp_path).prepare_data()
    message = str(err.value)
    assert "CIFAR-100 file 'meta' not found" in message and str(tmp_path / "cifar-100-python" / "meta") in message
    assert "--data.download true" in message and "cifar-100-python.tar.gz" in message and "\n" not in message
    (tmp_path / "CIFAR-100-C" / "snow.npy").unlink()
    with pytest.raises(DatasetError, match=r"CIFAR-100-C file 'snow.npy' not found.*CIFAR-100-C.tar"):
        cifar100(tmp_path).setup("test")
    # a label outside 0..99 names the file
    x = random_images(4, 3, 32)
    write_cifar100(tmp_path / "bad", x, np.array([0, 5, 99, 100]), x, np.array([1, 2, 3, 4]))
    with pytest.raises(DatasetError, match=r"'train' .* \(labels range over 0..100, expected 0..99\)"):
        read_cifar100(tmp_path / "bad", train=True)


def test_download_true_fetches_cifar100_its_c_copy_and_the_ood_sets(tmp_path, monkeypatch):
    calls = []
    for name in ("download_cifar10", "download_cifar100", "download_cifar100c", "download_svhn_test", "download_cifar10c"):
        monkeypatch.setattr(dl, name, lambda root, name=name: calls.append(name))
    fx.write_cifar100_benchmark(tmp_path, CORRUPTIONS)
    cifar100(tmp_path, download=True).prepare_data()
    assert calls == ["download_cifar100", "download_cifar100c", "download_svhn_test", "download_cifar10"]
    CIFAR10DataModule(data_dir=str(tmp_path), corruptions=["fog"], ood_sets=["cifar100"], download=True).prepare_data()
    assert calls[4:] == ["download_cifar10", "download_cifar10c", "download_cifar100"]
