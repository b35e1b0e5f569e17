"""What CIFAR-10 and CIFAR-100 share: the -C shift sets (pooled and per corruption × severity), the OOD sets
chosen by ``ood_sets`` and each set's details (corruption, severity, near / far OOD) for results.json.

:class:`CIFARDataModule` is the common base; ``cifar10.py`` and ``cifar100.py`` only name their files,
readers and statistics.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ensemble_lab.data import download as dl
from ensemble_lab.data.base import EnsembleDataModule, LabeledImages
from ensemble_lab.data.native import labeled, require_files
from ensemble_lab.data.options import check_choices
from ensemble_lab.data.readers import (
    CIFAR10C_CORRUPTIONS,
    CIFAR10C_SEVERITIES,
    cifar10c_shapes,
    cifar100_files,
    read_cifar10,
    read_cifar10c,
    read_cifar100,
    read_svhn,
)

#: how far an OOD set lies from the training data: "near" (natural images of other classes, the harder
#: case) or "far" (another kind of image, e.g. house numbers for CIFAR)
OOD_KINDS = ("near", "far")


@dataclass(frozen=True)
class OODSet:
    """One OOD test set a CIFAR datamodule can evaluate: its kind, files, reader (test split) and downloader."""

    kind: str
    dataset: str
    files: Callable[[Path], list[Path]]
    read: Callable[[Path], tuple[np.ndarray, np.ndarray]]
    download: Callable[[Path], Any]


def _cifar10_test_files(root: Path) -> list[Path]:
    return [root / "cifar-10-batches-py" / "test_batch"]


#: the OOD sets by test-set name; a datamodule offers those other than itself (downloads looked up when called)
OOD_SETS = {
    "svhn": OODSet("far", "SVHN", lambda root: [root / "svhn" / "test_32x32.mat"], lambda root: read_svhn(root, "test"), lambda root: dl.download_svhn_test(root)),
    "cifar10": OODSet("near", "CIFAR-10", _cifar10_test_files, lambda root: read_cifar10(root, train=False), lambda root: dl.download_cifar10(root)),
    "cifar100": OODSet("near", "CIFAR-100", lambda root: cifar100_files(root)[1:2], lambda root: read_cifar100(root, train=False), lambda root: dl.download_cifar100(root)),
}


class CIFARDataModule(EnsembleDataModule, ABC):
    """The base of CIFAR10DataModule and CIFAR100DataModule: 32×32 colour images, their -C corruptions, OOD sets.

    Test sets: ``<name>`` (id, the test split), ``<name>c`` (shift: the chosen corruptions × severities
    pooled), with ``per_corruption`` each pair also as ``<name>c_<corruption>_<severity>``, then each of
    ``ood_sets`` (ood). Every set is normalised with the training set's statistics, as the network sees them.
    A subclass sets ``name``, ``corrupted`` (the -C folder), the class attributes of EnsembleDataModule and
    implements ``read_split``, ``own_files`` and ``download_own``.
    """

    input_shape = (3, 32, 32)
    crop_padding = 4
    flip = True
    #: the id test set's name, e.g. "cifar10"; the shift sets are "<name>c..."
    name: str
    #: the corrupted copy's folder and dataset name, e.g. "CIFAR-10-C"
    corrupted: str
    #: the OOD sets evaluated when ``ood_sets`` is null
    default_ood_sets: tuple[str, ...] = ("svhn",)

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        batch_size: int = 128,
        val_size: int = 5000,
        corruptions: Sequence[str] = CIFAR10C_CORRUPTIONS,
        severities: Sequence[int] = (5,),
        per_corruption: bool = False,
        ood_sets: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        """
        Args:
            data_dir: root holding the datasets' folders (created by download; docs/paper.md lists them).
            download: fetch missing files of the training set, its -C copy and the OOD sets first, checking them.
            batch_size: training batch size in unique images (each member sees all of them).
            val_size: training images held out for validation (never the test set).
            corruptions: corruptions pooled into the shift set (default: all 19).
            severities: corruption severities (1..5) to use; the paper uses [5], Google's uncertainty baselines all five.
            per_corruption: also report every corruption × severity as its own shift set, e.g. ``cifar10c_fog_5``
                (needed for the c_acc / c_nll / c_ece averages).
            ood_sets: the OOD test sets, each marked near or far in results.json: svhn (far), and the other CIFAR
                (near: cifar100 for CIFAR-10, cifar10 for CIFAR-100); null: the datamodule's default (CIFAR-10:
                [svhn], CIFAR-100: [svhn, cifar10]), whatever files are on disk.
        """
        super().__init__(batch_size=batch_size, val_size=val_size, **kwargs)
        self.corruptions = check_choices("corruptions", corruptions, CIFAR10C_CORRUPTIONS, f"{self.corrupted} corruption")
        self.severities = check_choices("severities", severities, CIFAR10C_SEVERITIES, "severity (1..5)")
        choices = [n for n in OOD_SETS if n != self.name]
        self.ood_sets = check_choices("ood_sets", self.default_ood_sets if ood_sets is None else ood_sets, choices, "OOD set")
        self.data_dir, self.download = Path(data_dir).expanduser(), download
        self.per_corruption = per_corruption

    # ---- what a subclass provides -----------------------------------------------------------------------
    @abstractmethod
    def read_split(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        """The training or test split from ``data_dir``: images uint8 (N, 3, 32, 32), labels int64 (N,)."""
        raise NotImplementedError

    @abstractmethod
    def own_files(self) -> list[Path]:
        """The training and test files that must exist under ``data_dir``."""
        raise NotImplementedError

    @abstractmethod
    def download_own(self) -> None:
        """Fetch the dataset and its -C copy into ``data_dir``."""
        raise NotImplementedError

    # ---- names, roles and details (known without loading) --------------------------------------------
    def corruption_set_names(self) -> list[str]:
        """Names of the per-corruption shift sets, corruption-major, in pooled order."""
        return [f"{self.name}c_{c}_{s}" for c in self.corruptions for s in self.severities]

    @property
    def test_set_roles(self) -> dict[str, str]:
        roles = {self.name: "id", f"{self.name}c": "shift"}
        if self.per_corruption:
            roles.update({name: "shift" for name in self.corruption_set_names()})
        roles.update({name: "ood" for name in self.ood_sets})
        return roles

    @property
    def test_set_details(self) -> dict[str, dict[str, Any]]:
        """What results.json records beside each set's role: a per-corruption set's ``corrupted`` dataset (the
        pooled set's name), ``corruption`` and ``severity``; an OOD set's ``ood_kind`` (near or far)."""
        pairs = [(c, s) for c in self.corruptions for s in self.severities]
        details: dict[str, dict[str, Any]] = {}
        if self.per_corruption:
            for name, (c, s) in zip(self.corruption_set_names(), pairs):
                details[name] = {"corrupted": f"{self.name}c", "corruption": c, "severity": s}
        details.update({name: {"ood_kind": OOD_SETS[name].kind} for name in self.ood_sets})
        return details

    # ---- files ---------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download what is missing (``download``), then check every file before any training.

        Every file must exist; the -C arrays must also have whole headers of the shape the test set implies
        (5 severity blocks of its length).
        """
        if self.download:
            self.download_own()
            for name in self.ood_sets:
                OOD_SETS[name].download(self.data_dir)
        shapes = cifar10c_shapes(self.data_dir, self.corruptions, dataset=self.corrupted)
        require_files(
            [(self.dataset_name, [path]) for path in self.own_files()]
            + [(self.corrupted, [path]) for path in shapes]
            + [(OOD_SETS[n].dataset, [path]) for n in self.ood_sets for path in OOD_SETS[n].files(self.data_dir)]
        )
        # the shift set is read only at test time: catch a truncated or misshapen file now, not after training
        block = len(self.read_split(train=False)[1])  # the test set: one file, read once here
        dl.check_npy_files(cifar10c_shapes(self.data_dir, self.corruptions, block, self.corrupted), self.corrupted)

    @property
    def dataset_name(self) -> str:
        """The dataset as errors name it, e.g. "CIFAR-10"."""
        return self.corrupted.removesuffix("-C")

    def load_train(self) -> LabeledImages:
        return labeled(*self.read_split(train=True))

    def load_corrupted(self, block: int) -> LabeledImages:
        """The chosen corruptions × severities as one set, corruption-major then severity.

        ``block``: images per severity, the length of the test set that the -C copy renders.
        """
        n = len(self.corruptions) * len(self.severities) * block
        images = torch.empty((n, *self.input_shape), dtype=torch.uint8)  # filled in place: no 2× peak
        labels = torch.empty(n, dtype=torch.long)
        for i, corruption in enumerate(self.corruptions):
            part = labeled(*read_cifar10c(self.data_dir, corruption, self.severities, block, self.corrupted))
            rows = slice(i * len(self.severities) * block, (i + 1) * len(self.severities) * block)
            images[rows], labels[rows] = part.images, part.labels
        return LabeledImages(images, labels)

    def load_ood(self, name: str) -> LabeledImages:
        """OOD set ``name``; its labels are not this model's classes and are folded into range (label mod
        num_classes) only so that every set's metrics can be computed: they mean nothing."""
        images, labels = OOD_SETS[name].read(self.data_dir)
        return labeled(images, labels % self.num_classes)

    def load_test_sets(self) -> dict[str, LabeledImages]:
        test = labeled(*self.read_split(train=False))
        block = len(test.labels)
        pooled = self.load_corrupted(block)
        sets = {self.name: test, f"{self.name}c": pooled}
        if self.per_corruption:  # views into the pooled tensor, in its order: no extra memory
            for k, name in enumerate(self.corruption_set_names()):
                rows = slice(k * block, (k + 1) * block)
                sets[name] = LabeledImages(pooled.images[rows], pooled.labels[rows])
        sets.update({name: self.load_ood(name) for name in self.ood_sets})
        return sets
