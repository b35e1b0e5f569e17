"""CIFAR-10 with CIFAR-10-C as the shift set and SVHN as the OOD set: the paper's main benchmark."""

from collections.abc import Sequence
from pathlib import Path

import torch

from ensemble_lab.data import download as dl
from ensemble_lab.data.base import EnsembleDataModule, LabeledImages
from ensemble_lab.data.native import labeled, require_files
from ensemble_lab.data.options import check_choices
from ensemble_lab.data.readers import (
    CIFAR10C_CORRUPTIONS,
    CIFAR10C_SEVERITIES,
    cifar10c_shapes,
    read_cifar10,
    read_cifar10c,
    read_svhn,
)


class CIFAR10DataModule(EnsembleDataModule):
    """CIFAR-10 (docs/paper.md), read from its native files under ``data_dir``.

    Test sets: ``cifar10`` (id, the 10,000 test images), ``cifar10c`` (shift: the chosen
    CIFAR-10-C corruptions × severities pooled), ``svhn`` (ood, SVHN's test split; its labels are
    SVHN digits, unrelated to CIFAR's classes). With ``per_corruption`` every corruption × severity
    is also its own shift set ``cifar10c_<corruption>_<severity>``. All sets are normalised with
    CIFAR-10's statistics, as the network sees them. Validation is held out of the training set.
    CIFAR-10-C renders the CIFAR-10 test set once per corruption and severity, so its severity
    blocks are as long as the test set found under ``data_dir`` (10,000 images in the real files).
    """

    num_classes = 10
    input_shape = (3, 32, 32)
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2023, 0.1994, 0.2010)
    crop_padding = 4
    flip = True

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        batch_size: int = 128,
        val_size: int = 5000,
        corruptions: Sequence[str] = CIFAR10C_CORRUPTIONS,
        severities: Sequence[int] = (5,),
        per_corruption: bool = False,
        **kwargs,
    ) -> None:
        """
        Args:
            data_dir: root holding cifar-10-batches-py/, CIFAR-10-C/ and svhn/ (created by download).
            download: fetch missing CIFAR-10, CIFAR-10-C (2.9 GB) and SVHN test files first, checking their checksums.
            batch_size: training batch size in unique images (each member sees all of them).
            val_size: training images held out for validation (never the test set).
            corruptions: CIFAR-10-C corruptions pooled into the ``cifar10c`` shift set (default: all 19).
            severities: CIFAR-10-C severities (1..5) to use; the paper uses [5].
            per_corruption: also report every corruption × severity as its own shift set, e.g. ``cifar10c_fog_5``.
        """
        super().__init__(batch_size=batch_size, val_size=val_size, **kwargs)
        self.corruptions = check_choices("corruptions", corruptions, CIFAR10C_CORRUPTIONS, "CIFAR-10-C corruption")
        self.severities = check_choices("severities", severities, CIFAR10C_SEVERITIES, "severity (1..5)")
        self.data_dir, self.download = Path(data_dir).expanduser(), download
        self.per_corruption = per_corruption

    # ---- names and roles (known without loading) -------------------------------------------------------
    def corruption_set_names(self) -> list[str]:
        """Names of the per-corruption shift sets, corruption-major, in pooled order."""
        return [f"cifar10c_{c}_{s}" for c in self.corruptions for s in self.severities]

    @property
    def test_set_roles(self) -> dict[str, str]:
        roles = {"cifar10": "id", "cifar10c": "shift", "svhn": "ood"}
        if self.per_corruption:
            roles.update({name: "shift" for name in self.corruption_set_names()})
        return roles

    # ---- files -------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download what is missing (``download``), then check every file before any training.

        Every file must exist; the CIFAR-10-C arrays must also have whole headers of the shape the
        CIFAR-10 test set implies (5 severity blocks of its length).
        """
        if self.download:
            dl.download_cifar10(self.data_dir)
            dl.download_cifar10c(self.data_dir)
            dl.download_svhn_test(self.data_dir)
        cifar = self.data_dir / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        require_files(
            [("CIFAR-10", [cifar / n]) for n in names]
            + [("CIFAR-10-C", [path]) for path in cifar10c_shapes(self.data_dir, self.corruptions)]
            + [("SVHN", [self.data_dir / "svhn" / "test_32x32.mat"])]
        )
        # the shift set is read only at test time: catch a truncated or misshapen file now, not after training
        block = len(read_cifar10(self.data_dir, train=False)[1])  # the test set: one 30 MB file, read once here
        dl.check_npy_files(cifar10c_shapes(self.data_dir, self.corruptions, block), "CIFAR-10-C")

    def load_train(self) -> LabeledImages:
        return labeled(*read_cifar10(self.data_dir, train=True))

    def load_cifar10c(self, block: int) -> LabeledImages:
        """The chosen corruptions × severities as one set, corruption-major then severity.

        ``block``: images per severity, the length of the CIFAR-10 test set that CIFAR-10-C renders.
        """
        n = len(self.corruptions) * len(self.severities) * block
        images = torch.empty((n, *self.input_shape), dtype=torch.uint8)  # filled in place: no 2× peak
        labels = torch.empty(n, dtype=torch.long)
        for i, corruption in enumerate(self.corruptions):
            part = labeled(*read_cifar10c(self.data_dir, corruption, self.severities, block_size=block))
            rows = slice(i * len(self.severities) * block, (i + 1) * len(self.severities) * block)
            images[rows], labels[rows] = part.images, part.labels
        return LabeledImages(images, labels)

    def load_test_sets(self) -> dict[str, LabeledImages]:
        cifar10 = labeled(*read_cifar10(self.data_dir, train=False))
        block = len(cifar10.labels)
        pooled = self.load_cifar10c(block)
        sets = {"cifar10": cifar10, "cifar10c": pooled, "svhn": labeled(*read_svhn(self.data_dir, "test"))}
        if self.per_corruption:  # views into the pooled tensor, in its order: no extra memory
            for k, name in enumerate(self.corruption_set_names()):
                rows = slice(k * block, (k + 1) * block)
                sets[name] = LabeledImages(pooled.images[rows], pooled.labels[rows])
        return sets
