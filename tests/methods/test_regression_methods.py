"""Every method as a regression model: a Gaussian head per target (M, B, 2·D) and the Gaussian NLL per member."""

import pytest
import torch
from torch.distributions import Normal
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods import (
    MIMO,
    BatchEnsemble,
    DeepEnsemble,
    DistillationOptions,
    LowRankEnsemble,
    Masksembles,
    MCDropout,
    PackedEnsemble,
    RepulsionOptions,
    SingleModel,
)
from ensemble_lab.methods.task_options import RegressionOptions

TARGETS = 2  # D
FEATURES = 6
TABULAR = dict(input_shape=(FEATURES,), num_classes=TARGETS, task="regression", backbone="mlp", hidden_sizes=(16, 16))
METHODS = [
    (SingleModel, {}),
    (DeepEnsemble, dict(num_members=3)),
    (BatchEnsemble, dict(num_members=3)),
    (PackedEnsemble, dict(num_members=2, alpha=2, gamma=1)),
    (MIMO, dict(num_members=3)),
    (MCDropout, dict(num_members=3, dropout=0.2)),
    (LowRankEnsemble, dict(num_members=3)),
    (Masksembles, dict(num_members=3)),
]


def per_member_nll(outputs: torch.Tensor, targets: torch.Tensor, head: str = "softplus") -> torch.Tensor:
    """Each member's mean over rows of −Σ_d log N(y; μ, σ²), by torch.distributions: (M,)."""
    mean, raw = outputs[..., :TARGETS], outputs[..., TARGETS:]
    var = (F.softplus(raw) if head == "softplus" else raw.exp()) + 1e-6
    y = targets.expand_as(mean)  # (B, D) or (M, N, D) -> (M, N, D)
    return -Normal(mean, var.sqrt()).log_prob(y).sum(-1).mean(-1)


@pytest.mark.parametrize("cls,kwargs", METHODS, ids=[c.__name__ for c, _ in METHODS])
def test_head_is_gaussian_and_loss_is_the_member_nll(cls, kwargs):
    torch.manual_seed(0)
    model = cls(**TABULAR, **kwargs)
    members = model.num_members
    x, y = torch.randn(8, FEATURES), torch.randn(8, TARGETS)
    assert model.eval()(x).shape == (members, 8, 2 * TARGETS)
    step = model.train().training_batch(x, y)
    assert step.logits.shape[-1] == 2 * TARGETS and step.targets.shape[-1] == TARGETS
    loss = model.training_loss(step.logits, step.targets)
    expected = per_member_nll(step.logits, step.targets)
    # a Deep Ensemble sums its members' losses (each gets its solo gradient); the others average them
    torch.testing.assert_close(loss, expected.sum() if cls is DeepEnsemble else expected.mean())
    loss.backward()  # the loss reaches the weights


def test_log_variance_head_and_the_single_models_output_width():
    torch.manual_seed(1)
    model = SingleModel(**TABULAR, regression=RegressionOptions(head="log_variance"))
    x, y = torch.randn(5, FEATURES), torch.randn(5, TARGETS)
    outputs = model(x)
    torch.testing.assert_close(model.training_loss(outputs, y), per_member_nll(outputs, y, "log_variance").mean())
    assert model.network[-1].out_features == 2 * TARGETS  # a mean and a variance per target


def test_classification_is_unchanged_by_default():
    model = SingleModel(input_shape=(FEATURES,), num_classes=3, backbone="mlp", hidden_sizes=(8,))
    x, y = torch.randn(4, FEATURES), torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(model.training_loss(model(x), y), F.cross_entropy(model(x)[0], y))
    assert model.task.name == "classification" and model(x).shape == (1, 4, 3)


def test_distillation_and_repulsion_refuse_regression_in_one_line():
    with pytest.raises(ConfigError, match=r"^--model.distillation is classification-only[^\n]*$"):
        SingleModel(**TABULAR, distillation=DistillationOptions(teacher="teacher.ckpt"))
    with pytest.raises(ConfigError, match=r"^--model.repulsion is classification-only[^\n]*$"):
        DeepEnsemble(**TABULAR, num_members=2, repulsion=RepulsionOptions(strength=0.1))


@pytest.mark.parametrize("cls", [DeepEnsemble, BatchEnsemble, LowRankEnsemble, Masksembles], ids=lambda c: c.__name__)
def test_independent_batches_give_member_m_only_its_own_rows(cls):
    torch.manual_seed(2)
    model = cls(**TABULAR, num_members=2)
    model._independent_batches = True  # what setup("fit") sets for --data.train_batch independent
    x, y = torch.randn(10, FEATURES), torch.randn(10, TARGETS)  # member-major: rows 0-4 member 0's, 5-9 member 1's
    step = model.training_batch(x, y)
    assert step.logits.shape == (2, 5, 2 * TARGETS) and torch.equal(step.targets, y.view(2, 5, TARGETS))
    perturbed = x.clone()
    perturbed[1] += 1.0  # a row of member 0's batch
    again = model.training_batch(perturbed, y)
    assert not torch.allclose(again.logits[0, 1], step.logits[0, 1]) and torch.equal(again.logits[1], step.logits[1])
    # the loss is the per-member NLL on each member's own rows
    expected = per_member_nll(step.logits, step.targets)
    torch.testing.assert_close(model.training_loss(step.logits, step.targets), expected.sum() if cls is DeepEnsemble else expected.mean())


def test_methods_with_their_own_training_rows_refuse_independent_batches():
    assert [c.__name__ for c, _ in METHODS if not c.tiles_training_batch] == ["PackedEnsemble", "MIMO", "MCDropout"]
