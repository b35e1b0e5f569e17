"""BatchConv2d: the one-op forward and its gradients equal a per-member loop over explicit weights."""

import math

import pytest
import torch
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.batch_conv import BatchConv2d
from ensemble_lab.nn.fast_weights import FastWeights

M = 3
# (kernel_size, stride, padding): same-size, downsampling, 1x1 shortcut, large kernel, non-square.
CONV_SETTINGS = [(3, 1, 1), (3, 2, 1), (1, 2, 0), (5, 1, 2), ((3, 1), 1, (1, 0))]


def loop_reference(layer: BatchConv2d, x: torch.Tensor) -> torch.Tensor:
    """Member i's rows through F.conv2d with member i's explicit weight W ∘ (s_i r_iᵀ)."""
    outs = []
    for i, rows in enumerate(x.chunk(layer.num_members)):
        bias = None if layer.bias is None else layer.bias[i]
        outs.append(F.conv2d(rows, layer.member_weight(i), bias, layer.stride, layer.padding))
    return torch.cat(outs)


@pytest.mark.parametrize("kernel_size, stride, padding", CONV_SETTINGS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_forward_and_gradients_match_member_loop(kernel_size, stride, padding, bias, batch):
    torch.manual_seed(0)
    layer = BatchConv2d(4, 5, kernel_size, M, stride=stride, padding=padding, bias=bias).double()
    x = torch.randn(M * batch, 4, 7, 6, dtype=torch.float64, requires_grad=True)
    params = [x, layer.weight, layer.r, layer.s] + ([layer.bias] if bias else [])

    y = layer(x)
    y_ref = loop_reference(layer, x)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref)

    upstream = torch.randn_like(y)  # a generic loss, so every output element carries weight
    grads = torch.autograd.grad((y * upstream).sum(), params)
    grads_ref = torch.autograd.grad((y_ref * upstream).sum(), params)
    for name, g, g_ref in zip(["x", "weight", "r", "s", "bias"], grads, grads_ref):
        torch.testing.assert_close(g, g_ref, msg=lambda m: f"grad of {name}: {m}")


def test_member_weight_shape_and_formula():
    layer = BatchConv2d(3, 4, 3, M)
    for i in range(M):
        w = layer.member_weight(i)
        assert w.shape == layer.weight.shape
        k = (1, 2)  # one kernel position: the scale is s_i[o] * r_i[c] at every position
        torch.testing.assert_close(w[:, :, k[0], k[1]], layer.weight[:, :, k[0], k[1]] * torch.outer(layer.s[i], layer.r[i]))
    with pytest.raises(IndexError):
        layer.member_weight(M)


def test_rows_not_divisible_by_members_raise():
    layer = BatchConv2d(2, 2, 3, M, padding=1)
    with pytest.raises(ConfigError, match="num_members"):
        layer(torch.randn(M * 2 + 1, 2, 5, 5))


@pytest.mark.parametrize("num_members", [0, -1, 2.0])
def test_invalid_num_members_raise(num_members):
    with pytest.raises(ConfigError, match="num_members"):
        BatchConv2d(2, 2, 3, num_members)


def test_unknown_fast_weight_init_raises():
    with pytest.raises(ConfigError, match="random_sign"):
        FastWeights(init="uniform")


def test_fast_weight_inits():
    torch.manual_seed(0)
    signs = BatchConv2d(64, 64, 3, 4, fast_weights=FastWeights(init="random_sign"))
    for t in (signs.r, signs.s):
        assert set(t.detach().unique().tolist()) == {-1.0, 1.0}
    normal = BatchConv2d(256, 256, 1, 8, fast_weights=FastWeights(std=0.25))
    fast = torch.cat([normal.r.flatten(), normal.s.flatten()]).detach()  # 4096 draws of N(1, 0.25)
    assert abs(fast.mean().item() - 1.0) < 0.03 and abs(fast.std().item() - 0.25) < 0.03


def test_shared_weight_initialised_like_conv2d():
    torch.manual_seed(0)
    layer = BatchConv2d(16, 32, 3, M, bias=True)
    bound = 1 / math.sqrt(16 * 9)  # nn.Conv2d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    for t in (layer.weight, layer.bias):
        assert t.abs().max() <= bound and t.abs().max() > 0.9 * bound
    assert layer.bias.shape == (M, 32) and layer.r.shape == (M, 16) and layer.s.shape == (M, 32)
