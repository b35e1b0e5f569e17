"""CIFAR-100 with CIFAR-100-C as the shift set and SVHN (far) and CIFAR-10 (near) as OOD sets."""

from pathlib import Path

import numpy as np

from ensemble_lab.data import download as dl
from ensemble_lab.data.cifar import CIFARDataModule
from ensemble_lab.data.readers import cifar100_files, read_cifar100


class CIFAR100DataModule(CIFARDataModule):
    """CIFAR-100 (docs/paper.md), read from its native python-pickle files under ``data_dir``, with its 100
    fine labels.

    Test sets: ``cifar100`` (id, the 10,000 test images), ``cifar100c`` (shift: the chosen CIFAR-100-C
    corruptions × severities pooled; per set with ``per_corruption``), then the OOD sets of ``ood_sets``:
    ``svhn`` (far) and ``cifar10`` (near), both by default. All sets are normalised with CIFAR-100's
    training statistics. The options are CIFAR10DataModule's.
    """

    name = "cifar100"
    corrupted = "CIFAR-100-C"
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)  # per channel over CIFAR-100's 50,000 training images
    std = (0.2673, 0.2564, 0.2762)

    default_ood_sets = ("svhn", "cifar10")

    def read_split(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        return read_cifar100(self.data_dir, train=train)

    def own_files(self) -> list[Path]:
        return cifar100_files(self.data_dir)

    def download_own(self) -> None:
        dl.download_cifar100(self.data_dir)
        dl.download_cifar100c(self.data_dir)
