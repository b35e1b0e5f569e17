"""CIFAR ResNet-18 built from each method's layer factory: sizes, shapes, members, MC dropout."""

import pytest
import torch
from torch import nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.factories import (
    batch_ensemble_layers,
    deep_ensemble_layers,
    plain_layers,
)
from ensemble_lab.nn.members import tile_members
from ensemble_lab.nn.resnet import resnet18

SINGLE_PARAMS = 11_173_962  # the paper's CIFAR-10 recipe: ResNet-18, width 64


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_at_paper_size():
    single = num_params(resnet18(plain_layers(), (3, 32, 32), 10))
    batch_ensemble = num_params(resnet18(batch_ensemble_layers(4), (3, 32, 32), 10))
    deep_ensemble = num_params(resnet18(deep_ensemble_layers(4), (3, 32, 32), 10))
    assert single == SINGLE_PARAMS
    assert single < batch_ensemble <= 1.005 * single  # paper: about +0.33% for fast weights
    assert batch_ensemble == 11_210_652
    assert deep_ensemble == 4 * single


FACTORIES = {
    "single": lambda m: plain_layers(),
    "mc_dropout": lambda m: plain_layers(m, mc_dropout=True),
    "batch_ensemble": batch_ensemble_layers,
    "deep_ensemble": deep_ensemble_layers,
}


@pytest.mark.parametrize("method", FACTORIES)
@pytest.mark.parametrize("hw", [8, 16])
def test_output_shape_and_backward(method, hw):
    torch.manual_seed(0)
    m, batch = (1 if method == "single" else 3), 2
    dropout = 0.1 if method == "mc_dropout" else 0.0
    model = resnet18(FACTORIES[method](m), (3, hw, hw), 7, width=4, dropout=dropout)
    x = tile_members(torch.randn(batch, 3, hw, hw), m)  # (M*B, 3, hw, hw)
    y = model(x)
    assert y.shape == (m * batch, 7)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_deep_ensemble_member_is_an_independent_resnet():
    """Member i's rows give what a plain ResNet-18 holding member i's slice of every tensor gives."""
    torch.manual_seed(0)
    m, batch = 3, 2
    ens = resnet18(deep_ensemble_layers(m), (3, 8, 8), 5, width=4).double()
    x = torch.randn(m * batch, 3, 8, 8, dtype=torch.float64)
    for train in (True, False):
        ens.train(train)
        y = ens(x)
        for i in range(m):
            member = resnet18(plain_layers(), (3, 8, 8), 5, width=4).double().train(train)
            state = {k: (v if k.endswith("num_batches_tracked") else v[i]) for k, v in ens.state_dict().items()}
            member.load_state_dict(state)
            rows = slice(i * batch, (i + 1) * batch)
            torch.testing.assert_close(y[rows], member(x[rows]))


def effective_weight(module: nn.Module, i: int) -> torch.Tensor:
    """W ∘ s_i r_iᵀ written out from the stored W (out, in, ...), r (M, in) and s (M, out): the paper's
    rank-1 channel-wise perturbation, built here rather than by the layer's own member_weight."""
    w, r, s = module.weight, module.r, module.s
    assert r.shape == (module.num_members, w.shape[1]) and s.shape == (module.num_members, w.shape[0])
    scale = s[i][:, None] * r[i][None, :]  # (out, in): entry (o, c) is s_i[o] · r_i[c]
    return w * scale.view(*scale.shape, *(1,) * (w.dim() - 2))  # the same at every kernel position


def test_batch_ensemble_member_uses_its_effective_weights():
    """In eval (shared BatchNorm on running stats) member i = plain ResNet with W ∘ s_i r_iᵀ."""
    torch.manual_seed(0)
    m, batch = 3, 2
    ens = resnet18(batch_ensemble_layers(m), (3, 8, 8), 5, width=4).eval()
    x = torch.randn(m * batch, 3, 8, 8)
    y = ens(x)
    for i in range(m):
        member = resnet18(plain_layers(), (3, 8, 8), 5, width=4).eval()
        own = dict(member.named_modules())
        with torch.no_grad():
            for name, module in ens.named_modules():
                if hasattr(module, "member_weight"):  # BatchConv2d / BatchLinear
                    own[name].weight.copy_(effective_weight(module, i))
                    if module.bias is not None:
                        own[name].bias.copy_(module.bias[i])
                elif isinstance(module, nn.BatchNorm2d):
                    own[name].load_state_dict(module.state_dict())
        rows = slice(i * batch, (i + 1) * batch)
        torch.testing.assert_close(y[rows], member(x[rows]), atol=1e-5, rtol=1e-4)


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    return [mod for mod in model.modules() if isinstance(mod, nn.modules.dropout._DropoutNd)]


def test_dropout_placement():
    assert dropout_modules(resnet18(plain_layers(), (3, 8, 8), 10, width=4)) == []
    found = dropout_modules(resnet18(plain_layers(mc_dropout=True), (3, 8, 8), 10, width=4, dropout=0.1))
    assert sum(isinstance(mod, nn.Dropout2d) for mod in found) == 8  # one in each of the 8 blocks
    assert sum(isinstance(mod, nn.Dropout) for mod in found) == 1  # before the final linear


def test_mc_dropout_stays_active_in_eval():
    torch.manual_seed(0)
    m = 4
    model = resnet18(plain_layers(m, mc_dropout=True), (3, 8, 8), 10, width=4, dropout=0.3).eval()
    y = model(tile_members(torch.randn(2, 3, 8, 8), m)).view(m, 2, 10)  # (M, B, C): identical inputs
    assert not torch.allclose(y[0], y[1])
    plain = resnet18(plain_layers(m), (3, 8, 8), 10, width=4, dropout=0.3).eval()
    y = plain(tile_members(torch.randn(2, 3, 8, 8), m)).view(m, 2, 10)
    torch.testing.assert_close(y[0], y[1])  # ordinary dropout does switch off


@pytest.mark.parametrize("kwargs", [{"input_shape": (32, 32)}, {"width": 0}, {"dropout": 1.0}])
def test_invalid_options_raise(kwargs):
    args = {"layers": plain_layers(), "input_shape": (3, 8, 8), "num_classes": 10} | kwargs
    with pytest.raises(ConfigError):
        resnet18(**args)
