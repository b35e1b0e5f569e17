"""Tabular readers against tiny files in each dataset's native format, and the errors users see."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ensemble_lab.data.tabular_readers import SPECS, read_table
from ensemble_lab.data.xlsx import read_first_sheet
from ensemble_lab.errors import DatasetError
from tests.data.tabular_formats import COLUMNS, exact, write_native, write_xlsx

#: the target columns of each file, from the datasets' documentation (not from the readers' table)
TARGETS = {"concrete": [8], "energy": [8], "kin8nm": [8], "naval": [17], "power": [4], "protein": [0],
           "wine_quality_red": [11], "yacht": [6]}
DOWNLOADED = [name for name, spec in SPECS.items() if spec.files]


def _values(dataset: str, n: int = 11, seed: int = 0) -> np.ndarray:
    """Positive values of mixed magnitude, like the real columns."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 2.0, (n, COLUMNS[dataset])) * 10.0 ** rng.integers(-2, 3, COLUMNS[dataset])


@pytest.mark.parametrize("dataset", sorted(TARGETS))
def test_every_reader_reads_its_native_file(tmp_path: Path, dataset: str) -> None:
    values = _values(dataset)
    write_native(tmp_path, dataset, values)
    stored = exact(values, "{:12.3E}" if dataset == "naval" else "{:.6f}")
    table = read_table(dataset, tmp_path)
    features = [c for c in range(COLUMNS[dataset]) if c not in TARGETS[dataset]]
    np.testing.assert_array_equal(table.features, stored[:, features])
    np.testing.assert_array_equal(table.targets, stored[:, TARGETS[dataset]])
    assert table.features.dtype == np.float64 and table.targets.shape == (len(values), 1)


@pytest.mark.parametrize("extracted", [False, True])
def test_california_from_the_tarball_or_extracted(tmp_path: Path, extracted: bool) -> None:
    values = _values("california", seed=3)
    write_native(tmp_path, "california", values, extracted=extracted)
    v = exact(values)
    lon, lat, age, rooms, bedrooms, population, households, income, value = (v[:, i] for i in range(9))
    table = read_table("california", tmp_path)
    # scikit-learn's feature order: MedInc, HouseAge, AveRooms, AveBedrms, Population, AveOccup, Latitude, Longitude
    expected = np.column_stack([income, age, rooms / households, bedrooms / households, population,
                                population / households, lat, lon])
    np.testing.assert_allclose(table.features, expected, rtol=1e-12)
    np.testing.assert_allclose(table.targets[:, 0], value / 1e5, rtol=1e-12)


@pytest.mark.parametrize("dataset", ["diabetes", "breast_cancer", "wine"])
def test_bundled_tables_are_scikit_learns(dataset: str) -> None:
    from sklearn import datasets

    data = getattr(datasets, f"load_{dataset}")()
    table = read_table(dataset, "/nonexistent")  # bundled: no root is read
    np.testing.assert_array_equal(table.features, data.data)
    if dataset == "diabetes":
        np.testing.assert_array_equal(table.targets, data.target[:, None])
    else:
        np.testing.assert_array_equal(table.targets, data.target)
        assert table.targets.dtype == np.int64 and table.targets.max() + 1 == SPECS[dataset].num_classes


@pytest.mark.parametrize("dataset", DOWNLOADED)
def test_missing_file_is_one_line_naming_file_root_and_source(tmp_path: Path, dataset: str) -> None:
    with pytest.raises(DatasetError) as err:
        read_table(dataset, tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / dataset / SPECS[dataset].files[0]) in message
    assert "--data.data_dir" in message and "http" in message


def test_xlsx_reads_the_first_sheet_in_workbook_order(tmp_path: Path) -> None:
    first, second = np.array([[1.5, 2.0]]), np.array([[7.0, 8.0]])
    # the workbook's first sheet is stored as sheet2.xml: order comes from workbook.xml, not the member names
    write_xlsx(tmp_path / "book.xlsx", [(["a", "b & c"], first), (["x", "y"], second)], parts=["sheet2.xml", "sheet1.xml"])
    assert read_first_sheet(tmp_path / "book.xlsx") == [["a", "b & c"], ["1.500000", "2.000000"]]


def test_damaged_files_name_themselves(tmp_path: Path) -> None:
    path = write_native(tmp_path, "yacht", _values("yacht"))
    path.write_text(path.read_text() + "1.0 2.0 3.0\n")  # a short row
    with pytest.raises(DatasetError, match=r"damaged \(data row 12 has 3 columns, expected 7\)") as err:
        read_table("yacht", tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    path.write_text("1 2 3 4 5 6 seven\n")
    with pytest.raises(DatasetError, match="not a number"):
        read_table("yacht", tmp_path)
    xlsx = write_native(tmp_path, "energy", _values("energy"))
    xlsx.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="cannot parse"):
        read_table("energy", tmp_path)
