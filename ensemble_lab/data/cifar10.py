"""CIFAR-10 with CIFAR-10-C as the shift set and SVHN (far; CIFAR-100 near, as an option) as OOD sets: the paper's main benchmark."""

from pathlib import Path

import numpy as np

from ensemble_lab.data import download as dl
from ensemble_lab.data.cifar import CIFARDataModule
from ensemble_lab.data.readers import read_cifar10


class CIFAR10DataModule(CIFARDataModule):
    """CIFAR-10 (docs/paper.md), read from its native files under ``data_dir``.

    Test sets: ``cifar10`` (id, the 10,000 test images), ``cifar10c`` (shift: the chosen
    CIFAR-10-C corruptions × severities pooled), then the OOD sets of ``ood_sets``: ``svhn`` (far, the
    default: SVHN's test split, labels unrelated to CIFAR's classes) and ``cifar100`` (near, CIFAR-100's
    test split). With ``per_corruption`` every corruption × severity is also its own shift set
    ``cifar10c_<corruption>_<severity>``. All sets are normalised with CIFAR-10's statistics, as the
    network sees them. Validation is held out of the training set. CIFAR-10-C renders the CIFAR-10 test
    set once per corruption and severity, so its severity blocks are as long as the test set found under
    ``data_dir`` (10,000 images in the real files).
    """

    name = "cifar10"
    corrupted = "CIFAR-10-C"
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2023, 0.1994, 0.2010)

    def read_split(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        return read_cifar10(self.data_dir, train=train)

    def own_files(self) -> list[Path]:
        folder = self.data_dir / "cifar-10-batches-py"
        return [folder / f"data_batch_{i}" for i in range(1, 6)] + [folder / "test_batch"]

    def download_own(self) -> None:
        dl.download_cifar10(self.data_dir)
        dl.download_cifar10c(self.data_dir)
