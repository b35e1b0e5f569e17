"""Tabular datasets (regression and classification) with the id / shift / ood roles of every datamodule.

The rows of a table are split once, by seeds alone: the test split (``split`` picks one of the seeded
splits, or of the benchmark's published splits with ``split_files``: data/published_splits.py), then the "gap" (the non-test rows furthest along their first principal direction), then the
validation rows (``split_seed``); training keeps the rest. Features, and regression targets, are
standardised with the training rows' mean and std. See docs/tabular.md.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ensemble_lab.data.base import EnsembleDataModule, LabeledImages
from ensemble_lab.data.published_splits import read_published_split
from ensemble_lab.data.tabular_prep import gap_rows, noisy_copy, one_hot, seeded_split, standardise_stats
from ensemble_lab.data.tabular_readers import DATASETS, SPECS, categorical_columns, read_table
from ensemble_lab.errors import ConfigError

TabularDataset = Literal[
    "diabetes", "breast_cancer", "wine", "concrete", "energy", "kin8nm", "naval", "power", "protein",
    "wine_quality_red", "yacht", "california",
]
SHIFT_SEED = 7919  # the noise of the shift set is seeded by this plus the split: it never depends on another option


def _check_fraction(option: str, value: float, low_open: bool = True) -> None:
    """ConfigError unless ``value`` is in (0, 1), or [0, 1) where ``low_open`` is False."""
    if not (0 < value < 1 if low_open else 0 <= value < 1):
        interval = "(0, 1)" if low_open else "[0, 1)"
        raise ConfigError(f"--data.{option} is a fraction of the rows in {interval}, got {value}")


class TabularDataModule(EnsembleDataModule):
    """A table of features, read from its native file (or bundled with scikit-learn), for an MLP.

    Batches are (features float32 (B, F), targets, dataset indices): targets int64 (B,) class indices
    for classification, float32 (B, D) standardised values for regression (``target_mean`` and
    ``target_std`` turn them back into the dataset's units). Test sets: ``<dataset>`` (id, the test
    split), ``<dataset>_noise`` (shift: the test rows plus Gaussian noise of ``shift_noise`` training
    standard deviations per feature), ``<dataset>_gap`` (ood: the non-test rows in the top
    ``ood_fraction`` along the first principal direction of the non-test features; held out of training
    and validation; they keep their targets or labels).

    Attributes set from the table when the datamodule is built: ``task`` ("regression" or
    "classification"), ``input_shape`` (F,), ``num_classes`` (classification) or ``num_targets`` (D),
    ``feature_mean`` / ``feature_std`` (F,) and, for regression, ``target_mean`` / ``target_std`` (D,),
    all of the training rows; ``rows``: the table positions of the train, val, test and gap rows.
    """

    crop_padding = None  # no image augmentation: the features are served as they are
    flip = False
    #: regression: the training rows' target mean and std (D,), to report in the dataset's units; None otherwise
    target_mean: tuple[float, ...] | None = None
    target_std: tuple[float, ...] | None = None
    #: targets per row: D for regression, 1 (the class index) for classification
    num_targets: int

    def __init__(
        self,
        dataset: TabularDataset = "breast_cancer",
        data_dir: str = "data",
        split: int = 0,
        test_fraction: float | None = None,
        val_fraction: float = 0.1,
        ood_fraction: float = 0.1,
        shift_noise: float = 1.0,
        categorical: Sequence[int] | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        split_seed: int = 0,
        num_workers: int = 0,
        train_batch: Literal["shared", "independent"] = "shared",
        split_files: str | None = None,
    ) -> None:
        """
        Args:
            dataset: the table: bundled with scikit-learn (diabetes, breast_cancer, wine) or read from
                ``<data_dir>/<dataset>/`` (the UCI regression benchmark and california; docs/tabular.md).
            data_dir: the data root holding one folder per downloaded dataset.
            split: which seeded train / test split (0 to 19; 0 to 4 for protein), as in the UCI benchmark's 20 splits.
            test_fraction: share of the rows in the test split; null: the dataset's (0.1 for the downloaded
                sets, the benchmark's 90 / 10; 0.2 for the bundled ones).
            val_fraction: share of the training rows (after the gap is taken out) held out for validation.
            ood_fraction: share of the non-test rows that form the gap (ood) set; 0: no ood set.
            shift_noise: the shift set's noise, in training standard deviations of each feature (k).
            categorical: feature columns (indices into the file's feature columns) to one-hot encode; null:
                the dataset's default (none).
            batch_size: training batch size in unique rows (each member sees all of them).
            eval_batch_size: batch size for validation and test; defaults to 2 × batch_size.
            split_seed: seed of the validation rows drawn from the training rows.
            num_workers: DataLoader workers; 0 is right for in-memory tensors.
            train_batch: "shared" (every member trains on the same batch) or "independent" (TabM's recipe: each
                member draws its own ``batch_size`` rows from its own shuffle, for the methods that tile the batch;
                a step then reads M · batch_size rows).
            split_files: a folder with the UCI benchmark's published split files (data.txt, index_features.txt,
                index_target.txt, index_train_<s>.txt, index_test_<s>.txt): the table and the train / test rows of
                split s = ``split`` come from them instead of the seeded split (``test_fraction`` then unused).
        """
        super().__init__(
            batch_size=batch_size, eval_batch_size=eval_batch_size, val_size=1, augment=False,
            split_seed=split_seed, num_workers=num_workers,
        )
        if dataset not in SPECS:
            raise ConfigError(f"--data.dataset: unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
        spec = SPECS[dataset]
        if split_files is None and not 0 <= split < spec.num_splits:  # published files: checked against the folder
            raise ConfigError(f"--data.split must be 0..{spec.num_splits - 1} for {dataset}, got {split}")
        self.test_fraction = spec.test_fraction if test_fraction is None else test_fraction
        _check_fraction("test_fraction", self.test_fraction)
        _check_fraction("val_fraction", val_fraction)
        _check_fraction("ood_fraction", ood_fraction, low_open=False)
        if shift_noise < 0:
            raise ConfigError(f"--data.shift_noise is a number of standard deviations: it must be >= 0, got {shift_noise}")
        self.dataset, self.data_dir, self.split = dataset, Path(data_dir).expanduser(), split
        self.val_fraction, self.ood_fraction, self.shift_noise = val_fraction, ood_fraction, shift_noise
        self.task: Literal["regression", "classification"] = spec.task
        if train_batch not in ("shared", "independent"):
            raise ConfigError(f"--data.train_batch {train_batch!r} is not known; allowed: shared, independent")
        self.train_batch = train_batch
        self.split_files = split_files
        self._prepare(categorical_columns(dataset, categorical))  # reads the file now: a missing one fails before training

    # ---- the splits, computed once from the table -------------------------------------------------
    def _prepare(self, categorical: Sequence[int]) -> None:
        if self.split_files is None:
            table = read_table(self.dataset, self.data_dir)
        else:
            published = read_published_split(self.split_files, self.split, self.dataset)
            table = published.table
        width = table.features.shape[1]
        bad = [c for c in categorical if not -width <= c < width]
        if bad:
            raise ConfigError(f"--data.categorical: column {bad[0]} does not exist; {self.dataset} has {width} feature columns")
        x = one_hot(table.features, categorical)  # (N, F)
        n = len(x)
        if self.split_files is None:
            rest, test = seeded_split(n, max(1, round(self.test_fraction * n)), self.split)
        else:  # the published rows, in the files' order
            rest, test = published.train, published.test
        gap = rest[gap_rows(x[rest], self.ood_fraction)]  # positions in the table, not in `rest`
        fit_rows = np.setdiff1d(rest, gap)
        train_pos, val_pos = seeded_split(len(fit_rows), round(self.val_fraction * len(fit_rows)), self.split_seed)
        train, val = fit_rows[train_pos], fit_rows[val_pos]
        if min(len(train), len(val)) == 0:
            raise ConfigError(
                f"{self.dataset}: {len(train)} training and {len(val)} validation rows with --data.test_fraction "
                f"{self.test_fraction}, --data.ood_fraction {self.ood_fraction} and --data.val_fraction "
                f"{self.val_fraction}: each needs at least one row; change the fractions"
            )
        self.rows = {"train": train, "val": val, "test": test, "gap": gap}  # table positions, for inspection
        self.feature_mean, self.feature_std = standardise_stats(x[train])  # (F,) each
        features = (x - self.feature_mean) / self.feature_std
        targets = table.targets
        if self.task == "regression":
            mean, std = standardise_stats(targets[train])  # (D,) each
            self.target_mean, self.target_std = tuple(map(float, mean)), tuple(map(float, std))
            targets = (targets - mean) / std
        self.input_shape = (x.shape[1],)
        self.num_targets = targets.shape[1] if targets.ndim == 2 else 1
        self.val_size = len(val)
        noisy = noisy_copy(features[test], self.shift_noise, SHIFT_SEED + self.split)
        self._sets = {name: self._tensors(features[rows], targets[rows]) for name, rows in self.rows.items()}
        self._sets["noise"] = self._tensors(noisy, targets[test])

    def _tensors(self, features: np.ndarray, targets: np.ndarray) -> LabeledImages:
        """Rows as (float32 features (N, F), int64 labels (N,) or float32 targets (N, D)) tensors."""
        dtype = torch.long if self.task == "classification" else torch.float32
        return LabeledImages(torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(targets, dtype=dtype))

    @property
    def num_classes(self) -> int:  # type: ignore[override]  # a regression table has no classes
        """Classes of a classification dataset; a regression dataset has none (the CLI links ``num_targets``)."""
        if self.task == "regression":
            raise ConfigError(f"--data.dataset {self.dataset} is a regression dataset: it has targets (num_targets), not classes")
        return SPECS[self.dataset].num_classes

    # ---- EnsembleDataModule --------------------------------------------------------------------------
    @property
    def test_set_roles(self) -> dict[str, str]:
        roles = {self.dataset: "id", f"{self.dataset}_noise": "shift", f"{self.dataset}_gap": "ood"}
        if not len(self.rows["gap"]):
            del roles[f"{self.dataset}_gap"]
        return roles

    def setup(self, stage: str | None = None) -> None:
        # the splits were made in __init__; validation is chosen there, not cut from load_train
        if stage in ("fit", "validate", None):
            self.train_set, self.val_set = self._sets["train"], self._sets["val"]
        if stage in ("test", "predict", None):
            self.test_sets = self.load_test_sets()

    def load_train(self) -> LabeledImages:
        """The training rows (validation and the gap already taken out)."""
        return self._sets["train"]

    def load_test_sets(self) -> dict[str, LabeledImages]:
        return dict(zip(self.test_set_roles, (self._sets["test"], self._sets["noise"], self._sets["gap"])))

    def preprocess(self, images: Tensor, train: bool) -> Tensor:
        """Features are standardised when the table is read: served as they are (float32 (B, F))."""
        return images
