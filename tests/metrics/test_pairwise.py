"""Pairwise diversity matrices on a hand-worked three-member case (M = 2 is in test_classification.py)."""

import math

import numpy as np
import pytest
import torch

from ensemble_lab.errors import NonFiniteOutputError
from ensemble_lab.metrics.classification import (
    pairwise_disagreement,
    pairwise_jsd,
    predictive_metrics,
)

# 3 members, 2 samples, 2 classes, one-hot except member 2 on sample 1:
#   member 0: [1, 0]  [1, 0]        argmax 0, 0
#   member 1: [1, 0]  [0, 1]        argmax 0, 1
#   member 2: [0, 1]  [.5, .5]      argmax 1, 0 (ties go to the first class)
PROBS = torch.tensor(
    [
        [[1.0, 0.0], [1.0, 0.0]],
        [[1.0, 0.0], [0.0, 1.0]],
        [[0.0, 1.0], [0.5, 0.5]],
    ],
    dtype=torch.float64,
)


def test_pairwise_disagreement_hand_worked():
    # pairs (0,1): differ on sample 1 -> 1/2; (0,2): differ on sample 0 -> 1/2; (1,2): differ on both -> 1
    expected = [[0.0, 0.5, 0.5], [0.5, 0.0, 1.0], [0.5, 1.0, 0.0]]
    assert np.allclose(pairwise_disagreement(PROBS).numpy(), expected)
    # scalar: mean of the three pairs = (0.5 + 0.5 + 1) / 3
    assert predictive_metrics(PROBS, torch.tensor([0, 0]))["disagreement"] == 2 / 3


def test_pairwise_jsd_hand_worked():
    # JSD(p, q) = H((p+q)/2) − (H(p) + H(q))/2; one-hot p ≠ q: ln 2; p = q: 0;
    # one-hot vs (.5, .5): H(.75, .25) − ln2/2.
    mixed = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) - math.log(2) / 2
    ln2 = math.log(2)
    jsd01 = (0 + ln2) / 2  # sample 0 identical, sample 1 disjoint
    jsd02 = (ln2 + mixed) / 2
    jsd12 = (ln2 + mixed) / 2
    expected = [[0.0, jsd01, jsd02], [jsd01, 0.0, jsd12], [jsd02, jsd12, 0.0]]
    assert np.allclose(pairwise_jsd(PROBS).numpy(), expected, atol=1e-12)


def test_identical_members_give_zero_matrices():
    probs = PROBS[:1].expand(4, -1, -1)  # (4, N, C): four copies of member 0
    assert torch.all(pairwise_disagreement(probs) == 0)
    assert torch.allclose(pairwise_jsd(probs), torch.zeros(4, 4, dtype=torch.float64), atol=1e-15)


def test_pairwise_matrices_refuse_non_finite_probabilities():
    probs = PROBS.clone()
    probs[2, 1, 0] = math.nan  # a NaN argmax would count as a real prediction
    for pairwise in (pairwise_disagreement, pairwise_jsd):
        with pytest.raises(NonFiniteOutputError, match="1 of 12 member probabilities"):
            pairwise(probs)
