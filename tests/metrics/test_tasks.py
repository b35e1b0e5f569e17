"""Tests of ensemble_lab.metrics.tasks: both tasks read member outputs (M, B, K) under one interface.

References: a per-member loop of torch's cross-entropy, scipy's Gaussian log density, numpy's softplus,
scikit-learn's roc_auc_score for OOD detection, and the classification functions the classification task
delegates to (its behaviour must stay theirs).
"""

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.metrics.calibration import apply_temperature, fit_temperature, log_probs
from ensemble_lab.metrics.classification import predictive_metrics
from ensemble_lab.metrics.ood import ood_metrics
from ensemble_lab.metrics.tasks import ClassificationTask, RegressionTask


def test_classification_task_delegates_to_the_classification_functions():
    gen = torch.Generator().manual_seed(0)
    outputs = torch.randn(3, 40, 5, generator=gen)
    targets = torch.randint(0, 5, (40,), generator=gen)
    task = ClassificationTask()
    assert task.output_size(5) == 5
    expected_loss = torch.stack([F.cross_entropy(outputs[m], targets) for m in range(3)]).mean()
    torch.testing.assert_close(task.loss(outputs, targets), expected_loss)
    own = torch.randint(0, 5, (3, 40), generator=gen)  # member m's own rows
    torch.testing.assert_close(task.loss(outputs, own), torch.stack([F.cross_entropy(outputs[m], own[m]) for m in range(3)]).mean())
    stored = task.predictive(outputs)
    torch.testing.assert_close(stored["member_probs"], torch.softmax(outputs, -1))
    assert task.metrics(stored, targets) == predictive_metrics(stored["member_probs"], targets)
    ood = task.predictive(torch.randn(3, 30, 5, generator=gen) * 0.2)
    assert task.ood_metrics(stored, ood) == ood_metrics(stored["member_probs"], ood["member_probs"])
    temperature = task.calibrate(stored, targets)
    torch.testing.assert_close(temperature, fit_temperature(log_probs(stored["member_probs"]), targets))
    calibrated = task.apply_calibration(stored, temperature)["member_probs"]
    torch.testing.assert_close(calibrated, apply_temperature(log_probs(stored["member_probs"]), temperature))


def regression_outputs(num_members: int, num_rows: int, num_targets: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw member outputs (M, B, 2·D) and standardised targets (B, D)."""
    gen = torch.Generator().manual_seed(seed)
    outputs = torch.randn(num_members, num_rows, 2 * num_targets, generator=gen, dtype=torch.float64)
    return outputs, torch.randn(num_rows, num_targets, generator=gen, dtype=torch.float64)


def test_regression_task_stores_means_and_variances_in_original_units():
    outputs, targets = regression_outputs(3, 20, 2, seed=1)
    task = RegressionTask(target_mean=[5.0, -1.0], target_std=[2.0, 0.1], min_variance=1e-4)
    assert task.output_size(2) == 4
    stored = task.predictive(outputs)
    raw = outputs.float().double().numpy()
    np.testing.assert_allclose(stored["mean"].numpy(), raw[..., :2] * [2.0, 0.1] + [5.0, -1.0], rtol=1e-6)
    variance = np.log1p(np.exp(raw[..., 2:])) + 1e-4
    np.testing.assert_allclose(stored["var"].numpy(), variance * np.array([2.0, 0.1]) ** 2, rtol=1e-6)
    np.testing.assert_allclose(task.evaluation_targets(targets).numpy(), targets.numpy() * [2.0, 0.1] + [5.0, -1.0], rtol=1e-6)
    # no scaling given: the network's units
    plain = RegressionTask(variance="log").predictive(outputs)
    np.testing.assert_allclose(plain["var"].numpy(), np.exp(raw[..., 2:]) + 1e-6, rtol=1e-6)


def test_regression_task_loss_is_the_mean_member_nll():
    outputs, targets = regression_outputs(4, 16, 1, seed=2)
    mu, var = outputs[..., :1].numpy(), np.log1p(np.exp(outputs[..., 1:].numpy())) + 1e-6
    expected = -norm.logpdf(targets.numpy(), mu, np.sqrt(var)).sum(-1).mean()  # mean over members and rows
    assert float(RegressionTask().loss(outputs, targets)) == pytest.approx(expected, rel=1e-10)
    beta_zero = RegressionTask(loss="beta_nll", beta=0.0).loss(outputs, targets)
    assert float(beta_zero) == pytest.approx(expected, rel=1e-10)
    mse = RegressionTask(loss="mse").loss(outputs, targets)
    assert float(mse) == pytest.approx(
        ((targets.numpy() - mu) ** 2 + 0.5 * (np.log(var) + (targets.numpy() - mu) ** 2 / var)).mean(), rel=1e-10
    )


def test_regression_task_ood_detection_by_total_and_epistemic_variance():
    gen = torch.Generator().manual_seed(3)
    task = RegressionTask()
    id_stored = {"mean": torch.randn(3, 50, 1, generator=gen, dtype=torch.float64), "var": torch.ones(3, 50, 1, dtype=torch.float64)}
    ood_stored = {
        "mean": 3 * torch.randn(3, 40, 1, generator=gen, dtype=torch.float64),
        "var": torch.full((3, 40, 1), 1.5, dtype=torch.float64),
    }
    result = task.ood_metrics(id_stored, ood_stored)
    for score in ("variance", "epistemic"):
        id_scores, ood_scores = task.ood_scores(id_stored)[score].numpy(), task.ood_scores(ood_stored)[score].numpy()
        labels = np.r_[np.zeros(50), np.ones(40)]
        assert result[f"auroc_{score}"] == pytest.approx(roc_auc_score(labels, np.r_[id_scores, ood_scores]), rel=1e-12)
    np.testing.assert_allclose(task.ood_scores(id_stored)["epistemic"].numpy(), np.var(id_stored["mean"].numpy(), axis=0)[:, 0], rtol=1e-12)
    single = task.ood_metrics({k: v[:1] for k, v in id_stored.items()}, {k: v[:1] for k, v in ood_stored.items()})
    assert single["auroc_epistemic"] is None and single["auroc_variance"] is not None


def test_regression_task_metrics_and_variance_scaling():
    gen = torch.Generator().manual_seed(4)
    centre = torch.randn(4000, 1, generator=gen, dtype=torch.float64)
    stored = {"mean": centre.expand(2, -1, -1), "var": torch.full((2, 4000, 1), 0.25, dtype=torch.float64)}
    targets = centre + torch.randn(4000, 1, generator=gen, dtype=torch.float64)  # true variance 1 = 4 × 0.25
    task = RegressionTask()
    scale = task.calibrate(stored, targets)
    assert float(scale) == pytest.approx(4.0, rel=0.1)
    calibrated = task.apply_calibration(stored, scale)
    torch.testing.assert_close(calibrated["var"], stored["var"] * scale)
    before, after = task.metrics(stored, targets), task.metrics(calibrated, targets)
    assert after["nll"] < before["nll"] and after["rmse"] == before["rmse"]
    assert abs(after["coverage_90"] - 0.9) < abs(before["coverage_90"] - 0.9)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"loss": "huber"}, "unknown regression loss"),
        ({"beta": 1.5}, "beta must lie in"),
        ({"variance": "sigmoid"}, "variance parameterisation"),
        ({"min_variance": 0.0}, "min_variance"),
        ({"target_std": [1.0, 0.0]}, "target_std"),
    ],
)
def test_regression_task_rejects_bad_options_in_one_line(options, words):
    with pytest.raises(ConfigError, match=words) as info:
        RegressionTask(**options)
    assert "\n" not in str(info.value)


# ---- what the training step asks the task ---------------------------------------------------------
@pytest.mark.parametrize("own_rows", [False, True], ids=["labels-N", "labels-MN"])
def test_classification_loss_is_the_mean_of_a_per_member_cross_entropy_loop(own_rows):
    gen = torch.Generator().manual_seed(5)
    outputs = torch.randn(4, 9, 6, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 6, (4, 9) if own_rows else (9,), generator=gen)
    per_member = [F.cross_entropy(outputs[m], targets[m] if own_rows else targets) for m in range(4)]
    expected = torch.stack(per_member).mean()
    torch.testing.assert_close(ClassificationTask().loss(outputs, targets), expected, rtol=1e-12, atol=0)


def test_classification_correct_counts_the_ensembles_or_the_members_hits_as_numpy_does():
    gen = torch.Generator().manual_seed(6)
    outputs = torch.randn(3, 25, 4, generator=gen)
    shared, own = torch.randint(0, 4, (25,), generator=gen), torch.randint(0, 4, (3, 25), generator=gen)
    task = ClassificationTask()
    logits = outputs.numpy().astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    # labels (N,): every member saw the rows, the ensemble's prediction counts
    assert float(task.correct(outputs, shared)) == np.count_nonzero(probs.mean(0).argmax(-1) == shared.numpy())
    # labels (M, N): each member its own rows, the members' mean accuracy summed over rows
    hits = np.count_nonzero(logits.argmax(-1) == own.numpy())
    assert float(task.correct(outputs, own)) == pytest.approx(hits / 3, rel=1e-6)
    assert task.has_classes


def test_regression_has_no_classes_and_no_accuracy():
    outputs, targets = regression_outputs(2, 6, 1, seed=7)
    task = RegressionTask()
    assert not task.has_classes and task.correct(outputs, targets) is None


def test_target_scaling_gives_the_task_built_with_it_and_leaves_a_classifier_alone():
    outputs, _ = regression_outputs(2, 6, 2, seed=8)
    mean, std = [5.0, -1.0], [2.0, 0.1]
    built = RegressionTask("beta_nll", 0.3, "log", 1e-4, target_mean=mean, target_std=std)
    scaled = RegressionTask("beta_nll", 0.3, "log", 1e-4).with_target_scaling(mean, std)
    assert isinstance(scaled, RegressionTask)
    assert (scaled.loss_name, scaled.beta, scaled.variance, scaled.min_variance) == ("beta_nll", 0.3, "log", 1e-4)
    torch.testing.assert_close(scaled.target_mean, torch.tensor(mean, dtype=torch.float64))
    torch.testing.assert_close(scaled.target_std, torch.tensor(std, dtype=torch.float64))
    for key, value in built.predictive(outputs).items():
        torch.testing.assert_close(scaled.predictive(outputs)[key], value)
    with pytest.raises(ConfigError, match="target_std"):
        RegressionTask().with_target_scaling(mean, [1.0, 0.0])  # the scaling is checked as the constructor checks it
    classifier = ClassificationTask(per_member_temperature=True)
    assert classifier.with_target_scaling(mean, std) is classifier
