"""Tensor-backed datasets and the datamodule base every dataset shares.

Images live in memory as one uint8 tensor per split; a batch is a single index into it, so there
is no per-sample Python or PIL work. Conversion to float, augmentation and normalisation happen in
``on_after_batch_transfer``, i.e. after the batch reached the device.
"""

from typing import Any, Literal, NamedTuple

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ensemble_lab.data.augment import normalize, random_crop, random_hflip, to_float
from ensemble_lab.data.options import check_at_least, check_val_size
from ensemble_lab.data.sampler import ResumableTrainOrder
from ensemble_lab.errors import ConfigError

ROLES = ("id", "shift", "ood")


class LabeledImages(NamedTuple):
    """All images of a split (N, C, H, W) uint8 and their labels (N,) int64."""

    images: Tensor
    labels: Tensor


class IndexedImages(Dataset):
    """A split as a dataset whose batches are (images, labels, dataset indices)."""

    def __init__(self, data: LabeledImages) -> None:
        """``data``: uint8 images (N, C, H, W) and int64 labels (N,) of equal length."""
        if len(data.images) != len(data.labels):
            raise ValueError(f"{len(data.images)} images but {len(data.labels)} labels")
        self.images, self.labels = data.images, data.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        return self.images[i], self.labels[i], i

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], self.labels[idx], idx


def keep_batch(batch: Any) -> Any:
    """collate_fn for IndexedImages: ``__getitems__`` already returns a whole batch."""
    return batch


class EnsembleDataModule(ResumableTrainOrder, L.LightningDataModule):
    """Base datamodule: train / val split, named test sets with roles, on-device preprocessing.

    Subclasses set ``num_classes``, ``input_shape``, ``mean``, ``std`` and implement
    ``load_train`` and ``load_test_sets``; ``test_set_roles`` must be known before loading.
    Options are checked in ``__init__``, before any trainer or logger exists.
    """

    num_classes: int
    input_shape: tuple[int, ...]  # (C, H, W) images, (F,) tabular features
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: images in the training split (validation included) where that is known without reading a file,
    #: so that ``__init__`` checks ``val_size`` against it; None: checked once the data is read
    train_size: int | None = None

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int = 5000,
        augment: bool = True,
        split_seed: int = 0,
        num_workers: int = 0,
        train_batch: Literal["shared", "independent"] = "shared",
    ) -> None:
        """
        Args:
            batch_size: training batch size in unique images (each member sees all of them).
            eval_batch_size: batch size for validation and test; defaults to 2 × batch_size.
            val_size: images held out of the training set for validation (never the test set).
            augment: random crop (4-pixel padding) and horizontal flip of training batches, where the dataset uses them.
            split_seed: seed of the train / validation split, independent of the training seed.
            num_workers: DataLoader workers; 0 is right for in-memory tensors.
            train_batch: "shared" (every member trains on the same batch) or "independent" (each member draws its
                own ``batch_size`` images from its own shuffle, for the methods that tile the batch: a Deep
                Ensemble's members then see the data in their own orders, as separately trained networks do).
        """
        super().__init__()
        if train_batch not in ("shared", "independent"):
            raise ConfigError(f"--data.train_batch {train_batch!r} is not known; allowed: shared, independent")
        self.train_batch = train_batch
        check_at_least("batch_size", batch_size, 1)
        if eval_batch_size is not None:
            check_at_least("eval_batch_size", eval_batch_size, 1, " (or null for 2 × batch_size)")
        check_val_size(val_size, self.train_size, f"{type(self).__name__}'s training split")
        check_at_least("num_workers", num_workers, 0)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or 2 * batch_size
        self.val_size, self.augment, self.split_seed, self.num_workers = val_size, augment, split_seed, num_workers
        self.train_set: LabeledImages | None = None
        self.val_set: LabeledImages | None = None
        self.test_sets: dict[str, LabeledImages] = {}

    # ---- what subclasses provide ------------------------------------------------------------------
    @property
    def test_set_roles(self) -> dict[str, str]:
        """{test set name: "id" | "shift" | "ood"} in the order of the test dataloaders."""
        raise NotImplementedError

    @property
    def test_set_details(self) -> dict[str, dict[str, Any]]:
        """What results.json records beside a set's role, by set name (none by default): a corrupted set's
        ``corrupted`` (the pooled set it belongs to), ``corruption`` and ``severity``; an OOD set's ``ood_kind``."""
        return {}

    def load_train(self) -> LabeledImages:
        """The full training split (validation is cut from it here)."""
        raise NotImplementedError

    def load_test_sets(self) -> dict[str, LabeledImages]:
        """Every test set named in ``test_set_roles``."""
        raise NotImplementedError

    #: random-crop padding used when ``augment`` is on; None disables crop and flip for this dataset
    crop_padding: int | None = 4
    #: whether horizontal flips are label-preserving for this dataset
    flip: bool = True

    # ---- splits -----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate", None) and self.train_set is None:
            self.train_set, self.val_set = self._split(self.load_train())
        if stage in ("test", "predict", None) and not self.test_sets:
            self.test_sets = self.load_test_sets()
            missing = set(self.test_set_roles) - set(self.test_sets)
            if missing:
                raise ValueError(f"load_test_sets did not return {sorted(missing)}")

    def _split(self, data: LabeledImages) -> tuple[LabeledImages, LabeledImages]:
        n = len(data.labels)
        check_val_size(self.val_size, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        val, train = order[: self.val_size], order[self.val_size :]
        return LabeledImages(data.images[train], data.labels[train]), LabeledImages(data.images[val], data.labels[val])

    # ---- loaders ----------------------------------------------------------------------------------
    def _loader(self, data: LabeledImages, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = IndexedImages(data)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            # training order: seeded per epoch and resumable mid-epoch (see data/sampler.py)
            sampler=self.train_sampler(dataset) if shuffle else None,
            # every new iterator draws a worker base seed; from the global RNG that draw would make
            # dropout / augmentation depend on when loaders were (re)created, e.g. after a resume
            generator=torch.Generator().manual_seed(self.split_seed),
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup('fit') loads the training split"
        return self._loader(self.train_set, self.batch_size * self.members_per_batch, shuffle=True)  # M·B with independent batches

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup('fit') or setup('validate') loads the validation split"
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.test_sets[name], self.eval_batch_size, shuffle=False) for name in self.test_set_roles]

    def predict_dataloader(self) -> DataLoader:
        first_id = next(name for name, role in self.test_set_roles.items() if role == "id")
        return self._loader(self.test_sets[first_id], self.eval_batch_size, shuffle=False)

    # ---- on-device preprocessing -----------------------------------------------------------------
    def preprocess(self, images: Tensor, train: bool) -> Tensor:
        """uint8 (B, C, H, W) -> normalised float; crop + flip in training when ``augment`` is on."""
        x = to_float(images)
        if train and self.augment and self.crop_padding:
            x = random_crop(x, self.crop_padding)
            if self.flip:
                x = random_hflip(x)
        return normalize(x, self.mean, self.std)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, *rest = batch
        training = self.trainer is not None and self.trainer.training
        if training:
            self.count_train_batch()  # the resume position saved in checkpoints
        return (self.preprocess(images, train=training), *rest)
