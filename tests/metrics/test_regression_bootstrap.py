"""The paired bootstrap of regression metrics (metrics/regression_bootstrap.py) against the metrics of the resampled rows."""

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from ensemble_lab.metrics import registry
from ensemble_lab.metrics.regression import ood_scores, regression_metrics
from ensemble_lab.metrics.regression_bootstrap import bootstrap_regression, recomputable
from ensemble_lab.metrics.significance import resample_indices
from tests.metrics.test_regression import gaussians

#: every per-set metric the bootstrap recomputes (nll is an "any" row, shared with classification)
PER_SET = registry.names("regression", recomputable=True, needs_ood=False)


def mixture_nll_scipy(mean: np.ndarray, var: np.ndarray, targets: np.ndarray) -> float:
    """Mean over rows of −log (1/M) Σ_m Π_d N(y_d; μ_md, σ²_md), with scipy."""
    member = norm.logpdf(targets[None], mean, np.sqrt(var)).sum(-1)  # (M, N)
    return float(-(logsumexp(member, axis=0) - math.log(mean.shape[0])).mean())


def test_every_regression_metric_but_error_correlation_is_recomputable():
    assert set(PER_SET) >= {"rmse", "mae", "nll", "crps", "coverage_90", "width_90", "qce", "epistemic_share"}
    assert "error_correlation" not in PER_SET and not recomputable("error_correlation") and not recomputable("acc")
    mean, var, targets = gaussians(2, 10, 1, seed=0)
    with pytest.raises(ValueError, match="error_correlation"):
        bootstrap_regression([(mean, var)], targets, ["error_correlation"], resamples=2)


def test_each_resample_equals_the_metrics_of_the_resampled_rows():
    """Two runs of a row: every replicate is the mean over the runs of regression_metrics on the drawn rows, and its
    NLL equals scipy's mixture NLL of those rows."""
    runs = [gaussians(3, 40, 2, seed=s)[:2] for s in (1, 2)]
    targets = gaussians(3, 40, 2, seed=1)[2]
    point, replicates = bootstrap_regression(runs, targets, PER_SET, resamples=4, seed=5, stream="diabetes")
    whole = [regression_metrics(mean, var, targets) for mean, var in runs]
    for metric in PER_SET:
        expected = np.mean([metrics[metric] for metrics in whole])
        assert point[metric] == pytest.approx(expected, rel=1e-9, abs=1e-12), metric
    for r, index in enumerate(resample_indices(40, 4, 5, "diabetes")):
        drawn = torch.from_numpy(index)
        per_run = [regression_metrics(mean[:, drawn], var[:, drawn], targets[drawn]) for mean, var in runs]
        for metric in PER_SET:
            expected = np.mean([metrics[metric] for metrics in per_run])
            assert replicates[metric][r] == pytest.approx(expected, rel=1e-9, abs=1e-12), (metric, r)
        scipy_nll = np.mean([mixture_nll_scipy(mean[:, index].numpy(), var[:, index].numpy(), targets[index].numpy()) for mean, var in runs])
        assert replicates["nll"][r] == pytest.approx(scipy_nll, rel=1e-10)


def test_ood_detection_resamples_both_sets_and_a_single_model_has_no_epistemic_score():
    id_mean, id_var, id_targets = gaussians(3, 30, 1, seed=3)
    gap_mean, gap_var, gap_targets = gaussians(3, 20, 1, seed=4)
    gap_var = gap_var * 3  # the gap rows are more uncertain
    metrics = ["auroc_variance", "auroc_epistemic", "rmse"]
    point, replicates = bootstrap_regression([(gap_mean, gap_var)], gap_targets, metrics, resamples=3, seed=2, stream="gap",
                                             id_stored=[(id_mean, id_var)])  # fmt: skip
    id_scores, gap_scores = ood_scores(id_mean, id_var), ood_scores(gap_mean, gap_var)
    labels = np.r_[np.zeros(30), np.ones(20)]
    assert point["auroc_variance"] == pytest.approx(roc_auc_score(labels, np.r_[id_scores["variance"], gap_scores["variance"]]))
    gap_draws, id_draws = resample_indices(20, 3, 2, "gap"), resample_indices(30, 3, 2, "gap/id")
    for r, (gap_index, id_index) in enumerate(zip(gap_draws, id_draws)):
        scores = np.r_[id_scores["epistemic"].numpy()[id_index], gap_scores["epistemic"].numpy()[gap_index]]
        expected = roc_auc_score(np.r_[np.zeros(30), np.ones(20)], scores)
        assert replicates["auroc_epistemic"][r] == pytest.approx(expected, rel=1e-12)
    single_point, single = bootstrap_regression([(gap_mean[:1], gap_var[:1])], gap_targets, metrics, resamples=3,
                                                id_stored=[(id_mean[:1], id_var[:1])])  # fmt: skip
    assert math.isnan(single_point["auroc_epistemic"]) and np.isnan(single["auroc_epistemic"]).all()
    assert np.isfinite(single["auroc_variance"]).all()
    with pytest.raises(ValueError, match="id set"):
        bootstrap_regression([(gap_mean, gap_var)], gap_targets, ["auroc_variance"], resamples=2)
