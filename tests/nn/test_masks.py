"""Masksembles' MemberMasks: the paper's mask construction, the one-op forward, the method, and that the
new LayerFactory slot leaves every other method's network as it was."""

import itertools
import math

import pytest
import torch
from torch import nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods import Masksembles
from ensemble_lab.nn import MemberMasks, masksembles_layers
from ensemble_lab.nn.factories import batch_ensemble_layers, deep_ensemble_layers, plain_layers
from ensemble_lab.nn.masks import generate_masks
from ensemble_lab.nn.members import tile_members
from ensemble_lab.nn.mlp import mlp
from ensemble_lab.nn.resnet import resnet18
from ensemble_lab.nn.wide_resnet import wide_resnet
from tests.nn.test_resnet import SINGLE_PARAMS, num_params
from tests.nn.test_wide_resnet import WRN_28_10_PARAMS

CONFIGS = [(16, 4, 2.0), (64, 4, 2.0), (128, 4, 3.0), (512, 4, 2.0), (512, 8, 1.5), (640, 4, 6.0), (32, 2, 2.0)]


def paper_kept(f: int, m: int, s: float) -> int:
    """The paper's size formula F = m s (1 - (1 - 1/s)^M), solved for m (features per mask)."""
    return math.floor(f / (s * (1 - (1 - 1 / s) ** m)))


@pytest.mark.parametrize("f,m,s", CONFIGS)
def test_masks_are_fixed_binary_and_cover_every_feature(f, m, s):
    layer = MemberMasks(f, m, s)
    masks = layer.masks
    assert masks.shape == (m, f) and masks.dtype == torch.bool
    assert "masks" in layer.state_dict() and not list(layer.parameters())  # a buffer, saved; nothing to train
    torch.testing.assert_close(MemberMasks(f, m, s).masks, masks, rtol=0, atol=0)  # a second build
    torch.testing.assert_close(generate_masks(f, m, s), masks, rtol=0, atol=0)
    x = torch.randn(m * 3, f)
    torch.testing.assert_close(layer(x), layer(x), rtol=0, atol=0)  # fixed across calls
    torch.testing.assert_close(layer.masks, masks, rtol=0, atol=0)
    assert (masks.sum(dim=1) == paper_kept(f, m, s)).all()  # every mask keeps the formula's count
    assert masks.any(dim=0).all()  # every feature is used by some mask
    assert torch.unique(masks, dim=0).shape[0] == m  # M distinct masks


@pytest.mark.parametrize("f,m,s", [c for c in CONFIGS if c[0] >= 128])
def test_pairwise_overlap_is_about_kept_over_scale(f, m, s):
    """Each mask draws its m features among about m·s positions, so two masks share about m/s of them."""
    masks = generate_masks(f, m, s).double()
    kept = paper_kept(f, m, s)
    overlap = masks @ masks.T  # (M, M): features shared by masks i and j
    pairs = overlap[~torch.eye(m, dtype=torch.bool)]
    assert pairs.mean().item() == pytest.approx(kept / s, rel=0.05)
    assert (pairs < kept).all()  # no two masks coincide


def test_scale_one_is_the_single_model():
    masks = generate_masks(32, 4, 1.0)
    assert masks.all()


@pytest.mark.parametrize(
    "args,match",
    [
        ((64, 4, 0.5), r"scale must be a number in \[1, 6\]"),
        ((64, 4, 7.0), r"scale must be a number in \[1, 6\]"),
        ((8, 4, 2.0), "at least 10 features"),
        ((10, 64, 6.0), "cannot build 64 distinct masks over 10 features"),
    ],
)
def test_out_of_range_options_raise_one_line(args, match):
    with pytest.raises(ConfigError, match=match) as error:
        MemberMasks(*args)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("shape", [(12,), (12, 5, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_forward_equals_a_loop_over_members(shape, dtype):
    m, b = 4, 3
    layer = MemberMasks(shape[0], m, 2.0)
    x = torch.randn(m * b, *shape).to(dtype)
    y = layer(x)
    assert y.shape == x.shape and y.dtype == dtype
    for i in range(m):
        rows = slice(i * b, (i + 1) * b)
        mask = layer.masks[i].to(dtype).view(shape[0], *(1,) * (len(shape) - 1))
        torch.testing.assert_close(y[rows], x[rows] * mask, rtol=0, atol=0)


def test_forward_refuses_rows_that_are_not_member_major():
    with pytest.raises(ConfigError, match="multiple of num_members"):
        MemberMasks(12, 4, 2.0)(torch.randn(6, 12))


def test_masksembles_mlp_is_deterministic_at_test_and_its_members_differ():
    torch.manual_seed(0)
    model = Masksembles(num_members=4, input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(32, 16)).eval()
    x = torch.randn(6, 1, 8, 8)
    out = model(x)  # (M, B, C)
    assert out.shape == (4, 6, 10)
    torch.testing.assert_close(model(x), out, rtol=0, atol=0)
    for i, j in itertools.combinations(range(4), 2):
        assert not torch.allclose(out[i], out[j]), f"members {i} and {j} agree"
    assert sum(isinstance(mod, MemberMasks) for mod in model.network.modules()) == 2  # one per hidden layer


def test_masksembles_backbones_share_every_weight():
    """Masks add no parameter: Masksembles networks have the single model's parameter count."""
    layers = masksembles_layers(4, 2.0)
    assert num_params(resnet18(layers, (3, 32, 32), 10)) == SINGLE_PARAMS
    resnet = resnet18(layers, (3, 8, 8), 10, width=16)
    assert sum(isinstance(mod, MemberMasks) for mod in resnet.modules()) == 8  # one per residual block
    wrn = wide_resnet(layers, (3, 8, 8), 10, depth=10, widen_factor=1)
    assert sum(isinstance(mod, MemberMasks) for mod in wrn.modules()) == 4  # 3 blocks and the head
    for net, hw in ((resnet, 8), (wrn, 8)):
        y = net.eval()(tile_members(torch.randn(2, 3, hw, hw), 4)).view(4, 2, 10)
        assert not torch.allclose(y[0], y[1])


OTHER_FACTORIES = {
    "single": plain_layers(),
    "mc_dropout": plain_layers(4, mc_dropout=True),
    "batch_ensemble": batch_ensemble_layers(4),
    "deep_ensemble": deep_ensemble_layers(4),
}


def test_other_methods_keep_their_parameter_counts():
    """The counts tests/nn/test_resnet.py and test_wide_resnet.py assert, with the member_masks slot present."""
    counts = {name: num_params(resnet18(layers, (3, 32, 32), 10)) for name, layers in OTHER_FACTORIES.items()}
    assert counts == {
        "single": SINGLE_PARAMS,
        "mc_dropout": SINGLE_PARAMS,
        "batch_ensemble": 11_210_652,
        "deep_ensemble": 4 * SINGLE_PARAMS,
    }
    assert num_params(wide_resnet(plain_layers(), (3, 32, 32), 10)) == WRN_28_10_PARAMS


@pytest.mark.parametrize("name", OTHER_FACTORIES)
def test_other_methods_keep_their_state_dict_keys(name):
    layers = OTHER_FACTORIES[name]
    net = mlp(layers, (1, 8, 8), 10, hidden_sizes=(16, 12))
    # Flatten, then linear and ReLU per hidden layer (no dropout): the linears stay at indices 1, 3, 5
    assert [n for n, mod in net.named_children() if not isinstance(mod, nn.ReLU | nn.Flatten)] == ["1", "3", "5"]
    for build in (lambda: resnet18(layers, (3, 8, 8), 10, width=4), lambda: wide_resnet(layers, (3, 8, 8), 10, depth=10, widen_factor=1)):
        network = build()
        assert not any("mask" in key for key in network.state_dict())
        masks = [mod for n, mod in network.named_modules() if n.endswith(("member_masks", "head_masks"))]
        assert masks and all(type(mod) is nn.Identity for mod in masks)
