"""Tests of ensemble_lab.metrics.ood_scores against hand-worked values, scipy and scikit-learn."""

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import roc_auc_score

from ensemble_lab.errors import NonFiniteOutputError
from ensemble_lab.metrics.ood_scores import LOGIT_SCORES, logit_ood_metrics, logit_scores


def random_logits(m: int, n: int, c: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(m, n, c, generator=gen, dtype=torch.float64) + shift


def test_energy_of_equal_logits_is_minus_log_c_minus_the_logit() -> None:
    # logsumexp of C copies of l is l + log C
    logits = torch.full((2, 3, 10), 1.5, dtype=torch.float64)
    logits[:, 1] = -4.0
    scores = logit_scores(logits)
    assert torch.allclose(scores["energy"], torch.tensor([-math.log(10) - 1.5, -math.log(10) + 4.0, -math.log(10) - 1.5], dtype=torch.float64))
    assert torch.allclose(scores["maxlogit"], torch.tensor([-1.5, 4.0, -1.5], dtype=torch.float64))
    assert torch.allclose(scores["expected_entropy"], torch.full((3,), math.log(10), dtype=torch.float64))


def test_scores_match_numpy_per_member_loops() -> None:
    logits = random_logits(4, 30, 5, 0)
    z = logits.numpy()
    mean = z.mean(0)
    scores = logit_scores(logits)
    assert np.allclose(scores["maxlogit"].numpy(), -mean.max(1))
    assert np.allclose(scores["energy"].numpy(), -logsumexp(mean, axis=1))
    member_probs = np.exp(z - logsumexp(z, axis=2, keepdims=True))
    expected_entropy = np.mean([[scipy_entropy(member_probs[m, i]) for i in range(30)] for m in range(4)], axis=0)
    assert np.allclose(scores["expected_entropy"].numpy(), expected_entropy)
    ratios = []
    for i in range(30):
        votes = [int(np.argmax(z[m, i])) for m in range(4)]
        ratios.append(1 - max(votes.count(c) for c in set(votes)) / 4)
    assert np.allclose(scores["variation_ratio"].numpy(), ratios)


def test_variation_ratio_by_hand() -> None:
    # 3 members voting 0, 0, 2 on sample 0 (ratio 1/3) and 1, 2, 0 on sample 1 (ratio 2/3)
    logits = torch.zeros(3, 2, 3, dtype=torch.float64)
    for m, (a, b) in enumerate([(0, 1), (0, 2), (2, 0)]):
        logits[m, 0, a] = 1.0
        logits[m, 1, b] = 1.0
    assert torch.allclose(logit_scores(logits)["variation_ratio"], torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))


def test_logit_ood_metrics_auroc_matches_sklearn_and_drops_variation_ratio_for_one_member() -> None:
    id_logits, ood_logits = random_logits(3, 60, 6, 1, shift=0.0), random_logits(3, 40, 6, 2) * 0.3
    result = logit_ood_metrics(id_logits, ood_logits)
    id_scores, ood_scores = logit_scores(id_logits), logit_scores(ood_logits)
    labels = np.r_[np.zeros(60), np.ones(40)]
    for name in LOGIT_SCORES:
        expected = roc_auc_score(labels, np.r_[id_scores[name].numpy(), ood_scores[name].numpy()])
        assert result[f"auroc_{name}"] == pytest.approx(expected, abs=1e-12), name
    assert result["auroc_energy"] > 0.5  # the flatter OOD logits have the higher energy
    single = logit_ood_metrics(id_logits[:1], ood_logits[:1])
    assert single["auroc_variation_ratio"] is None and single["auroc_energy"] is not None


def test_bad_logits_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match=r"\(M, N, C\)"):
        logit_scores(torch.zeros(3, 4))
    bad = torch.zeros(1, 2, 3)
    bad[0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteOutputError):
        logit_scores(bad)
