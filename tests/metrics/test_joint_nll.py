"""Tests of ensemble_lab.metrics.joint_nll against numpy loops over batches and members, and marginal NLL."""

import numpy as np
import pytest
import torch

from ensemble_lab.errors import ConfigError
from ensemble_lab.metrics.classification import predictive_metrics
from ensemble_lab.metrics.joint_nll import FACTS, dyadic_batches, joint_nll, joint_nll_metrics


def random_member_probs(m: int, n: int, c: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (2.0 * torch.randn(m, n, c, generator=gen, dtype=torch.float64)).softmax(-1)


def np_joint_nll(probs: np.ndarray, targets: np.ndarray, anchors: np.ndarray, counts: np.ndarray, tau: int) -> float:
    """The definition in loops: build each batch's τ inputs, multiply each member's likelihoods, mix."""
    values = []
    for (a, b), (na, nb) in zip(anchors, counts):
        inputs = [a] * na + [b] * nb
        per_member = [np.prod([probs[m, i, targets[i]] for i in inputs]) for m in range(probs.shape[0])]
        values.append(-np.log(np.mean(per_member)))
    return float(np.mean(values) / tau)


@pytest.mark.parametrize(("tau", "balanced"), [(2, False), (10, False), (10, True), (3, False)])
def test_joint_nll_matches_numpy_loop_on_the_same_batches(tau: int, balanced: bool) -> None:
    probs = random_member_probs(4, 25, 3, 0)
    targets = torch.randint(0, 3, (25,), generator=torch.Generator().manual_seed(1))
    got = joint_nll(probs, targets, tau, num_batches=300, generator=torch.Generator().manual_seed(7), balanced=balanced)
    anchors, counts = dyadic_batches(25, tau, 300, torch.Generator().manual_seed(7), balanced)
    assert got == pytest.approx(np_joint_nll(probs.numpy(), targets.numpy(), anchors.numpy(), counts.numpy(), tau), rel=1e-10)


def test_identical_members_give_the_marginal_nll_of_the_sampled_points() -> None:
    single = random_member_probs(1, 40, 5, 2)
    targets = torch.randint(0, 5, (40,), generator=torch.Generator().manual_seed(3))
    anchors, counts = dyadic_batches(40, 10, 500, torch.Generator().manual_seed(4))
    nll = -np.log(single[0].numpy()[np.arange(40), targets.numpy()])  # (N,) marginal NLL per sample
    marginal = float((nll[anchors.numpy()] * counts.numpy()).sum(1).mean() / 10)
    for copies in (1, 3):
        got = joint_nll(single.expand(copies, -1, -1), targets, 10, num_batches=500, generator=torch.Generator().manual_seed(4))
        assert got == pytest.approx(marginal, rel=1e-12)


def test_identical_members_approach_the_set_marginal_nll_over_many_batches() -> None:
    single = random_member_probs(1, 30, 4, 5)
    targets = torch.randint(0, 4, (30,), generator=torch.Generator().manual_seed(6))
    marginal = predictive_metrics(single, targets)["nll"]
    got = joint_nll(single.expand(2, -1, -1), targets, 2, num_batches=200_000, balanced=True)
    assert got == pytest.approx(marginal, rel=0.01)  # every anchor uniform: the expectation is the set's mean NLL


def test_consistent_disagreement_by_hand() -> None:
    # two members, one sure of class 0 (0.99) and one of class 1 on every input, every label 0. Marginally
    # p̄(y) = 0.5, NLL log 2. Jointly every batch of 10 has likelihood (0.99^10 + 0.01^10) / 2 whatever its
    # anchors: the member that is right is right on all of them.
    probs = torch.tensor([[[0.99, 0.01]] * 10, [[0.01, 0.99]] * 10], dtype=torch.float64)
    targets = torch.zeros(10, dtype=torch.long)
    expected = -np.log((0.99**10 + 0.01**10) / 2) / 10
    assert joint_nll(probs, targets, 10, num_batches=50) == pytest.approx(expected, rel=1e-12)
    assert expected < np.log(2) / 5


def test_dyadic_batches_draw_distinct_anchors_and_counts_summing_to_tau() -> None:
    anchors, counts = dyadic_batches(5, 10, 5000, torch.Generator().manual_seed(0))
    assert bool((anchors[:, 0] != anchors[:, 1]).all())
    assert counts.sum(1).eq(10).all()
    assert set(anchors.flatten().tolist()) == set(range(5))
    assert counts[:, 0].double().mean().item() == pytest.approx(5.0, abs=0.1)  # uniform draws: τ/2 on average
    balanced = dyadic_batches(5, 10, 10, torch.Generator().manual_seed(0), balanced=True)[1]
    assert balanced.eq(5).all()


def test_joint_nll_metrics_keys_and_reproducibility() -> None:
    probs = random_member_probs(3, 20, 4, 8)
    targets = torch.randint(0, 4, (20,), generator=torch.Generator().manual_seed(9))
    first = joint_nll_metrics(probs, targets, num_batches=100, seed=3)
    assert set(first) == {name for name, *_ in FACTS}
    assert first == joint_nll_metrics(probs, targets, num_batches=100, seed=3)


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="even"):
        dyadic_batches(5, 3, 10, torch.Generator(), balanced=True)
    with pytest.raises(ConfigError, match="at least 2"):
        dyadic_batches(1, 2, 10, torch.Generator())
    with pytest.raises(ValueError, match="targets"):
        joint_nll(random_member_probs(1, 4, 2, 0), torch.zeros(3, dtype=torch.long), 2)
