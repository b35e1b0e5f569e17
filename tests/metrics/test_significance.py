"""Welch's t-test and the paired bootstrap of evaluation/significance.py against scipy and hand-made predictions."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ensemble_lab.metrics.classification import predictive_metrics
from ensemble_lab.metrics.ood import ood_detection_weighted, ood_metrics
from ensemble_lab.metrics.significance import (
    RECOMPUTABLE,
    Comparison,
    bootstrap,
    bootstrap_replicates,
    correct,
    holm,
    is_ood_detection,
    metric_values,
    resample_indices,
    welch,
)


def test_welch_matches_scipy_and_the_formula():
    a, b = [0.91, 0.93, 0.92, 0.95], [0.80, 0.84, 0.79]
    result = welch(a, b, alpha=0.05)
    assert result.test == "welch" and result.p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-12)
    # Welch by hand: t = (mean_a - mean_b) / sqrt(va/na + vb/nb), Welch-Satterthwaite degrees of freedom
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    assert result.p == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    assert result.significant and result.difference == pytest.approx(np.mean(a) - np.mean(b))
    close = welch([0.90, 0.92, 0.91], [0.91, 0.89, 0.92])
    assert close.test == "welch" and not close.significant and close.p > 0.5


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy on constant samples, called here for the reference
def test_welch_needs_two_values_and_variance():
    with pytest.raises(ValueError, match="at least 2 values"):
        welch([0.9], [0.8, 0.7])
    constant = welch([0.5, 0.5], [0.5, 0.5])  # no variance and no difference: t = 0 / 0
    assert constant.test is None and constant.significant is None and "undefined" in constant.reason
    apart = welch([0.5, 0.5], [0.4, 0.4])  # no variance, a difference: scipy's t is infinite, p = 0
    assert apart.p == stats.ttest_ind([0.5, 0.5], [0.4, 0.4], equal_var=False).pvalue == 0.0 and apart.significant


def test_resamples_are_seeded_per_stream():
    first = [r.copy() for r in resample_indices(50, 3, seed=7, stream="digits")]
    again = list(resample_indices(50, 3, seed=7, stream="digits"))
    other = list(resample_indices(50, 3, seed=7, stream="rotated"))
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other))
    assert all(r.min() >= 0 and r.max() < 50 and r.shape == (50,) for r in first)


def predictions(correct: float, num: int = 200, members: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Member probabilities (M, N, 4) right on a ``correct`` fraction of the samples, and their targets."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 4, (num,), generator=generator)
    right = torch.rand(num, generator=generator) < correct
    predicted = torch.where(right, targets, (targets + 1) % 4)  # (N,)
    logits = 3.0 * torch.nn.functional.one_hot(predicted, 4) + 0.5 * torch.randn(members, num, 4, generator=generator)  # (M, N, 4)
    return logits.softmax(-1), targets


def test_replicates_are_the_metric_on_each_resample():
    probs, targets = predictions(0.7)
    replicates = bootstrap_replicates([probs], targets, RECOMPUTABLE, resamples=5, seed=3, stream="digits")
    for r, index in enumerate(resample_indices(len(targets), 5, seed=3, stream="digits")):
        expected = predictive_metrics(probs[:, index], targets[index])  # recomputed on the resampled set
        for metric in RECOMPUTABLE:
            assert replicates[metric][r] == pytest.approx(expected[metric], rel=1e-12, abs=1e-15)
    two = bootstrap_replicates([probs, probs.flip(0)], targets, ["acc"], resamples=5, seed=3, stream="digits")
    assert two["acc"] == pytest.approx(replicates["acc"])  # the row's mean over its runs


def test_bootstrap_separates_a_better_method_from_an_identical_one():
    base, targets = predictions(0.55, seed=1)
    better, _ = predictions(0.95, seed=1)  # same samples and targets (same seed), right far more often
    metrics = ["acc", "nll"]
    base_rep = bootstrap_replicates([base], targets, metrics, resamples=200, seed=0, stream="digits")
    better_rep = bootstrap_replicates([better], targets, metrics, resamples=200, seed=0, stream="digits")
    base_point, better_point = metric_values(base, targets, metrics), metric_values(better, targets, metrics)
    for metric in metrics:
        result = bootstrap(better_point[metric], base_point[metric], better_rep[metric], base_rep[metric], alpha=0.05)
        assert result.test == "bootstrap" and result.significant and result.level == 0.95 and result.resamples == 200
        assert result.ci[0] <= result.difference <= result.ci[1]
        assert (result.ci[0] > 0) == (metric == "acc")  # accuracy up, nll down
        same = bootstrap(base_point[metric], base_point[metric], base_rep[metric], base_rep[metric])
        assert same.ci == (0.0, 0.0) and not same.significant


def test_ood_detection_metrics_resample_both_sets():
    id_probs, _ = predictions(0.9, num=120, seed=2)
    ood_confident, ood_targets = predictions(0.9, num=80, seed=3)  # as confident as on id data: msp cannot separate
    ood_flat = torch.full((3, 80, 4), 0.25)  # maximal uncertainty on OOD data: perfectly separated
    assert is_ood_detection("auroc_msp") and not is_ood_detection("mi") and not is_ood_detection("auroc")
    full = metric_values(ood_flat, ood_targets, ["auroc_msp", "mi"], id_member_probs=id_probs)
    assert full["auroc_msp"] == pytest.approx(ood_metrics(id_probs, ood_flat)["auroc_msp"]) == pytest.approx(1.0)
    flat_rep = bootstrap_replicates([ood_flat], ood_targets, ["auroc_msp"], 100, 0, "svhn", [id_probs])
    confident_rep = bootstrap_replicates([ood_confident], ood_targets, ["auroc_msp"], 100, 0, "svhn", [id_probs])
    confident = metric_values(ood_confident, ood_targets, ["auroc_msp"], id_member_probs=id_probs)["auroc_msp"]
    result = bootstrap(full["auroc_msp"], confident, flat_rep["auroc_msp"], confident_rep["auroc_msp"])
    assert result.significant and result.ci[0] > 0.2
    with pytest.raises(ValueError, match="id_member_probs"):
        metric_values(ood_flat, ood_targets, ["auroc_msp"])


def test_undefined_metrics_give_no_test():
    probs, targets = predictions(0.8, members=1)
    single = metric_values(probs, targets, ["auroc_mi"], id_member_probs=probs)  # a single model has no mi score
    assert math.isnan(single["auroc_mi"])
    result = bootstrap(single["auroc_mi"], 0.5, np.full(10, np.nan), np.full(10, 0.5))
    assert result.test is None and result.significant is None and "undefined" in result.reason


def test_ood_replicates_are_ood_metrics_on_each_resample_with_ties_and_a_single_model():
    id_probs, _ = predictions(0.9, num=60, seed=1)
    ood_probs, ood_targets = predictions(0.3, num=40, seed=2)
    id_probs, ood_probs = (p.mul(4).round().div(4).softmax(-1) for p in (id_probs, ood_probs))  # coarse: many tied scores
    names = [f"{family}_{score}" for family in ("auroc", "aupr", "fpr95", "aupr_in", "fpr95_in") for score in ("msp", "entropy", "mi")]
    for members in (3, 1):  # M = 1: no mi score, NaN on every resample
        runs = [ood_probs[:members]], [id_probs[:members]]
        replicates = bootstrap_replicates(runs[0], ood_targets, names, 4, 5, "svhn", runs[1])
        ood_draws = resample_indices(40, 4, 5, "svhn")
        for r, (index, id_index) in enumerate(zip(ood_draws, resample_indices(60, 4, 5, "svhn/id"))):
            expected = ood_metrics(id_probs[:members, id_index], ood_probs[:members, index])
            for name in names:
                if expected[name] is None:
                    assert math.isnan(replicates[name][r]) and members == 1
                else:
                    assert replicates[name][r] == pytest.approx(expected[name], rel=1e-12, abs=1e-15)


def test_weighted_ood_detection_is_sklearn_on_the_repeated_samples():
    generator = np.random.default_rng(0)
    id_scores, ood_scores = generator.integers(0, 6, 30) / 5, generator.integers(2, 9, 20) / 5  # ties within and across
    id_counts, ood_counts = generator.integers(0, 3, (3, 30)), generator.integers(0, 3, (3, 20))
    found = ood_detection_weighted(*map(torch.from_numpy, (id_scores, ood_scores, id_counts, ood_counts)))
    for r in range(3):
        ids, oods = np.repeat(id_scores, id_counts[r]), np.repeat(ood_scores, ood_counts[r])  # each sample as often as counted
        labels, scores = np.r_[np.zeros(len(ids)), np.ones(len(oods))], np.r_[ids, oods]
        assert float(found["auroc"][r]) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)
        assert float(found["aupr"][r]) == pytest.approx(average_precision_score(labels, scores), rel=1e-12)
        thresholds = np.unique(scores)[::-1]  # high to low: the first one where 95% of the OOD samples score at least it
        first = next(t for t in thresholds if (oods >= t).mean() >= 0.95)
        assert float(found["fpr95"][r]) == pytest.approx((ids >= first).mean(), abs=1e-15)
        assert float(found["aupr_in"][r]) == pytest.approx(average_precision_score(1 - labels, -scores), rel=1e-12)
        fpr_in, tpr_in, _ = roc_curve(1 - labels, -scores, drop_intermediate=False)  # ID positive: OOD accepted at 95% ID
        assert float(found["fpr95_in"][r]) == pytest.approx(fpr_in[np.argmax(tpr_in >= 0.95)], abs=1e-15)


def test_holm_on_a_hand_worked_family():
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> raised to 0.06 (step-down keeps the order)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([0.02]) == [0.02] and holm([]) == []


def test_holm_matches_the_step_down_procedure_on_random_families():
    """Against the procedure itself: walk the sorted p-values, reject while p_(k) < alpha / (m - k + 1)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = int(rng.integers(1, 9))
        p = rng.uniform(0, 0.08, m) ** rng.uniform(0.5, 2)  # (m,) many near the thresholds
        alpha = float(rng.choice([0.01, 0.05, 0.1]))
        rejected = np.zeros(m, dtype=bool)
        for k, i in enumerate(np.argsort(p)):
            if not p[i] < alpha / (m - k):
                break
            rejected[i] = True
        np.testing.assert_array_equal(np.array(holm(list(p))) < alpha, rejected)
        # adjusted value by its definition: max over the smaller p-values of min(1, (m - rank) p)
        ranks = np.argsort(np.argsort(p, kind="stable"), kind="stable")
        by_definition = [max(min(1.0, (m - ranks[j]) * p[j]) for j in range(m) if ranks[j] <= ranks[i]) for i in range(m)]
        np.testing.assert_allclose(holm(list(p)), by_definition)


def test_correct_marks_after_holm_and_leaves_untested_comparisons():
    family = {
        "acc": Comparison("welch", 0.1, p=0.01, alpha=0.05, significant=True),
        "nll": Comparison("bootstrap", -0.1, p=0.04, ci=(-0.2, -0.01), alpha=0.05, significant=True),
        "mi": Comparison(None, reason="undefined"),
    }
    holmed = correct(family, "holm")
    assert holmed["acc"].p_adjusted == pytest.approx(0.02) and holmed["acc"].significant and holmed["acc"].family == 2
    assert holmed["nll"].p_adjusted == pytest.approx(0.04) and holmed["nll"].significant  # step-down: 0.04 * 1
    stricter = correct({**family, "ece": Comparison("welch", 0.0, p=0.045, alpha=0.05)}, "holm")
    assert [stricter[m].significant for m in ("acc", "nll", "ece")] == [True, False, False]  # 0.03, 0.08, 0.08
    assert holmed["mi"] == family["mi"]
    plain = correct({**family, "ece": Comparison("welch", 0.0, p=0.045, alpha=0.05)}, "none")
    assert all(plain[m].significant and plain[m].p_adjusted == plain[m].p for m in ("acc", "nll", "ece"))
    with pytest.raises(ValueError, match="holm, none"):
        correct(family, "bonferroni")


def test_bootstrap_p_value_counts_the_resamples_on_either_side_of_zero():
    rng = np.random.default_rng(1)
    for shift in (0.0, 0.05, 0.2, -0.3):
        own, base = rng.normal(shift, 0.1, 400), rng.normal(0.0, 0.1, 400)
        result = bootstrap(shift, 0.0, own, base, alpha=0.05)
        d = own - base
        below, above = int((d <= 0).sum()), int((d >= 0).sum())
        assert result.p == pytest.approx(min(1.0, 2 * (1 + min(below, above)) / 401))
        assert result.significant == (result.p < 0.05)
        low, high = result.ci
        assert result.significant == (not low <= 0 <= high) or abs(min(below, above) - 0.025 * 400) <= 1  # agree but at the edge
