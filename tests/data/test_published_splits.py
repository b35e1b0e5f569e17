"""--data.split_files: the UCI benchmark's published split files, written here in their own format (whitespace-
separated numbers, one 0-based index per line), read into the tabular datamodule's rows."""

from pathlib import Path

import numpy as np
import pytest

from ensemble_lab.data import TabularDataModule
from ensemble_lab.errors import ConfigError, DatasetError
from tests.conftest import TINY_TRAINER, read_results, run_dirs

ROWS, FEATURES = 40, 3


def write_release(folder: Path, splits: int = 2) -> np.ndarray:
    """A release folder: data.txt (features in columns 0..2, the target last) and ``splits`` 90 / 10 splits."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = rng.normal(size=(ROWS, FEATURES + 1))
    data[:, -1] = data[:, :FEATURES] @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=ROWS)
    np.savetxt(folder / "data.txt", data)
    np.savetxt(folder / "index_features.txt", np.arange(FEATURES), fmt="%d")
    np.savetxt(folder / "index_target.txt", [FEATURES], fmt="%d")
    for s in range(splits):
        order = np.random.default_rng(100 + s).permutation(ROWS)
        np.savetxt(folder / f"index_train_{s}.txt", order[:36], fmt="%d")
        np.savetxt(folder / f"index_test_{s}.txt", order[36:], fmt="%d")
    return data


def test_the_published_split_gives_the_rows_of_its_files(tmp_path: Path) -> None:
    data = write_release(tmp_path / "concrete")
    dm = TabularDataModule("concrete", split=1, split_files=str(tmp_path / "concrete"), ood_fraction=0.0)
    test_rows = np.loadtxt(tmp_path / "concrete" / "index_test_1.txt", dtype=int)
    train_rows = np.loadtxt(tmp_path / "concrete" / "index_train_1.txt", dtype=int)
    assert list(dm.rows["test"]) == list(test_rows)  # the file's rows, in its order
    assert sorted([*dm.rows["train"], *dm.rows["val"]]) == sorted(train_rows)  # validation comes out of training
    train = data[dm.rows["train"]]
    mean, std = train.mean(0), train.std(0)  # standardised on the training rows alone (numpy's population std)
    dm.setup("test")
    features, targets = dm.test_sets["concrete"].images.numpy(), dm.test_sets["concrete"].labels.numpy()
    np.testing.assert_allclose(features, (data[test_rows, :FEATURES] - mean[:FEATURES]) / std[:FEATURES], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(targets[:, 0] * dm.target_std[0] + dm.target_mean[0], data[test_rows, FEATURES], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda f: None, r"--data.split must be 0..1 for the published splits"),  # split 2 of a 2-split release
        (lambda f: (f / "index_target.txt").unlink(), "index_target.txt"),
        (lambda f: np.savetxt(f / "index_test_2.txt", [0, 99], fmt="%d"), "an index outside 0..39"),
        (lambda f: np.savetxt(f / "index_test_2.txt", np.loadtxt(f / "index_train_2.txt", dtype=int)[:3], fmt="%d"), "shares rows"),
    ],
)
def test_bad_release_folders_are_one_line(tmp_path: Path, change, message: str) -> None:
    folder = tmp_path / "concrete"
    write_release(folder, splits=2 if message.startswith("--data.split") else 3)
    change(folder)
    with pytest.raises((ConfigError, DatasetError), match=message) as refused:
        TabularDataModule("concrete", split=2, split_files=str(folder))
    assert "\n" not in str(refused.value)


def test_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such folder"):
        TabularDataModule("concrete", split_files=str(tmp_path / "nowhere"))


def test_fit_and_test_on_a_published_split(cli, tmp_path: Path) -> None:
    write_release(tmp_path / "release")
    cli("fit", "--model=SingleModel", "--model.backbone=mlp", "--model.backbone.hidden_sizes=[8]", "--data=TabularDataModule",
        "--data.dataset=concrete", f"--data.split_files={tmp_path / 'release'}", "--data.split=1", *TINY_TRAINER,
        "--figures=false")  # fmt: skip
    (run,) = run_dirs(tmp_path)
    results = read_results(run)
    assert results["sets"]["concrete"]["role"] == "id" and np.isfinite(results["sets"]["concrete"]["rmse"])
