"""TabularDataModule: the gap along PC1, training-row standardisation, seeded splits, the shift noise,
one-hot columns, and short end-to-end fits; each against numpy / scikit-learn computed here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from ensemble_lab.data import TabularDataModule
from ensemble_lab.data.tabular_prep import one_hot
from ensemble_lab.errors import ConfigError, DatasetError
from tests.conftest import TINY_TRAINER, read_results, run_dirs
from tests.data.tabular_formats import exact, write_native

LOADERS = {"breast_cancer": load_breast_cancer, "wine": load_wine, "diabetes": load_diabetes}


def _served(dm: TabularDataModule, name: str) -> np.ndarray:
    """Features of a split as the datamodule serves them, float64 for comparison."""
    sets = {"train": dm.train_set, "val": dm.val_set, "test": dm.test_sets[dm.dataset]}
    return sets[name].images.double().numpy()


@pytest.mark.parametrize("dataset", ["wine", "breast_cancer", "diabetes"])
def test_gap_is_the_top_decile_along_pc1_of_the_non_test_rows(dataset: str) -> None:
    dm = TabularDataModule(dataset)
    dm.setup()
    x = LOADERS[dataset]().data
    rows = dm.rows
    rest = np.sort(np.concatenate([rows["train"], rows["val"], rows["gap"]]))
    assert len(np.intersect1d(rest, rows["test"])) == 0 and len(rest) + len(rows["test"]) == len(x)
    # scikit-learn's PCA of the standardised non-test rows, sign fixed so the largest loading is positive
    z = StandardScaler().fit_transform(x[rest])
    component = PCA(n_components=1).fit(z).components_[0]
    component *= np.sign(component[np.argmax(np.abs(component))])
    scores = z @ component
    count = round(0.1 * len(rest))
    expected = rest[np.argsort(scores)[::-1][:count]]
    np.testing.assert_array_equal(np.sort(expected), rows["gap"])
    assert scores[np.isin(rest, rows["gap"])].min() > scores[~np.isin(rest, rows["gap"])].max()
    # no gap row is trained or validated on
    assert not np.isin(rows["gap"], np.concatenate([rows["train"], rows["val"]])).any()
    # the ood set served is exactly those rows (features in training-standardised units)
    served = dm.test_sets[f"{dataset}_gap"].images.double().numpy()
    np.testing.assert_allclose(served, (x[rows["gap"]] - dm.feature_mean) / dm.feature_std, atol=1e-5)


def test_standardisation_uses_training_rows_only() -> None:
    dm = TabularDataModule("breast_cancer")
    dm.setup()
    x = load_breast_cancer().data
    train = x[dm.rows["train"]]
    mean, std = train.mean(axis=0), train.std(axis=0)
    for name in ("train", "val", "test"):
        np.testing.assert_allclose(_served(dm, name), (x[dm.rows[name]] - mean) / std, rtol=1e-5, atol=1e-5)
    # statistics of all rows would give something else: the check above can tell the two apart
    assert np.abs((x.mean(axis=0) - mean) / std).max() > 1e-3


def test_regression_targets_standardised_on_training_rows_and_served_as_float() -> None:
    dm = TabularDataModule("diabetes", batch_size=16)
    dm.setup()
    y = load_diabetes().target
    train = y[dm.rows["train"]]
    assert dm.task == "regression" and dm.num_targets == 1 and dm.input_shape == (10,)
    np.testing.assert_allclose(dm.target_mean, [train.mean()])
    np.testing.assert_allclose(dm.target_std, [train.std()])
    features, targets, indices = next(iter(dm.train_dataloader()))
    assert features.shape == (16, 10) and features.dtype == torch.float32
    assert targets.shape == (16, 1) and targets.dtype == torch.float32 and indices.dtype == torch.long
    np.testing.assert_allclose(targets[:, 0].numpy(), (train[indices.numpy()] - train.mean()) / train.std(), rtol=1e-5)
    gap = dm.test_sets["diabetes_gap"].labels[:, 0].double().numpy()  # the gap keeps its targets
    np.testing.assert_allclose(gap * dm.target_std[0] + dm.target_mean[0], y[dm.rows["gap"]], rtol=1e-5)
    with pytest.raises(ConfigError, match=r"regression dataset: it has targets \(num_targets\), not classes"):
        dm.num_classes


def test_splits_are_seeded_and_disjoint() -> None:
    a, b = TabularDataModule("wine"), TabularDataModule("wine")
    for name in ("train", "val", "test", "gap"):
        np.testing.assert_array_equal(a.rows[name], b.rows[name])
    parts = np.concatenate(list(a.rows.values()))
    np.testing.assert_array_equal(np.sort(parts), np.arange(178))  # every row in exactly one part
    other_split = TabularDataModule("wine", split=1)
    assert not np.array_equal(other_split.rows["test"], a.rows["test"])
    other_val = TabularDataModule("wine", split_seed=1)
    np.testing.assert_array_equal(other_val.rows["test"], a.rows["test"])  # split_seed moves validation only
    np.testing.assert_array_equal(other_val.rows["gap"], a.rows["gap"])
    assert not np.array_equal(other_val.rows["val"], a.rows["val"])
    assert (len(a.rows["test"]), len(a.rows["val"])) == (round(0.2 * 178), round(0.1 * (178 - 36 - 14)))


@pytest.mark.parametrize("k", [0.0, 0.5, 2.0])
def test_shift_noise_is_k_training_standard_deviations(k: float) -> None:
    dm = TabularDataModule("breast_cancer", shift_noise=k)
    dm.setup("test")
    ident, shifted = dm.test_sets["breast_cancer"], dm.test_sets["breast_cancer_noise"]
    torch.testing.assert_close(shifted.labels, ident.labels)
    # in the dataset's units the noise of feature j has std k · (training std of j)
    noise = (shifted.images - ident.images).double().numpy() * dm.feature_std  # (N, F)
    train_std = load_breast_cancer().data[dm.rows["train"]].std(axis=0)
    ratio = noise / train_std  # should be standard normal times k
    assert abs(ratio.mean()) < 0.1 * max(k, 0.1)
    n = ratio.size  # 114 × 30: the sample std is within 3 of its standard errors k / sqrt(2n)
    assert abs(ratio.std() - k) <= 3 * k / np.sqrt(2 * n) + 1e-6
    again = TabularDataModule("breast_cancer", shift_noise=k)
    again.setup("test")
    torch.testing.assert_close(again.test_sets["breast_cancer_noise"].images, shifted.images)  # seeded


def test_one_hot_by_hand_and_in_the_datamodule(tmp_path: Path) -> None:
    x = np.array([[1.0, 3.0, 0.5], [2.0, 5.0, 0.5], [1.0, 4.0, 0.7]])
    expected = np.array([[3.0, 1, 0, 1, 0], [5.0, 0, 1, 1, 0], [4.0, 1, 0, 0, 1]])
    np.testing.assert_array_equal(one_hot(x, [0, 2]), expected)
    # yacht's first column takes 3 values: 5 numeric features + 3 indicators
    values = np.random.default_rng(0).uniform(1, 2, (60, 7))
    values[:, 0] = np.tile([-5.0, -2.3, 0.0], 20)
    write_native(tmp_path, "yacht", values)
    dm = TabularDataModule("yacht", data_dir=str(tmp_path), categorical=[0])
    dm.setup()
    assert dm.input_shape == (8,)
    raw = exact(values)
    rows = dm.rows["train"]
    served = _served(dm, "train") * dm.feature_std + dm.feature_mean  # back in the table's units
    indicators = (raw[rows, 0, None] == np.array([-5.0, -2.3, 0.0])).astype(float)
    np.testing.assert_allclose(served[:, 5:], indicators, atol=1e-6)
    np.testing.assert_allclose(served[:, :5], raw[rows, 1:6], rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"split": 20}, "--data.split must be 0..19"),
        ({"dataset": "protein", "split": 5}, "--data.split must be 0..4"),
        ({"val_fraction": 1.0}, "--data.val_fraction is a fraction"),
        ({"ood_fraction": -0.1}, "--data.ood_fraction"),
        ({"shift_noise": -1.0}, "--data.shift_noise"),
        ({"categorical": [13]}, "column 13 does not exist"),
    ],
)
def test_bad_options_are_config_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    kwargs = {"dataset": "wine", **kwargs}
    with pytest.raises((ConfigError, DatasetError), match=message):
        TabularDataModule(**kwargs, data_dir=str(tmp_path))


def test_without_a_gap_there_is_no_ood_set() -> None:
    dm = TabularDataModule("wine", ood_fraction=0.0)
    dm.setup()
    assert dm.test_set_roles == {"wine": "id", "wine_noise": "shift"} and len(dm.rows["gap"]) == 0
    assert len(dm.test_dataloader()) == 2


def test_missing_download_is_one_line_before_training(cli, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", "--model=SingleModel", "--model.backbone=mlp", "--data=TabularDataModule",
            "--data.dataset=kin8nm", "--data.data_dir=empty", *TINY_TRAINER)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "kin8nm file 'kin8nm.csv' not found" in err and "--data.data_dir" in err and "Traceback" not in err


def test_a_regression_table_makes_a_regression_model(cli, tmp_path: Path) -> None:
    cli("fit", "--model=SingleModel", "--model.backbone=mlp", "--data=TabularDataModule",
        "--data.dataset=diabetes", *TINY_TRAINER, "--figures=false")  # fmt: skip
    (run,) = run_dirs(tmp_path)
    sets = read_results(run)["sets"]
    assert set(sets) == {"diabetes", "diabetes_noise", "diabetes_gap"}
    assert all(metrics["rmse"] > 0 and "acc" not in metrics for metrics in sets.values())


@pytest.mark.slow
@pytest.mark.parametrize("method,dataset", [("SingleModel", "breast_cancer"), ("BatchEnsemble", "wine")])
def test_fit_on_a_bundled_table_with_the_mlp(cli, tmp_path: Path, method: str, dataset: str) -> None:
    members = ["--model.num_members=2"] if method == "BatchEnsemble" else []
    cli("fit", f"--model={method}", *members, "--model.backbone=mlp", "--model.backbone.hidden_sizes=[16]",
        "--data=TabularDataModule", f"--data.dataset={dataset}", "--data.batch_size=32", *TINY_TRAINER)
    results = read_results(run_dirs(tmp_path)[-1])
    roles = {name: s["role"] for name, s in results["sets"].items()}
    assert roles == {dataset: "id", f"{dataset}_noise": "shift", f"{dataset}_gap": "ood"}
    assert 0.0 <= results["sets"][dataset]["acc"] <= 1.0 and np.isfinite(results["sets"][dataset]["nll"])
