"""Tests of ensemble_lab.metrics.selective against closed forms, numpy loops and an average over tie orders."""

import itertools
import math

import numpy as np
import pytest
import torch

from ensemble_lab.metrics.classification import uncertainty_scores
from ensemble_lab.metrics.selective import (
    FACTS,
    expected_errors,
    risk_coverage_curve,
    risk_coverage_curves,
    selective_metrics,
    selective_summary,
)


def np_summary(confidence: np.ndarray, errors: np.ndarray) -> dict[str, float]:
    """The definitions in a plain loop over k, for distinct confidences."""
    order = np.argsort(-confidence, kind="stable")
    n = len(confidence)
    risks, generalized = [], []
    for k in range(1, n + 1):
        wrong = errors[order[:k]].sum()
        risks.append(wrong / k)
        generalized.append(wrong / n)
    coverage_ok = [k / n for k in range(1, n + 1) if risks[k - 1] <= 0.05]
    return {
        "aurc": float(np.mean(risks)),
        "augrc": float(np.mean(generalized)),
        "risk_at_80": risks[math.ceil(0.8 * n) - 1],
        "coverage_at_5": max(coverage_ok) if coverage_ok else 0.0,
    }


def test_aurc_of_a_perfect_ranking_equals_its_closed_form() -> None:
    # N samples, the e errors least confident: E(k) = max(0, k − (N − e)), so
    # AURC = (1/N) Σ_{j=1}^{e} j / (N − e + j) and AUGRC = (1/N²) Σ_{j=1}^{e} j = e(e+1) / (2N²)
    n, e = 50, 7
    confidence = torch.linspace(1.0, 0.0, n, dtype=torch.float64)
    errors = torch.zeros(n, dtype=torch.float64)
    errors[-e:] = 1.0
    result = selective_summary(confidence, errors)
    assert result["aurc"] == pytest.approx(sum(j / (n - e + j) for j in range(1, e + 1)) / n, abs=1e-14)
    assert result["augrc"] == pytest.approx(e * (e + 1) / (2 * n**2), abs=1e-14)
    assert result["risk_at_80"] == 0.0  # the 40 most confident are all right
    assert result["coverage_at_5"] == pytest.approx(45 / 50)  # E(45)/45 = 2/45 <= .05, E(46)/46 = 3/46 > .05


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_summary_matches_numpy_loop_on_distinct_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 137
    confidence = rng.permutation(n).astype(float) + rng.random(n) * 0.5
    errors = (rng.random(n) < 0.1 + 0.3 * (confidence < n / 3)).astype(float)  # the low-confidence third errs more
    got = selective_summary(torch.tensor(confidence), torch.tensor(errors))
    expected = np_summary(confidence, errors)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_ties_give_the_mean_curve_over_every_order_of_the_tied_samples() -> None:
    confidence = np.array([0.9, 0.5, 0.5, 0.9, 0.2, 0.5])
    errors = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    curves = []
    for order in itertools.permutations(range(6)):
        if all(confidence[order[i]] >= confidence[order[i + 1]] for i in range(5)):  # a valid order of the ranking
            curves.append(np.cumsum(errors[list(order)]))
    expected = np.mean(curves, axis=0)
    got = expected_errors(torch.tensor(confidence), torch.tensor(errors))
    assert np.allclose(got.numpy(), expected, atol=1e-12)
    # and the curve does not depend on the sample order
    perm = torch.tensor([5, 2, 0, 4, 1, 3])
    again = expected_errors(torch.tensor(confidence)[perm], torch.tensor(errors)[perm])
    assert torch.allclose(again, got)


def test_constant_score_gives_the_overall_error_rate_everywhere() -> None:
    errors = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    coverage, risk = risk_coverage_curve(torch.zeros(5), errors)
    assert torch.allclose(risk, torch.full((5,), 0.4, dtype=risk.dtype))
    assert torch.allclose(coverage, torch.arange(1, 6, dtype=coverage.dtype) / 5)


def test_coverage_at_5_is_zero_when_no_coverage_has_risk_within_5_percent() -> None:
    confidence = torch.tensor([3.0, 2.0, 1.0])
    assert selective_summary(confidence, torch.tensor([1.0, 0.0, 0.0]))["coverage_at_5"] == 0.0


def test_selective_metrics_ranks_by_negated_uncertainty_scores_and_drops_mi_for_one_member() -> None:
    gen = torch.Generator().manual_seed(0)
    member_probs = (2 * torch.randn(3, 80, 4, generator=gen, dtype=torch.float64)).softmax(-1)
    targets = torch.randint(0, 4, (80,), generator=gen)
    result = selective_metrics(member_probs, targets)
    assert set(result) == {p.replace("<score>", s) for p, *_ in FACTS for s in ("msp", "entropy", "mi")}
    errors = (member_probs.mean(0).argmax(-1) != targets).double().numpy()
    scores = uncertainty_scores(member_probs)
    for name in ("msp", "entropy", "mi"):
        expected = np_summary(-scores[name].numpy(), errors)
        assert result[f"aurc_{name}"] == pytest.approx(expected["aurc"], abs=1e-12)
        assert result[f"augrc_{name}"] == pytest.approx(expected["augrc"], abs=1e-12)
    single = selective_metrics(member_probs[:1], targets)
    assert single["aurc_mi"] is None and single["aurc_msp"] is not None
    curves = risk_coverage_curves(member_probs, targets)
    coverage, risk = curves["entropy"]
    assert float(risk.mean()) == pytest.approx(result["aurc_entropy"], abs=1e-12)
    assert coverage[-1].item() == 1.0 and set(risk_coverage_curves(member_probs[:1], targets)) == {"msp", "entropy"}


def test_bad_shapes_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        expected_errors(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="targets"):
        selective_metrics(torch.full((1, 3, 2), 0.5), torch.zeros(4, dtype=torch.long))
