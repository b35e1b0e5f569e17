"""Datasets as in-memory tensors (images uint8, tables float32), and the datamodules that serve them with named test sets and roles
(``id``, ``shift``, ``ood``): ``base`` (EnsembleDataModule), ``digits`` / ``mnist`` / ``cifar`` (the base of ``cifar10`` and ``cifar100``) / ``tabular``
(with ``tabular_readers``, ``tabular_prep`` and ``xlsx``), ``readers``,
``corruptions`` and ``native`` (native file formats to arrays; ``files``: their missing / damaged file errors),
``download``, ``augment`` (on the batch), ``sampler``
(a resumable training order), ``options`` (argument checks)."""

from ensemble_lab.data.base import EnsembleDataModule, IndexedImages, LabeledImages
from ensemble_lab.data.cifar import CIFARDataModule
from ensemble_lab.data.cifar10 import CIFAR10DataModule
from ensemble_lab.data.cifar100 import CIFAR100DataModule
from ensemble_lab.data.digits import DigitsDataModule
from ensemble_lab.data.mnist import MNISTDataModule
from ensemble_lab.data.tabular import TabularDataModule

__all__ = [
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "CIFARDataModule",
    "DigitsDataModule",
    "EnsembleDataModule",
    "IndexedImages",
    "LabeledImages",
    "MNISTDataModule",
    "TabularDataModule",
]
