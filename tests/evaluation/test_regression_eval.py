"""A regression run end to end: results.json's metrics are those of the saved predictions, in original units."""

import csv

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes

from ensemble_lab.metrics import registry
from ensemble_lab.metrics.regression import regression_metrics
from tests.conftest import REPO, read_results, run_dirs

QUICK = [
    "--trainer.max_epochs=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--model.backbone.hidden_sizes=[8]",
    "--figures=true",
    "--save_predictions=true",
]


@pytest.mark.slow
def test_regression_results_are_the_saved_predictions_metrics(cli, tmp_path):
    config = REPO / "configs" / "tabular" / "diabetes_deep_ensemble.yaml"
    cli("fit", f"--config={config}", "--model.num_members=2", "--checkpoint.monitor=val/rmse", "--calibration=temperature",
        "--eval_sets_every=2", *QUICK)  # fmt: skip
    (run,) = run_dirs(tmp_path)
    results = read_results(run)
    assert {m["role"] for m in results["sets"].values()} == {"id", "shift", "ood"}
    raw_targets = load_diabetes().target
    for name, metrics in results["sets"].items():
        saved = np.load(run / "predictions" / f"{name}.npz")
        mean, var, targets = saved["mean"], saved["var"], saved["targets"]
        assert mean.shape == var.shape == (2, targets.shape[0], 1) and targets.shape[1] == 1
        # original units: every saved target is one of the dataset's raw values
        assert np.abs(targets[:, 0, None] - raw_targets[None]).min(axis=1).max() < 1e-3
        expected = regression_metrics(*(torch.as_tensor(a, dtype=torch.float64) for a in (mean, var, targets)))
        for key, value in expected.items():
            assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, key)
        rmse = np.sqrt(np.mean((mean.mean(axis=0) - targets) ** 2))
        assert metrics["rmse"] == pytest.approx(rmse, rel=1e-5)
        for key in metrics:
            assert key == "role" or registry.metric(key).task in ("regression", "any"), key
    gap = results["sets"]["diabetes_gap"]
    assert gap["auroc_variance"] is not None and gap["auroc_epistemic"] is not None and gap["rmse"] > 0  # labels kept
    # variance scaling: the calibrated sets scale every variance by the fitted s
    scale = results["calibration"]["variance_scale"]
    saved = np.load(run / "predictions" / "diabetes.npz")
    scaled = regression_metrics(*(torch.as_tensor(a, dtype=torch.float64) for a in (saved["mean"], saved["var"] * scale, saved["targets"])))
    assert results["sets_calibrated"]["diabetes"]["nll"] == pytest.approx(scaled["nll"], rel=1e-4)
    assert results["calibration"]["val_nll_calibrated"] <= results["calibration"]["val_nll"] + 1e-9
    # the regression validation curves, and no accuracy
    with open(next(run.glob("metrics.csv"))) as handle:
        columns = set(next(csv.reader(handle)))
    assert {"val/nll", "val/rmse", "val/crps", "val/epistemic_share", "train/loss_epoch"} <= columns
    assert {"val/diabetes_gap/rmse", "val/diabetes_gap/auroc_variance"} <= columns  # --eval_sets_every
    assert "train/acc" not in columns and "val/acc" not in columns
    assert "val/weight_cosine" in columns  # the members' weight cosine, as for classification
    # the regression figures (figures/regression.py), not the classification ones
    assert sorted(p.name for p in (run / "figures").iterdir()) == ["coverage_calibration.png", "predictive_bands.png"]
    assert all(p.stat().st_size > 10_000 for p in (run / "figures").iterdir())
