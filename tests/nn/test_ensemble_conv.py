"""EnsembleConv2d / EnsembleBatchNorm2d equal M separate nn.Conv2d / nn.BatchNorm2d."""

import math

import pytest
import torch
from torch import nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.ensemble_conv import EnsembleBatchNorm2d, EnsembleConv2d

M = 3


def separate_convs(layer: EnsembleConv2d) -> list[nn.Conv2d]:
    """M nn.Conv2d holding copies of the ensemble's per-member parameters."""
    convs = []
    for i in range(layer.num_members):
        conv = nn.Conv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
            bias=layer.bias is not None,
        ).double()
        with torch.no_grad():
            conv.weight.copy_(layer.weight[i])
            if layer.bias is not None:
                conv.bias.copy_(layer.bias[i])
        convs.append(conv)
    return convs


@pytest.mark.parametrize("kernel_size, stride, padding", [(3, 1, 1), (3, 2, 1), (1, 2, 0), ((3, 1), 1, (1, 0))])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch", [1, 2])
def test_conv_matches_separate_convs(kernel_size, stride, padding, bias, batch):
    torch.manual_seed(0)
    layer = EnsembleConv2d(4, 5, kernel_size, M, stride=stride, padding=padding, bias=bias).double()
    convs = separate_convs(layer)
    x = torch.randn(M * batch, 4, 7, 6, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)

    y = layer(x)
    y_ref = torch.cat([conv(rows) for conv, rows in zip(convs, x_ref.chunk(M))])
    torch.testing.assert_close(y, y_ref)

    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    (y_ref * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.weight.grad, torch.stack([c.weight.grad for c in convs]))
    if bias:
        torch.testing.assert_close(layer.bias.grad, torch.stack([c.bias.grad for c in convs]))


def test_conv_members_initialised_independently_like_conv2d():
    torch.manual_seed(0)
    layer = EnsembleConv2d(16, 32, 3, M, bias=True)
    bound = 1 / math.sqrt(16 * 9)  # each member has nn.Conv2d's fan-in, not one inflated by M
    assert layer.weight.shape == (M, 32, 16, 3, 3) and layer.bias.shape == (M, 32)
    for i in range(M):
        w = layer.member_weight(i)
        assert w.shape == (32, 16, 3, 3)
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert not torch.equal(layer.weight[0], layer.weight[1])


@pytest.mark.parametrize("momentum, track", [(0.1, True), (None, True), (0.1, False)])
def test_batchnorm_matches_separate_batchnorms(momentum, track):
    torch.manual_seed(0)
    c, batch = 4, 3
    ens = EnsembleBatchNorm2d(c, M, momentum=momentum, track_running_stats=track).double()
    bns = [nn.BatchNorm2d(c, momentum=momentum, track_running_stats=track).double() for _ in range(M)]
    with torch.no_grad():  # distinct affine parameters per member, so a mix-up would show
        ens.weight.uniform_(0.5, 1.5)
        ens.bias.uniform_(-0.5, 0.5)
        for i, bn in enumerate(bns):
            bn.weight.copy_(ens.weight[i])
            bn.bias.copy_(ens.bias[i])

    for step in range(2):  # two train steps: checks the momentum (and cumulative-average) update
        # Each member sees differently shifted data, so per-member statistics differ.
        x = (torch.randn(M * batch, c, 5, 5, dtype=torch.float64) + torch.arange(M * batch)[:, None, None, None] // batch)
        x.requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        y = ens(x)
        y_ref = torch.cat([bn(rows) for bn, rows in zip(bns, x_ref.chunk(M))])
        torch.testing.assert_close(y, y_ref)
        upstream = torch.randn_like(y)
        ens.zero_grad()
        for bn in bns:
            bn.zero_grad()
        (y * upstream).sum().backward()
        (y_ref * upstream).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad)
        torch.testing.assert_close(ens.weight.grad, torch.stack([bn.weight.grad for bn in bns]))
        torch.testing.assert_close(ens.bias.grad, torch.stack([bn.bias.grad for bn in bns]))
        if track:
            torch.testing.assert_close(ens.running_mean, torch.stack([bn.running_mean for bn in bns]))
            torch.testing.assert_close(ens.running_var, torch.stack([bn.running_var for bn in bns]))
            assert ens.num_batches_tracked.item() == bns[0].num_batches_tracked.item() == step + 1

    ens.eval()
    for bn in bns:
        bn.eval()
    x = torch.randn(M * 2, c, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(ens(x), torch.cat([bn(rows) for bn, rows in zip(bns, x.chunk(M))]))


def test_rows_not_divisible_by_members_raise():
    with pytest.raises(ConfigError, match="num_members"):
        EnsembleConv2d(2, 2, 3, M)(torch.randn(M + 1, 2, 5, 5))
    with pytest.raises(ConfigError, match="num_members"):
        EnsembleBatchNorm2d(2, M)(torch.randn(M + 1, 2, 5, 5))


@pytest.mark.parametrize("num_members", [0, 1.5])
def test_invalid_num_members_raise(num_members):
    with pytest.raises(ConfigError, match="num_members"):
        EnsembleConv2d(2, 2, 3, num_members)
    with pytest.raises(ConfigError, match="num_members"):
        EnsembleBatchNorm2d(2, num_members)


def test_channel_stacked_layers_equal_member_major_ones():
    from ensemble_lab.nn.ensemble_conv import ChannelsToMembers, MembersToChannels

    torch.manual_seed(5)
    m, b = 3, 2
    rows = torch.randn(m * b, 4, 6, 6)  # (M*B, C, H, W)
    to_channels, to_members = MembersToChannels(m), ChannelsToMembers(m)
    stacked = to_channels(rows)
    assert stacked.shape == (b, m * 4, 6, 6) and torch.equal(stacked[1, 4:8], rows[b + 1])  # member 1, row 1
    assert torch.equal(to_members(stacked), rows)
    conv = EnsembleConv2d(4, 5, 3, num_members=m, stride=2, padding=1, bias=True)
    conv_stacked = EnsembleConv2d(4, 5, 3, num_members=m, stride=2, padding=1, bias=True, channel_stacked=True)
    norm = EnsembleBatchNorm2d(5, num_members=m)
    norm_stacked = EnsembleBatchNorm2d(5, num_members=m, channel_stacked=True)
    conv_stacked.load_state_dict(conv.state_dict())
    expected = norm(conv(rows))
    torch.testing.assert_close(to_members(norm_stacked(conv_stacked(stacked))), expected)
    torch.testing.assert_close(norm_stacked.running_var, norm.running_var)


@pytest.mark.parametrize("kernel_size,expected", [(3, (3, 3)), ((3, 1), (3, 1)), ([1, 5], (1, 5))])
def test_kernel_size_as_int_or_pair_in_both_conv_layers(kernel_size, expected):
    from ensemble_lab.nn import batch_conv, conv_args, ensemble_conv
    from ensemble_lab.nn.batch_conv import BatchConv2d

    assert conv_args.as_pair(kernel_size) == expected
    assert batch_conv.as_pair is ensemble_conv.as_pair is conv_args.as_pair  # one home
    assert BatchConv2d(2, 4, kernel_size, num_members=2).weight.shape == (4, 2, *expected)
    assert EnsembleConv2d(2, 4, kernel_size, num_members=2).weight.shape == (2, 4, 2, *expected)
