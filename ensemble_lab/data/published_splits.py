"""The UCI regression benchmark's published splits (Hernández-Lobato & Adams, 2015), read from their files.

The benchmark's release keeps, per dataset, one folder (``<dataset>/data`` in it) with whitespace-separated
numbers and integer index files, one index per line, 0-based into the rows of ``data.txt``:

- ``data.txt``: the table, one row per line, features and target side by side;
- ``index_features.txt`` and ``index_target.txt``: the columns of the features and of the target;
- ``index_train_<s>.txt`` and ``index_test_<s>.txt``: the training and test rows of split s = 0, 1, ...

``--data.split_files <that folder>`` makes the tabular datamodule read the table and split s from these files;
the gap and validation rows are then taken out of the published training rows exactly as from a seeded split.
"""

from pathlib import Path
from typing import NamedTuple

import numpy as np

from ensemble_lab.data.files import damaged_file_error, require_file
from ensemble_lab.data.tabular_readers import Table
from ensemble_lab.errors import ConfigError

HOW = "the benchmark's release folder <dataset>/data (docs/tabular.md#published-splits)"


class PublishedSplit(NamedTuple):
    """A table and one published split of it: the training and test rows (positions in ``table``, the files' order)."""

    table: Table
    train: np.ndarray
    test: np.ndarray


def _numbers(path: Path, dataset: str, dtype: type) -> np.ndarray:
    """The whitespace-separated numbers of ``path``; a one-line error when it is missing or is not numbers."""
    require_file(path, dataset, HOW)
    try:
        return np.loadtxt(path, dtype=dtype, ndmin=1)
    except ValueError as e:
        raise damaged_file_error(path, dataset, f"not whitespace-separated numbers: {e}", HOW) from e


def _indices(path: Path, dataset: str, size: int) -> np.ndarray:
    """The 0-based indices of ``path``, each checked to lie in 0..size-1."""
    index = _numbers(path, dataset, int).reshape(-1)
    if len(index) and not (0 <= index.min() and index.max() < size):
        raise damaged_file_error(path, dataset, f"an index outside 0..{size - 1}", HOW)
    return index


def available_splits(folder: Path) -> int:
    """How many splits ``folder`` holds: the s with both ``index_train_<s>.txt`` and ``index_test_<s>.txt``, from 0 on."""
    count = 0
    while (folder / f"index_train_{count}.txt").is_file() and (folder / f"index_test_{count}.txt").is_file():
        count += 1
    return count


def read_published_split(folder: Path | str, split: int, dataset: str) -> PublishedSplit:
    """Split ``split`` of the published files in ``folder`` (module docstring), for the dataset named ``dataset``."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"--data.split_files {folder}: no such folder; give the folder that holds data.txt and the index files")
    count = available_splits(folder)
    if not 0 <= split < count:
        raise ConfigError(f"--data.split must be 0..{count - 1} for the published splits in {folder}, got {split}")
    data = _numbers(folder / "data.txt", dataset, float)
    data = data.reshape(len(data), -1) if data.ndim == 1 else data  # (N, columns); a one-column table reads as (N,)
    columns = data.shape[1]
    features = _indices(folder / "index_features.txt", dataset, columns)
    target = _indices(folder / "index_target.txt", dataset, columns)
    train = _indices(folder / f"index_train_{split}.txt", dataset, len(data))
    test = _indices(folder / f"index_test_{split}.txt", dataset, len(data))
    if np.intersect1d(train, test).size:
        raise damaged_file_error(folder / f"index_test_{split}.txt", dataset, f"it shares rows with index_train_{split}.txt", HOW)
    if not (len(train) and len(test)):
        raise damaged_file_error(folder / f"index_test_{split}.txt", dataset, "split with no training or no test rows", HOW)
    table = Table(data[:, features], data[:, target], [f"x{c}" for c in features])  # features (N, F), targets (N, D)
    return PublishedSplit(table, train, test)
