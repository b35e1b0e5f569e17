"""Packed-Ensembles: the packed network is M independent narrow networks; grouped layers; sizes; errors."""

from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods import PackedEnsemble
from ensemble_lab.metrics.weight_space import weight_cosine
from ensemble_lab.nn import build_backbone
from ensemble_lab.nn.ensemble_conv import EnsembleConv2d
from ensemble_lab.nn.ensemble_linear import EnsembleLinear
from ensemble_lab.nn.factories import LayerFactory, plain_layers
from ensemble_lab.nn.members import tile_members

M = 4
ROOT = Path(__file__).resolve().parents[2]


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def member_state(ensemble: nn.Module, i: int) -> dict[str, torch.Tensor]:
    """Member i's slice of every per-member tensor (num_batches_tracked is shared)."""
    return {k: (v if k.endswith("num_batches_tracked") else v[i]) for k, v in ensemble.state_dict().items()}


def check_members_are_separate_networks(model: PackedEnsemble, members: list[nn.Module], input_shape, batch=3):
    """In eval, member i's logits are those of ``members[i]`` holding member i's slices, on the same images."""
    torch.manual_seed(1)
    x = torch.randn(batch, *input_shape, dtype=torch.float64)
    model.train()
    model(x)  # move the BatchNorm running statistics away from their initial values
    model.eval()
    with torch.no_grad():
        logits = model(x)  # (M, B, C)
        for i, member in enumerate(members):
            member.double().eval()
            member.load_state_dict(member_state(model.network, i))
            torch.testing.assert_close(logits[i], member(x))


# α·w/M written out: α = 2, M = 4 halves every width
@pytest.mark.parametrize(
    "backbone, options, member_options, input_shape",
    [
        ("mlp", {"hidden_sizes": [16, 8]}, {"hidden_sizes": [8, 4]}, (1, 6, 6)),
        ("resnet18", {"width": 8}, {"width": 4}, (3, 8, 8)),
    ],
)
def test_gamma_1_members_are_plain_networks_of_width_alpha_w_over_m(backbone, options, member_options, input_shape):
    torch.manual_seed(0)
    model = PackedEnsemble(num_members=M, alpha=2.0, backbone=backbone, input_shape=input_shape, num_classes=5, **options)
    model = model.double()
    members = [build_backbone(backbone, plain_layers(), input_shape, 5, **member_options) for _ in range(M)]
    check_members_are_separate_networks(model, members, input_shape)


def test_alpha_3_m_2_mlp_members_are_one_and_a_half_times_as_wide():
    torch.manual_seed(0)
    model = PackedEnsemble(num_members=2, alpha=3, backbone="mlp", hidden_sizes=[8, 4], input_shape=(1, 4, 4), num_classes=3)
    members = [build_backbone("mlp", plain_layers(), (1, 4, 4), 3, hidden_sizes=[12, 6]) for _ in range(2)]
    check_members_are_separate_networks(model.double(), members, (1, 4, 4))


def authors_groups(channels_in: int, gamma: int, min_channels: int) -> int:
    """The authors' rule for a member's groups (torch-uncertainty's PackedConv2d): γ, lowered by one while
    the member's input channels do not split into that many groups or a group reads fewer than ``min_channels``."""
    g = gamma
    while g > 1 and (channels_in % g != 0 or channels_in // g < min_channels):
        g -= 1
    return g


def grouped_plain_layers(gamma: int, min_channels: int, group_block_entry: bool) -> LayerFactory:
    """One member as the authors build it, from plain layers: a dense stem and block-entry conv (unless
    ``group_block_entry``), every other conv nn.Conv2d(groups=authors_groups(...))."""

    def grouped(in_channels, out_channels, kernel_size, **options):
        groups = authors_groups(in_channels, gamma, min_channels)
        return nn.Conv2d(in_channels, out_channels, kernel_size, groups=groups, **options)

    return LayerFactory(
        num_members=1, linear=nn.Linear, conv2d=grouped, norm2d=nn.BatchNorm2d,
        input_conv2d=nn.Conv2d, block_entry_conv2d=grouped if group_block_entry else nn.Conv2d,
    )


# member width 4 (channels 4, 8, 16, 32 by stage): a floor of 4 channels per group lowers γ in stage 1 only
@pytest.mark.parametrize("min_channels, group_block_entry", [(0, False), (4, False), (0, True), (64, False)])
def test_gamma_2_resnet_members_are_the_authors_grouped_resnets(min_channels, group_block_entry):
    torch.manual_seed(0)
    options = dict(min_channels_per_group=min_channels, group_block_entry=group_block_entry)
    model = PackedEnsemble(num_members=M, alpha=2.0, gamma=2, backbone="resnet18", width=8, input_shape=(3, 8, 8), num_classes=5, **options)
    members = [build_backbone("resnet18", grouped_plain_layers(2, min_channels, group_block_entry), (3, 8, 8), 5, width=4) for _ in range(M)]
    check_members_are_separate_networks(model.double(), members, (3, 8, 8))
    blocks = model.network.blocks
    assert model.network.conv1.groups == 1 and blocks[0].conv1.groups == (2 if group_block_entry and min_channels <= 2 else 1)
    assert blocks[0].conv2.groups == (2 if min_channels <= 2 else 1) and blocks[2].conv2.groups == (2 if min_channels <= 4 else 1)


@pytest.mark.parametrize("gamma, stride, bias", [(2, 1, False), (3, 2, True), (6, 1, True)])
def test_grouped_ensemble_conv_equals_conv2d_with_groups_per_member(gamma, stride, bias):
    torch.manual_seed(0)
    layer = EnsembleConv2d(6, 12, 3, 3, stride=stride, padding=1, bias=bias, groups=gamma).double()
    assert layer.weight.shape == (3, 12, 6 // gamma, 3, 3)
    convs = []
    for i in range(3):
        conv = nn.Conv2d(6, 12, 3, stride=stride, padding=1, bias=bias, groups=gamma).double()
        with torch.no_grad():
            conv.weight.copy_(layer.weight[i])
            if bias:
                conv.bias.copy_(layer.bias[i])
        convs.append(conv)
    x = torch.randn(3 * 2, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y = layer(x)
    y_ref = torch.cat([conv(rows) for conv, rows in zip(convs, x_ref.chunk(3))])
    torch.testing.assert_close(y, y_ref)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    (y_ref * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.weight.grad, torch.stack([c.weight.grad for c in convs]))


@pytest.mark.parametrize("bias", [False, True])
def test_grouped_ensemble_linear_is_block_diagonal_per_member(bias):
    torch.manual_seed(0)
    gamma, m, batch = 2, 3, 4
    layer = EnsembleLinear(6, 4, m, bias=bias, groups=gamma).double()
    assert layer.weight.shape == (m, 4, 3)
    x = torch.randn(m * batch, 6, dtype=torch.float64)
    y = layer(x)
    for i in range(m):
        w = layer.weight[i]  # (out, in/γ): rows [2j, 2j+2) are block j
        dense = torch.block_diag(w[:2], w[2:])  # (4, 6): block j reads inputs [3j, 3j+3)
        expected = x[i * batch : (i + 1) * batch] @ dense.T
        if bias:
            expected = expected + layer.bias[i]
        torch.testing.assert_close(y[i * batch : (i + 1) * batch], expected)
        conv = nn.Conv1d(6, 4, 1, groups=gamma, bias=bias).double()  # the same layer as a grouped 1x1 conv
        with torch.no_grad():
            conv.weight.copy_(w.unsqueeze(-1))
            if bias:
                conv.bias.copy_(layer.bias[i])
        torch.testing.assert_close(conv(x[i * batch : (i + 1) * batch].unsqueeze(-1)).squeeze(-1), expected)


def test_gamma_2_mlp_groups_hidden_layers_only():
    model = PackedEnsemble(num_members=M, gamma=2, backbone="mlp", hidden_sizes=[16, 8, 8], input_shape=(1, 4, 4), num_classes=5)
    linears = [m for m in model.network if isinstance(m, EnsembleLinear)]
    assert [(lin.in_features, lin.out_features, lin.groups) for lin in linears] == [
        (16, 8, 1),  # first layer: the full input
        (8, 4, 2),
        (4, 4, 2),
        (4, 5, 1),  # classifier: each member's logits from all its features
    ]
    assert model(torch.randn(2, 1, 4, 4)).shape == (M, 2, 5)


def resnet18_params(width: int, image_channels: int = 3, classes: int = 10) -> int:
    """Parameters of a plain CIFAR ResNet-18 of first-stage width w, from its layer shapes (3x3 convs without
    bias, BatchNorm scale + shift, 1x1 projection shortcuts where the shape changes, linear with bias)."""
    total = 9 * image_channels * width + 2 * width  # stem conv + norm
    channels = width
    for stage, c in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for block in range(2):
            total += 9 * channels * c + 9 * c * c + 4 * c  # conv1 + conv2, bn1 + bn2
            if stage > 0 and block == 0:
                total += channels * c + 2 * c  # shortcut 1x1 conv + norm
            channels = c
    return total + 8 * width * classes + classes


def authors_packed_resnet18_params(
    alpha: int, m: int, gamma: int, width: int = 64, image_channels: int = 3, classes: int = 10,
    min_channels: int = 64, gamma_in_block_entry: bool = False,
) -> int:
    """Parameters of the authors' PE-(α, M, γ) CIFAR ResNet-18, layer by layer as their packed layers size them:
    a conv of c_in -> c_out channels (the backbone's) holds α·c_out filters of α·c_in / G channels, G = M·γ'
    groups (γ' = authors_groups of a member's α·c_in / M input channels); the stem is one dense conv on the
    image (G = 1), each block's conv1 has G = M (no subgroups), the classifier M·classes outputs from
    α·8w / M features each; every norm has 2·α·c parameters."""

    def conv(c_in: int, c_out: int, k: int, groups: int) -> int:
        return alpha * c_out * (alpha * c_in // groups) * k * k

    def grouped(c_in: int) -> int:
        return m * authors_groups(alpha * c_in // m, gamma, min_channels)

    total = alpha * width * image_channels * 9 + 2 * alpha * width  # stem: α·w filters over the image (not widened), norm
    channels = width
    for stage, c in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for block in range(2):
            total += conv(channels, c, 3, grouped(channels) if gamma_in_block_entry else m) + 2 * alpha * c  # conv1, bn1
            total += conv(c, c, 3, grouped(c)) + 2 * alpha * c  # conv2, bn2
            if stage > 0 and block == 0:
                total += conv(channels, c, 1, grouped(channels)) + 2 * alpha * c  # shortcut 1x1 conv + norm
            channels = c
    return total + m * classes * (alpha * 8 * width // m) + m * classes


def packed_resnet18(**options) -> PackedEnsemble:
    return PackedEnsemble(num_members=4, alpha=2.0, backbone="resnet18", width=64, input_shape=(3, 32, 32), **options)


def test_cifar_resnet18_parameter_count_is_the_authors():
    assert resnet18_params(64) == 11_173_962  # the formula gives the single ResNet-18's known count
    # γ = 1: M plain ResNet-18s of width α·w/M
    assert num_params(packed_resnet18(gamma=1)) == 4 * resnet18_params(32) == authors_packed_resnet18_params(2, 4, 1) == 11_190_440
    # configs/cifar10/packed.yaml, PE-(2, 4, 2): the authors' ResNet-18 (torch-uncertainty's packed_resnet18, style cifar)
    assert num_params(packed_resnet18(gamma=2)) == authors_packed_resnet18_params(2, 4, 2) == 8_175_784
    # without the 64-channel floor: γ = 2 in every conv2 and shortcut
    assert num_params(packed_resnet18(gamma=2, min_channels_per_group=0)) == authors_packed_resnet18_params(2, 4, 2, min_channels=0) == 7_970_984
    # γ everywhere between the stem and the classifier (this library's construction before): half the γ = 1 count
    everywhere = packed_resnet18(gamma=2, min_channels_per_group=0, group_block_entry=True)
    assert num_params(everywhere) == authors_packed_resnet18_params(2, 4, 2, min_channels=0, gamma_in_block_entry=True) == 5_611_688


def test_packed_cifar_config_builds_the_authors_resnet18():
    config = yaml.safe_load((ROOT / "configs/cifar10/packed.yaml").read_text())["model"]["init_args"]
    options = {k: v for k, v in config.items() if k not in ("optimizer", "lr_scheduler")}
    assert options["backbone"] == {"class_path": "ResNet18Options", "init_args": {"width": 64}}
    model = PackedEnsemble(input_shape=(3, 32, 32), num_classes=10, **options)
    expected = authors_packed_resnet18_params(int(options["alpha"]), options["num_members"], options["gamma"])
    assert num_params(model) == expected == 8_175_784


def packed_wrn_params(depth: int, k: int, alpha: int, m: int, gamma: int, classes: int = 10, min_channels: int = 64) -> int:
    """Parameters of this library's (pre-activation) CIFAR WRN-depth-k packed as the authors pack theirs: the stem
    one dense conv of α·16 filters on the image, every other conv α·c_out filters of α·c_in / G channels
    (G = M·γ', γ' by authors_groups), norms 2·α·c, a final norm, the classifier M·classes from α·64k / M features."""
    n = (depth - 4) // 6

    def conv(c_in: int, c_out: int, ks: int) -> int:
        groups = m * authors_groups(alpha * c_in // m, gamma, min_channels)
        return alpha * c_out * (alpha * c_in // groups) * ks * ks

    total = alpha * 16 * 3 * 9  # stem: α·16 filters over the 3 image channels
    c_in = 16
    for stage, width in enumerate((16 * k, 32 * k, 64 * k)):
        for i in range(n):
            total += 2 * alpha * c_in + conv(c_in, width, 3) + 2 * alpha * width + conv(width, width, 3)
            if c_in != width or (i == 0 and stage > 0):
                total += conv(c_in, width, 1)
            c_in = width
    return total + 2 * alpha * c_in + m * classes * (alpha * c_in // m) + m * classes


@pytest.mark.parametrize("depth, k, gamma, min_channels", [(10, 4, 1, 64), (16, 8, 2, 0), (28, 10, 2, 64)])
def test_wide_resnet_stem_has_alpha_16_channels_in_all(depth, k, gamma, min_channels):
    model = PackedEnsemble(
        num_members=4, alpha=2.0, gamma=gamma, min_channels_per_group=min_channels, backbone="wide_resnet",
        depth=depth, widen_factor=k, input_shape=(3, 32, 32),
    )
    stem = model.network.conv1
    assert stem.num_members * stem.out_channels == 2 * 16  # α·16 filters in all: 8 per member
    assert num_params(model) == packed_wrn_params(depth, k, 2, 4, gamma, min_channels=min_channels)


def test_first_layer_runs_once_on_the_untiled_batch():
    """Every member reads the same images: the stem sees B rows, not M·B, and equals the grouped conv over the tiled batch."""
    torch.manual_seed(0)
    model = PackedEnsemble(num_members=M, gamma=2, backbone="resnet18", width=8, input_shape=(3, 8, 8)).double()
    seen = []
    model.network.conv1.register_forward_hook(lambda module, args, out: seen.append((args[0].shape, out.shape)))
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    model(x)
    assert seen == [((3, 3, 8, 8), (3, M * 4, 8, 8))]  # (B, C, H, W) in, channel-stacked (B, M·w, H, W) out


@pytest.mark.parametrize("bias", [False, True])
def test_shared_input_conv_equals_the_grouped_conv_over_the_tiled_batch(bias):
    torch.manual_seed(0)
    shared = EnsembleConv2d(3, 5, 3, M, padding=1, bias=bias, channel_stacked=True, shared_input=True).double()
    tiled = EnsembleConv2d(3, 5, 3, M, padding=1, bias=bias).double()
    tiled.load_state_dict(shared.state_dict())
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y = shared(x)  # (B, M*5, H, W)
    y_ref = tiled(tile_members(x_ref, M))  # (M*B, 5, H, W): member-major rows
    torch.testing.assert_close(y.view(2, M, 5, 6, 6).transpose(0, 1).reshape(M * 2, 5, 6, 6), y_ref)
    upstream = torch.randn_like(y_ref)
    (y_ref * upstream).sum().backward()
    (y.view(2, M, 5, 6, 6).transpose(0, 1).reshape(M * 2, 5, 6, 6) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(shared.weight.grad, tiled.weight.grad)


@pytest.mark.parametrize("bias", [False, True])
def test_shared_input_linear_equals_the_batched_linear_over_the_tiled_rows(bias):
    torch.manual_seed(0)
    shared = EnsembleLinear(6, 4, M, bias=bias, shared_input=True).double()
    tiled = EnsembleLinear(6, 4, M, bias=bias).double()
    tiled.load_state_dict(shared.state_dict())
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(shared(x), tiled(tile_members(x, M)))


def test_members_are_independent_draws():
    torch.manual_seed(0)
    model = PackedEnsemble(num_members=M, backbone="resnet18", width=8, input_shape=(3, 8, 8))
    cosine = weight_cosine(model)
    assert cosine is not None and cosine.shape == (M, M)
    off_diagonal = cosine[~torch.eye(M, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.1


def test_forward_is_member_major():
    model = PackedEnsemble(num_members=3, backbone="mlp", hidden_sizes=[8], input_shape=(1, 4, 4), num_classes=5).eval()
    x = torch.randn(2, 1, 4, 4)
    rows = model.network(x)  # (M*B, C) from the untiled batch: rows [m*B, (m+1)*B) are member m's
    torch.testing.assert_close(model(x), rows.view(3, 2, 5))


BAD = partial(PackedEnsemble, backbone="mlp", hidden_sizes=[8], input_shape=(1, 4, 4))


@pytest.mark.parametrize(
    "make, match",
    [
        (partial(BAD, alpha=0), "alpha"),
        (partial(BAD, alpha=-1.0), "alpha"),
        (partial(BAD, alpha=float("nan")), "alpha"),
        (partial(BAD, gamma=0), "gamma"),
        (partial(BAD, gamma=1.5), "gamma"),
        (partial(BAD, min_channels_per_group=-1), "min_channels_per_group"),
        (partial(BAD, min_channels_per_group=6.5), "min_channels_per_group"),
        (partial(BAD, group_block_entry="yes"), "group_block_entry"),
        # a hidden layer writing num_classes units looks like the classifier: it cannot be grouped
        (partial(PackedEnsemble, backbone="mlp", hidden_sizes=[16, 20], gamma=2, input_shape=(1, 4, 4)), "cannot group"),
    ],
)
def test_bad_options_give_one_line_errors(make, match):
    with pytest.raises(ConfigError, match=match) as error:
        make()
    assert "\n" not in str(error.value)


def test_grouped_layers_refuse_widths_that_do_not_split():
    with pytest.raises(ConfigError, match="divide by groups"):
        EnsembleConv2d(6, 8, 3, 2, groups=4)
    with pytest.raises(ConfigError, match="divide by groups"):
        EnsembleLinear(6, 8, 2, groups=4)


@pytest.mark.parametrize("backbone, options, shape", [("mlp", {"hidden_sizes": [16, 8]}, (1, 8, 8)), ("resnet18", {"width": 8}, (3, 8, 8))])
def test_layer_factory_builds_the_models_own_network(backbone, options, shape):
    """The hook other code builds from gives the grouping of the model's network: one group per member in the
    first layer and the classifier, M·γ elsewhere when γ is never lowered (it once left those edges to the caller)."""
    grouping = dict(min_channels_per_group=0, group_block_entry=True)  # γ in every layer between the first and the classifier
    model = PackedEnsemble(num_members=2, alpha=2.0, gamma=2, backbone=backbone, input_shape=shape, num_classes=10, **options, **grouping)
    again = build_backbone(backbone, model.layer_factory(), shape, 10, **model.member_backbone_options(options))
    groups = [m.groups for m in again.modules() if isinstance(m, (EnsembleConv2d, EnsembleLinear))]  # γ groups per member
    assert groups[0] == groups[-1] == 1 and set(groups[1:-1]) == {2}  # the first layer and the classifier: dense members
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.network.parameters()]
