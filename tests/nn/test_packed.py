"""Packed-Ensembles: the packed network is M independent narrow networks; grouped layers; sizes; errors."""

from functools import partial

import pytest
import torch
from torch import nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.evaluation.weight_space import weight_cosine
from ensemble_lab.methods import PackedEnsemble
from ensemble_lab.nn import build_backbone
from ensemble_lab.nn.ensemble_conv import EnsembleConv2d
from ensemble_lab.nn.ensemble_linear import EnsembleLinear
from ensemble_lab.nn.factories import LayerFactory, plain_layers
from ensemble_lab.nn.members import tile_members

M = 4


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


def grouped_plain_layers(gamma: int, image_channels: int) -> LayerFactory:
    """Plain layers whose convs are nn.Conv2d(groups=γ), except the stem (it reads the image)."""

    def conv2d(in_channels, out_channels, kernel_size, **options):
        groups = 1 if in_channels == image_channels else gamma
        return nn.Conv2d(in_channels, out_channels, kernel_size, groups=groups, **options)

    return LayerFactory(num_members=1, linear=nn.Linear, conv2d=conv2d, norm2d=nn.BatchNorm2d)


def test_gamma_2_resnet_members_are_resnets_of_grouped_convs():
    torch.manual_seed(0)
    model = PackedEnsemble(num_members=M, alpha=2.0, gamma=2, backbone="resnet18", width=8, input_shape=(3, 8, 8), num_classes=5)
    members = [build_backbone("resnet18", grouped_plain_layers(2, 3), (3, 8, 8), 5, width=4) for _ in range(M)]
    check_members_are_separate_networks(model.double(), members, (3, 8, 8))
    assert model.network.conv1.groups == 1 and model.network.blocks[0].conv1.groups == 2


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


def resnet18_params(width: int, image_channels: int = 3, classes: int = 10, groups: int = 1) -> int:
    """Parameters of a CIFAR ResNet-18 of first-stage width w, from its layer shapes (3x3 convs without
    bias, BatchNorm scale + shift, 1x1 projection shortcuts where the shape changes, linear with bias);
    ``groups`` γ divides every conv's weights but the stem's (Packed-Ensembles' grouping inside a member)."""
    total = 9 * image_channels * width + 2 * width  # stem conv + norm
    channels = width
    for stage, c in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for block in range(2):
            total += (9 * channels * c + 9 * c * c) // groups + 4 * c  # conv1 + conv2, bn1 + bn2
            if stage > 0 and block == 0:
                total += channels * c // groups + 2 * c  # shortcut 1x1 conv + norm
            channels = c
    return total + 8 * width * classes + classes


def test_cifar_resnet18_parameter_count_is_m_narrow_resnets():
    assert resnet18_params(64) == 11_173_962  # the formula gives the single ResNet-18's known count
    model = PackedEnsemble(num_members=4, alpha=2.0, gamma=1, backbone="resnet18", width=64, input_shape=(3, 32, 32))
    assert num_params(model) == 4 * resnet18_params(2 * 64 // 4) == 11_190_440
    # the paper's common CIFAR setting, PE-(2, 4, 2) (configs/cifar10/packed.yaml): about α²/(Mγ) = 1/2 of a ResNet-18
    paper = PackedEnsemble(num_members=4, alpha=2.0, gamma=2, backbone="resnet18", width=64, input_shape=(3, 32, 32))
    assert num_params(paper) == 4 * resnet18_params(32, groups=2) == 5_611_688


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
    rows = model.network(tile_members(x, 3))  # (M*B, C): rows [m*B, (m+1)*B) are member m's
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
        (partial(PackedEnsemble, backbone="wide_resnet", depth=10, widen_factor=2, gamma=3, input_shape=(3, 8, 8)), "stem"),
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
    first layer and the classifier, M·γ elsewhere (it once left those edges to the caller)."""
    model = PackedEnsemble(num_members=2, alpha=2.0, gamma=2, backbone=backbone, input_shape=shape, num_classes=10, **options)
    again = build_backbone(backbone, model.layer_factory(), shape, 10, **model.member_backbone_options(options))
    groups = [m.groups for m in again.modules() if isinstance(m, (EnsembleConv2d, EnsembleLinear))]  # γ groups per member
    assert groups[0] == groups[-1] == 1 and set(groups[1:-1]) == {2}  # the first layer and the classifier: dense members
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.network.parameters()]
