"""MNIST with MNIST-C and rotated digits as shift sets and FashionMNIST as the OOD set (the MLP study)."""

from collections.abc import Sequence
from pathlib import Path

import torch

from ensemble_lab.data import download as dl
from ensemble_lab.data.augment import rotate
from ensemble_lab.data.base import EnsembleDataModule, LabeledImages
from ensemble_lab.data.native import idx_files, labeled, require_files
from ensemble_lab.data.options import check_choices, check_val_size
from ensemble_lab.data.readers import (
    MNIST_C_CORRUPTIONS,
    idx_split_size,
    mnist_c_shapes,
    read_fashion_mnist,
    read_mnist,
    read_mnist_c,
)


class MNISTDataModule(EnsembleDataModule):
    """MNIST for the MLP study (docs/paper.md), read from its native files under ``data_dir``.

    Test sets: ``mnist`` (id, the 10,000 test digits), ``mnist_c`` (shift: the chosen MNIST-C
    corruptions pooled; off with ``mnist_c: false``), ``rotated_mnist`` (shift: the MNIST test digits
    rotated by ``rotation_degrees``, made here, no download) and ``fashion_mnist`` (ood, its test
    split; labels are clothing classes, unrelated to digits). Every set is normalised with MNIST's
    mean and std, as the network sees them. No augmentation: crops and flips change digits.
    """

    num_classes = 10
    input_shape = (1, 28, 28)
    mean = (0.1307,)
    std = (0.3081,)
    crop_padding = None  # the study trains on plain digits; a flipped 2 or 5 is not a 2 or 5
    flip = False

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        batch_size: int = 128,
        val_size: int = 5000,
        mnist_c: bool = True,
        corruptions: Sequence[str] = MNIST_C_CORRUPTIONS,
        rotation_degrees: float = 45.0,
        per_corruption: bool = False,
        **kwargs,
    ) -> None:
        """
        Args:
            data_dir: root holding MNIST/raw/, FashionMNIST/raw/ and mnist_c/ (created by download).
            download: fetch missing MNIST, FashionMNIST and (if mnist_c) MNIST-C files first.
            batch_size: training batch size in unique images (each member sees all of them).
            val_size: training images held out of MNIST's 60,000 for validation (never the test set).
            mnist_c: evaluate the ``mnist_c`` shift set; turn off if you have no MNIST-C files.
            corruptions: MNIST-C corruptions pooled into ``mnist_c`` (default: all 15).
            rotation_degrees: angle by which every test digit of ``rotated_mnist`` is turned counter-clockwise.
            per_corruption: also report every MNIST-C corruption as its own shift set ``mnist_c_<corruption>``
                (for the c_acc / c_nll / c_ece averages). MNIST-C is published at one severity, so there is
                no severity option: its sets record severity null.
        """
        super().__init__(batch_size=batch_size, val_size=val_size, **kwargs)
        self.corruptions = check_choices("corruptions", corruptions, MNIST_C_CORRUPTIONS, "MNIST-C corruption")
        self.data_dir, self.download = Path(data_dir).expanduser(), download
        self.mnist_c, self.rotation_degrees, self.per_corruption = mnist_c, rotation_degrees, per_corruption

    @property
    def test_set_roles(self) -> dict[str, str]:
        roles = {"mnist": "id", "mnist_c": "shift", "rotated_mnist": "shift", "fashion_mnist": "ood"}
        if not self.mnist_c:
            del roles["mnist_c"]
        elif self.per_corruption:  # after the pooled set, before rotated_mnist
            roles = {**{k: v for k, v in roles.items() if k in ("mnist", "mnist_c")}, **{f"mnist_c_{c}": "shift" for c in self.corruptions},
                     **{k: v for k, v in roles.items() if k in ("rotated_mnist", "fashion_mnist")}}  # fmt: skip
        return roles

    @property
    def test_set_details(self) -> dict[str, dict]:
        """Per-corruption sets: ``corrupted`` "mnist_c", ``corruption``, ``severity`` null (MNIST-C has one level);
        ``fashion_mnist``: ``ood_kind`` far (clothing, not digits)."""
        details: dict[str, dict] = {}
        if self.mnist_c and self.per_corruption:
            details.update({f"mnist_c_{c}": {"corrupted": "mnist_c", "corruption": c, "severity": None} for c in self.corruptions})
        details["fashion_mnist"] = {"ood_kind": "far"}
        return details

    def prepare_data(self) -> None:
        """Download what is missing (``download``), then check every file before any training.

        Every file must exist; the MNIST-C arrays must also have whole, correctly shaped headers, and
        ``val_size`` must leave training images (their count is read from the idx header alone).
        """
        if self.download:
            dl.download_mnist(self.data_dir)
            dl.download_fashion_mnist(self.data_dir)
            if self.mnist_c:
                dl.download_mnist_c(self.data_dir)
        expected = idx_files(self.data_dir / "MNIST" / "raw", "MNIST")
        expected += idx_files(self.data_dir / "FashionMNIST" / "raw", "FashionMNIST", prefixes=("t10k",))
        shapes = mnist_c_shapes(self.data_dir, self.corruptions) if self.mnist_c else {}
        expected += [("MNIST-C", [path]) for path in shapes]
        require_files(expected)
        check_val_size(self.val_size, idx_split_size(self.data_dir, "MNIST", train=True), "MNIST's training split")
        if shapes:  # read only at test time: catch a truncated or misshapen file now, not after training
            dl.check_npy_files(shapes, "MNIST-C")

    def load_train(self) -> LabeledImages:
        return labeled(*read_mnist(self.data_dir, train=True))

    def load_test_sets(self) -> dict[str, LabeledImages]:
        test = labeled(*read_mnist(self.data_dir, train=False))
        sets = {"mnist": test}
        if self.mnist_c:
            parts = [labeled(*read_mnist_c(self.data_dir, c)) for c in self.corruptions]
            sets["mnist_c"] = LabeledImages(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
            if self.per_corruption:
                sets.update({f"mnist_c_{c}": part for c, part in zip(self.corruptions, parts)})
        sets["rotated_mnist"] = LabeledImages(rotate(test.images, self.rotation_degrees), test.labels)
        sets["fashion_mnist"] = labeled(*read_fashion_mnist(self.data_dir, train=False))
        return sets
