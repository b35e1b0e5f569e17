"""Datasets as in-memory uint8 tensors, and the datamodules that serve them."""

from ensemble_lab.data.base import EnsembleDataModule, IndexedImages, LabeledImages
from ensemble_lab.data.digits import DigitsDataModule

__all__ = ["DigitsDataModule", "EnsembleDataModule", "IndexedImages", "LabeledImages"]
