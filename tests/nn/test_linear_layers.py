"""BatchLinear and EnsembleLinear against a loop over explicit per-member weights."""

import pytest
import torch
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn import BatchLinear, EnsembleLinear, FastWeights, tile_members


def per_member_reference(layer, x: torch.Tensor) -> torch.Tensor:
    """Member i's rows through F.linear with member i's explicit weight and bias."""
    m = layer.num_members
    rows = x.shape[0] // m
    outs = []
    for i in range(m):
        bias = None if layer.bias is None else layer.bias[i]
        outs.append(F.linear(x[i * rows : (i + 1) * rows], layer.member_weight(i), bias))
    return torch.cat(outs)


@pytest.mark.parametrize("layer_cls", [BatchLinear, EnsembleLinear])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("members,batch", [(1, 5), (3, 4), (4, 1)])
def test_forward_and_gradients_match_member_loop(layer_cls, bias, members, batch):
    torch.manual_seed(members * 10 + batch)
    layer = layer_cls(7, 5, num_members=members, bias=bias).double()
    x = torch.randn(members * batch, 7, dtype=torch.double, requires_grad=True)
    upstream = torch.randn(members * batch, 5, dtype=torch.double)

    out = layer(x)
    grads = torch.autograd.grad((out * upstream).sum(), [x, *layer.parameters()])
    ref = per_member_reference(layer, x)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), [x, *layer.parameters()])

    torch.testing.assert_close(out, ref)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)


def test_batch_linear_member_weight_is_rank_one_perturbation():
    layer = BatchLinear(4, 3, num_members=2)
    i = 1
    expected = torch.stack([layer.weight[o] * layer.s[i, o] * layer.r[i] for o in range(3)])
    torch.testing.assert_close(layer.member_weight(i), expected)
    assert layer.r.shape == (2, 4) and layer.s.shape == (2, 3) and layer.bias.shape == (2, 3)


def test_fast_weight_inits():
    torch.manual_seed(0)
    normal = BatchLinear(400, 300, num_members=4, fast_weights=FastWeights(std=0.5))
    assert abs(normal.r.mean().item() - 1) < 0.05 and abs(normal.r.std().item() - 0.5) < 0.05
    signs = BatchLinear(40, 30, num_members=4, fast_weights=FastWeights(init="random_sign"))
    assert set(signs.r.unique().tolist()) == {-1.0, 1.0}
    with pytest.raises(ConfigError, match="random_sign"):
        FastWeights(init="uniform")


def test_tiled_identical_members_give_identical_rows():
    layer = EnsembleLinear(3, 2, num_members=3)
    with torch.no_grad():
        layer.weight.copy_(layer.weight[0].expand_as(layer.weight))
        layer.bias.copy_(layer.bias[0].expand_as(layer.bias))
    x = torch.randn(4, 3)
    out = layer(tile_members(x, 3)).view(3, 4, 2)  # (M, B, out)
    expected = F.linear(x, layer.weight[0], layer.bias[0])  # member 0's own nn.Linear computation
    for i in range(3):
        torch.testing.assert_close(out[i], expected)


@pytest.mark.parametrize("layer_cls", [BatchLinear, EnsembleLinear])
def test_rows_not_divisible_by_members_is_a_clear_error(layer_cls):
    layer = layer_cls(3, 2, num_members=4)
    with pytest.raises(ConfigError, match="6 rows for 4 members"):
        layer(torch.randn(6, 3))


@pytest.mark.parametrize("bad", [0, -2])
def test_num_members_must_be_positive(bad):
    with pytest.raises(ConfigError, match="num_members"):
        BatchLinear(3, 2, num_members=bad)


def test_tile_members_is_member_major():
    x = torch.arange(6.0).view(3, 2)
    tiled = tile_members(x, 2)
    torch.testing.assert_close(tiled, torch.cat([x, x]))


@pytest.mark.parametrize("rows", [4, 200])  # BatchLinear: factored, then member weights built (200·24 > 5·16·8)
@pytest.mark.parametrize("layer_cls", [BatchLinear, EnsembleLinear])
def test_bf16_autocast_gives_bf16_close_to_the_float32_member_loop(layer_cls, rows):
    torch.manual_seed(0)
    layer = layer_cls(16, 8, num_members=3)
    x = torch.randn(3 * rows, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16  # a float32 fast weight or bias must not promote it back
    ref = per_member_reference(layer, x)  # float32
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2 * float(ref.detach().abs().max()))


def test_num_members_check_lives_with_the_member_layout():
    from ensemble_lab.nn import members

    with pytest.raises(ConfigError, match="num_members must be an integer >= 1, got 0"):
        members.check_num_members(0)
    assert members.check_num_members.__module__ == "ensemble_lab.nn.members"  # one home, used by every layer
