"""The repulsive function-space term: the kernel by hand, its place in the loss, its effect, and its refusals."""

import math

import pytest
import torch

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods import BatchEnsemble, DeepEnsemble, MCDropout, SingleModel
from ensemble_lab.methods.repulsion import repulsion_term
from tests.conftest import TINY_TRAINER, read_results, run_dirs

MLP = dict(backbone="mlp", hidden_sizes=[16], input_shape=(1, 8, 8), num_classes=10)


def test_kernel_is_the_mean_over_pairs_and_rows_by_hand():
    logits = torch.randn(3, 4, 5, dtype=torch.float64)
    probs = logits.softmax(-1).tolist()  # (M, B, C) as lists
    sigma = 0.7
    expected = [
        math.exp(-sum((a - b) ** 2 for a, b in zip(probs[i][r], probs[j][r])) / (2 * sigma**2))
        for i in range(3) for j in range(i + 1, 3) for r in range(4)
    ]  # fmt: skip
    assert float(repulsion_term(logits, sigma)) == pytest.approx(sum(expected) / len(expected), rel=1e-6)
    same = torch.randn(1, 4, 5).expand(3, 4, 5)
    assert float(repulsion_term(same, sigma)) == 1.0  # identical members: k = 1


def test_training_loss_adds_lambda_times_the_kernel():
    torch.manual_seed(0)
    model = DeepEnsemble(num_members=3, repulsion=0.4, repulsion_bandwidth=0.3, **MLP)
    model.log = lambda *args, **kwargs: None  # no trainer here
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    loss = model.training_step((x, y), 0)
    logits = model(x)  # (M, B, C), no dropout: the same logits the step saw
    plain = model.training_loss(logits, y)
    torch.testing.assert_close(loss, plain + 0.4 * repulsion_term(logits, 0.3))


def test_repulsion_spreads_members_apart():
    """One BatchEnsemble, the same batches, 30 Adam steps with and without the term: the members' mean
    pairwise disagreement in probabilities ends larger with it."""
    def train(strength: float) -> float:
        torch.manual_seed(0)
        model = BatchEnsemble(num_members=4, repulsion=strength, **MLP)
        model.log = lambda *args, **kwargs: None
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        generator = torch.Generator().manual_seed(1)
        x, y = torch.randn(64, 1, 8, 8, generator=generator), torch.randint(0, 10, (64,), generator=generator)
        for _ in range(30):
            optimizer.zero_grad()
            model.training_step((x, y), 0).backward()
            optimizer.step()
        with torch.no_grad():
            return 1.0 - float(repulsion_term(model(x), 0.5))

    assert train(2.0) > 2 * train(0.0)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SingleModel(repulsion=1.0, **MLP), "num_members >= 2"),
        (lambda: BatchEnsemble(num_members=2, repulsion=-1.0, **MLP), ">= 0"),
        (lambda: BatchEnsemble(num_members=2, repulsion=1.0, repulsion_bandwidth=0.0, **MLP), "> 0"),
        (lambda: BatchEnsemble(num_members=2, repulsion=float("nan"), **MLP), "finite"),
    ],
)
def test_bad_options_are_refused_in_one_line(make, match):
    with pytest.raises(ConfigError, match=match) as error:
        make()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("model", [lambda: BatchEnsemble(num_members=2, train_batch="split", repulsion=1.0, **MLP),
                                   lambda: MCDropout(num_members=2, dropout=0.1, repulsion=1.0, **MLP)])  # fmt: skip
def test_members_on_different_images_or_one_sample_are_refused(model):
    module = model()
    module.log = lambda *args, **kwargs: None
    with pytest.raises(ConfigError, match="same images"):
        module.training_step((torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))), 0)


@pytest.mark.slow
def test_fit_and_test_through_the_cli(cli, tmp_path):
    cli("fit", "--model=BatchEnsemble", "--model.num_members=2", "--model.backbone.hidden_sizes=[16]", "--model.repulsion.strength=0.5",
        "--data=DigitsDataModule", *TINY_TRAINER)  # fmt: skip
    (run,) = run_dirs(tmp_path)
    assert read_results(run)["config"]["model.init_args.repulsion.strength"] == 0.5
    assert "train/repulsion" in (run / "metrics.csv").read_text().splitlines()[0]
