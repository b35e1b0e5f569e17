"""Readers of the tabular datasets, each from its native file, into one numeric table.

Every dataset is a :class:`TabularSpec`: its task, where its file lies under the data root, how to
parse it and which columns are features and targets. :func:`read_table` returns a :class:`Table`:
features float64 ``(N, F)`` and targets, float64 ``(N, D)`` for regression or int64 ``(N,)`` class
indices for classification. scikit-learn's bundled sets need no file; the rest are downloaded by the
user into ``<root>/<dataset>/``. Nothing here downloads: a missing file raises a one-line
:class:`~ensemble_lab.errors.DatasetError` naming the file, where it was expected and where to get it.
"""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from ensemble_lab.data.files import damaged_file_error, require_file
from ensemble_lab.data.xlsx import read_first_sheet

UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases"
Rows = list[list[str]]


class Table(NamedTuple):
    """A dataset as arrays: features float64 (N, F), targets (N, D) float64 or (N,) int64, column names (F,)."""

    features: np.ndarray
    targets: np.ndarray
    names: list[str]


# --------------------------------------------------------------------------- file formats
def _delimited(delimiter: str | None, header: bool) -> Callable[[Path], Rows]:
    """A parser of delimited text: ``delimiter`` None splits on any run of whitespace; a header row is dropped."""

    def parse(path: Path) -> Rows:
        text = path.read_text(encoding="utf-8-sig")  # utf-8-sig: a CSV saved by Excel starts with a BOM
        if delimiter is None:
            rows = [line.split() for line in text.splitlines()]
        else:
            rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text), delimiter=delimiter)]
        rows = [row for row in rows if any(cell for cell in row)]  # blank lines, e.g. at the end of yacht's file
        return rows[1:] if header else rows

    return parse


def _xlsx(header: bool) -> Callable[[Path], Rows]:
    """A parser of an .xlsx workbook's first sheet (see :mod:`ensemble_lab.data.xlsx`)."""

    def parse(path: Path) -> Rows:
        rows = read_first_sheet(path)
        return rows[1:] if header else rows

    return parse


#: the California housing member inside the tarball scikit-learn's fetch_california_housing downloads
CAL_HOUSING_MEMBER = "CaliforniaHousing/cal_housing.data"


def _cal_housing_rows(path: Path) -> Rows:
    """cal_housing.data's comma-separated rows, from the extracted file or straight from cal_housing.tgz."""
    if path.suffix == ".tgz":
        with tarfile.open(path, "r:gz") as archive:
            member = archive.extractfile(CAL_HOUSING_MEMBER)
            if member is None:
                raise ValueError(f"{CAL_HOUSING_MEMBER} is not a file in the archive")
            text = member.read().decode("ascii")
    else:
        text = path.read_text(encoding="ascii")
    return [row for row in csv.reader(io.StringIO(text)) if row]


def _california_features(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 features and the target of scikit-learn's California housing from cal_housing.data's 9 columns.

    The file holds block totals (longitude, latitude, median age, rooms, bedrooms, population,
    households, median income, median value); per-household averages make blocks of any size
    comparable, and the value is in units of $100,000.
    """
    lon, lat, age, rooms, bedrooms, population, households, income, value = values.T
    features = np.stack(
        [income, age, rooms / households, bedrooms / households, population, population / households, lat, lon], axis=1
    )  # (N, 8)
    return features, value[:, None] / 100_000.0  # (N, 1)


# --------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class TabularSpec:
    """One dataset: its task, file and columns."""

    #: "regression" or "classification"
    task: Literal["regression", "classification"]
    #: accepted file paths under ``<root>/<dataset>/``, first the one named in errors; empty: bundled with scikit-learn
    files: tuple[str, ...] = ()
    #: parses the file into rows of cell texts (header row dropped)
    parse: Callable[[Path], Rows] | None = None
    #: columns of a row: every column the file must have, the target columns among them
    columns: int = 0
    targets: tuple[int, ...] = (-1,)
    #: how to get the file, for the missing-file error
    source: str = ""
    #: seeded train / test splits: the split index ``--data.split`` picks one (5 for protein, 20 otherwise)
    num_splits: int = 20
    #: the test split's share of the rows by default (Hernández-Lobato & Adams use 90 / 10 on UCI)
    test_fraction: float = 0.1
    #: classes of a classification dataset
    num_classes: int = 0
    #: columns one-hot encoded unless ``--data.categorical`` says otherwise (indices into the features)
    categorical: tuple[int, ...] = ()
    #: turns the parsed numeric columns into (features, targets) where that is more than picking columns
    derive: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None


def _uci(folder: str, name: str) -> str:
    return f"download {UCI}/{folder}/{name}"


SPECS: dict[str, TabularSpec] = {
    "diabetes": TabularSpec("regression", test_fraction=0.2),
    "breast_cancer": TabularSpec("classification", test_fraction=0.2, num_classes=2),
    "wine": TabularSpec("classification", test_fraction=0.2, num_classes=3),
    "concrete": TabularSpec(
        "regression", ("Concrete_Data.csv",), _delimited(",", header=True), 9,
        source=f"{_uci('concrete/compressive', 'Concrete_Data.xls')} (Excel 97) and save its sheet as CSV "
        "with the header row, named Concrete_Data.csv",
    ),
    "energy": TabularSpec(
        "regression", ("ENB2012_data.xlsx",), _xlsx(header=True), 10, targets=(8,),  # Y1, heating load
        source=_uci("00242", "ENB2012_data.xlsx"),
    ),
    "kin8nm": TabularSpec(
        "regression", ("kin8nm.csv",), _delimited(",", header=True), 9,
        source="download OpenML dataset 189 (https://www.openml.org/d/189) as CSV, named kin8nm.csv",
    ),
    "naval": TabularSpec(
        "regression", ("data.txt",), _delimited(None, header=False), 18,  # the turbine decay coefficient
        source=f"{_uci('00316', 'UCI%20CBM%20Dataset.zip')} and take data.txt out of it",
    ),
    "power": TabularSpec(
        "regression", ("Folds5x2_pp.xlsx",), _xlsx(header=True), 5,
        source=f"{_uci('00294', 'CCPP.zip')} and take Folds5x2_pp.xlsx out of it",
    ),
    "protein": TabularSpec(
        "regression", ("CASP.csv",), _delimited(",", header=True), 10, targets=(0,),  # RMSD first
        source=_uci("00265", "CASP.csv"), num_splits=5,
    ),
    "wine_quality_red": TabularSpec(
        "regression", ("winequality-red.csv",), _delimited(";", header=True), 12,
        source=_uci("wine-quality", "winequality-red.csv"),
    ),
    "yacht": TabularSpec(
        "regression", ("yacht_hydrodynamics.data",), _delimited(None, header=False), 7,
        source=_uci("00243", "yacht_hydrodynamics.data"),
    ),
    "california": TabularSpec(
        "regression", ("cal_housing.tgz", CAL_HOUSING_MEMBER), _cal_housing_rows, 9,
        source="download https://www.dcc.fc.up.pt/~ltorgo/Regression/cal_housing.tgz (the archive "
        "scikit-learn's fetch_california_housing uses; extracted or not)",
        derive=_california_features,
    ),
}
DATASETS = tuple(SPECS)


def dataset_path(dataset: str, root: Path | str) -> Path:
    """The file ``dataset`` is read from: the first accepted file present under ``<root>/<dataset>/``,
    else the DatasetError naming the first one, where it was expected and how to get it."""
    spec = SPECS[dataset]
    folder = Path(root).expanduser() / dataset
    for name in spec.files:
        if (folder / name).is_file():
            return folder / name
    return require_file(folder / spec.files[0], dataset, f"{spec.source}, into {folder}/ (the folder {dataset}/ under --data.data_dir)")


def _bundled(dataset: str) -> Table:
    """scikit-learn's bundled copy (no download)."""
    from sklearn import datasets  # scikit-learn only when a bundled table is read

    loader: Callable = getattr(datasets, f"load_{dataset}")
    data = loader()
    targets = data.target.astype(np.int64) if SPECS[dataset].task == "classification" else data.target[:, None]
    return Table(data.data.astype(np.float64), targets, [str(n) for n in data.feature_names])


def _numeric(rows: Rows, path: Path, dataset: str, columns: int) -> np.ndarray:
    """Rows of cell texts as float64 (N, columns); a short, long or non-numeric row names itself."""
    if not rows:
        raise damaged_file_error(path, dataset, "no data rows", SPECS[dataset].source)
    for i, row in enumerate(rows):
        if len(row) != columns:
            why = f"data row {i + 1} has {len(row)} columns, expected {columns}"
            raise damaged_file_error(path, dataset, why, SPECS[dataset].source)
    try:
        return np.array([[float(cell) for cell in row] for row in rows], dtype=np.float64)
    except ValueError as e:
        raise damaged_file_error(path, dataset, f"a cell is not a number: {e}", SPECS[dataset].source) from e


def read_table(dataset: str, root: Path | str = "data") -> Table:
    """``dataset`` as a :class:`Table`, read from its native file under ``<root>/<dataset>/`` (or bundled)."""
    spec = SPECS[dataset]
    if not spec.files:
        return _bundled(dataset)
    path = dataset_path(dataset, root)
    assert spec.parse is not None, f"{dataset} names a file but no parser"
    try:
        rows = spec.parse(path)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, tarfile.TarError, zipfile.BadZipFile) as e:
        # ElementTree's ParseError is a SyntaxError
        raise damaged_file_error(path, dataset, f"cannot parse: {e}", spec.source) from e
    except SyntaxError as e:
        raise damaged_file_error(path, dataset, f"cannot parse its XML: {e}", spec.source) from e
    values = _numeric(rows, path, dataset, spec.columns)  # (N, columns)
    if spec.derive is not None:
        features, targets = spec.derive(values)
        return Table(features, targets, [f"x{i}" for i in range(features.shape[1])])
    target_columns = [t % spec.columns for t in spec.targets]
    feature_columns = [c for c in range(spec.columns) if c not in target_columns]
    return Table(values[:, feature_columns], values[:, target_columns], [f"x{c}" for c in feature_columns])


def categorical_columns(dataset: str, given: Sequence[int] | None) -> tuple[int, ...]:
    """The feature columns to one-hot: ``given`` (``--data.categorical``) if set, else the dataset's default."""
    return tuple(SPECS[dataset].categorical if given is None else given)
