"""The four methods: the (M, B, C) contract, how members are trained, option errors."""

import pytest
import torch
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods import BatchEnsemble, DeepEnsemble, MCDropout, SingleModel

MLP = dict(input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(16, 8))


@pytest.mark.parametrize("cls,members", [(SingleModel, 1), (BatchEnsemble, 3), (DeepEnsemble, 3), (MCDropout, 3)])
def test_forward_returns_member_logits(cls, members):
    kwargs = dict(MLP) if cls is SingleModel else dict(MLP, num_members=members)
    model = cls(**kwargs).eval()
    out = model(torch.randn(5, 1, 8, 8))
    assert out.shape == (members, 5, 10)
    assert model.num_members == members


def test_mc_dropout_samples_differ_in_eval_mode():
    torch.manual_seed(0)
    model = MCDropout(num_members=4, dropout=0.3, **MLP).eval()
    x = torch.randn(6, 1, 8, 8)
    out = model(x)  # (M, B, C)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(out[i], out[j]), f"samples {i} and {j} share a dropout mask"
    assert not torch.allclose(model(x), out), "a second call must draw new masks"


def test_mc_dropout_trains_on_one_sample():
    model = MCDropout(num_members=4, **MLP).train()
    assert model.training_logits(torch.randn(5, 1, 8, 8)).shape == (1, 5, 10)


def test_deep_ensemble_loss_gives_each_member_its_solo_gradient():
    """The summed loss must give member i exactly the gradient of training member i alone."""
    torch.manual_seed(0)
    model = DeepEnsemble(num_members=3, **MLP)
    x, y = torch.randn(7, 1, 8, 8), torch.randint(0, 10, (7,))
    model.training_loss(model(x), y).backward()
    first = model.network[1]  # EnsembleLinear after Flatten
    for i in range(3):
        w = first.member_weight(i).detach().requires_grad_()
        # member i alone: the same network with its own weights, written out by hand
        h = x.flatten(1)
        layers = [m for m in model.network if hasattr(m, "member_weight")]
        for k, layer in enumerate(layers):
            weight = w if k == 0 else layer.member_weight(i).detach()
            h = F.linear(h, weight, layer.bias[i].detach())
            if k < len(layers) - 1:
                h = F.relu(h)
        (grad,) = torch.autograd.grad(F.cross_entropy(h, y), w)
        torch.testing.assert_close(first.weight.grad[i], grad)


def test_deep_ensemble_members_start_different():
    model = DeepEnsemble(num_members=2, **MLP)
    first = model.network[1]
    assert not torch.allclose(first.member_weight(0), first.member_weight(1))


def test_batch_ensemble_fast_weight_groups():
    model = BatchEnsemble(num_members=2, fast_weight_lr_scale=0.5, **MLP)
    model.optimizer = lambda groups: torch.optim.SGD(groups, lr=0.1, weight_decay=1e-3)
    optimizer = model.configure_optimizers()
    shared, fast = optimizer.param_groups
    assert shared["lr"] == pytest.approx(0.1) and shared["weight_decay"] == pytest.approx(1e-3)
    assert fast["lr"] == pytest.approx(0.05) and fast["weight_decay"] == 0.0
    fast_ids = {id(p) for p in fast["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in fast_ids) == (name.endswith(".r") or name.endswith(".s")), name


def test_batch_ensemble_keeps_the_fast_weight_rate_under_schedulers():
    model = BatchEnsemble(num_members=2, fast_weight_lr_scale=0.5, **MLP)
    model.optimizer = lambda groups: torch.optim.SGD(groups, lr=0.1)
    model.lr_scheduler = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    scheduler = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    for _ in range(3):
        scheduler.step()
        shared, fast = scheduler.optimizer.param_groups
        assert fast["lr"] == pytest.approx(0.5 * shared["lr"]) and shared["lr"] < 0.1

    # OneCycleLR gives every group one absolute rate: refused unless the scale is 1
    model.lr_scheduler = lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    with pytest.raises(ConfigError, match="OneCycleLR sets the same learning rate for every parameter group"):
        model.configure_optimizers()
    model.fast_weight_lr_scale = 1.0
    assert model.configure_optimizers()["lr_scheduler"]["scheduler"].optimizer.param_groups[1]["lr"] > 0


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: BatchEnsemble(num_members=0, **MLP), "num_members"),
        (lambda: DeepEnsemble(num_members=-1, **MLP), "num_members"),
        (lambda: MCDropout(dropout=1.0, **MLP), r"\[0, 1\)"),
        (lambda: SingleModel(dropout=-0.1, **MLP), r"\[0, 1\)"),
        (lambda: MCDropout(dropout=0.0, **MLP), "dropout > 0"),
        (lambda: SingleModel(backbone="vgg", **MLP), "allowed: mlp, resnet18"),
    ],
)
def test_bad_options_are_clear_errors(build, match):
    with pytest.raises(ConfigError, match=match):
        build()
