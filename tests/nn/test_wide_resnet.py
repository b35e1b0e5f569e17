"""CIFAR Wide ResNet built from each method's layer factory: size, shapes, members, MC dropout, options."""

import re

import pytest
import torch
from torch import nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods import BatchEnsemble, DeepEnsemble, MCDropout, SingleModel
from ensemble_lab.nn.backbones import backbone_options
from ensemble_lab.nn.factories import (
    batch_ensemble_layers,
    deep_ensemble_layers,
    plain_layers,
)
from ensemble_lab.nn.members import tile_members
from ensemble_lab.nn.wide_resnet import wide_resnet
from tests.nn.test_resnet import FACTORIES  # the four methods' layer factories

WRN_28_10_PARAMS = 36_479_194  # the plain single WRN-28-10 for CIFAR-10 (36.5 M, Zagoruyko & Komodakis 2016)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def wrn_formula(depth: int, k: int, in_channels: int, num_classes: int) -> int:
    """Parameters of a plain WRN-depth-k from the architecture alone: conv weights (no bias),
    batch norms (weight + bias), and the linear head (weight + bias)."""
    n = (depth - 4) // 6  # blocks per stage

    def conv(cin: int, cout: int, ks: int) -> int:
        return cin * cout * ks * ks

    def bn(c: int) -> int:
        return 2 * c

    total = conv(in_channels, 16, 3)  # stem
    cin = 16
    for stage, width in enumerate((16 * k, 32 * k, 64 * k)):
        for i in range(n):
            total += bn(cin) + conv(cin, width, 3) + bn(width) + conv(width, width, 3)
            if cin != width or (i == 0 and stage > 0):  # shape changes: 1x1 projection shortcut
                total += conv(cin, width, 1)
            cin = width
    return total + bn(cin) + cin * num_classes + num_classes  # final norm and head


def test_wrn_28_10_parameter_count():
    # the formula written out for WRN-28-10 (n = 4 blocks per stage, widths 160, 320, 640), 3 -> 10 classes
    stage1 = (2 * 16 + 16 * 160 * 9 + 2 * 160 + 160 * 160 * 9 + 16 * 160) + 3 * (2 * 160 + 160 * 160 * 9 + 2 * 160 + 160 * 160 * 9)
    stage2 = (2 * 160 + 160 * 320 * 9 + 2 * 320 + 320 * 320 * 9 + 160 * 320) + 3 * (2 * 320 + 320 * 320 * 9 + 2 * 320 + 320 * 320 * 9)
    stage3 = (2 * 320 + 320 * 640 * 9 + 2 * 640 + 640 * 640 * 9 + 320 * 640) + 3 * (2 * 640 + 640 * 640 * 9 + 2 * 640 + 640 * 640 * 9)
    written_out = 3 * 16 * 9 + stage1 + stage2 + stage3 + 2 * 640 + 640 * 10 + 10
    assert written_out == wrn_formula(28, 10, 3, 10) == WRN_28_10_PARAMS
    assert num_params(wide_resnet(plain_layers(), (3, 32, 32), 10)) == WRN_28_10_PARAMS  # the defaults are WRN-28-10


@pytest.mark.parametrize("depth,k,in_channels,classes", [(10, 1, 3, 10), (16, 4, 3, 100), (22, 2, 1, 7)])
def test_parameter_count_matches_the_formula(depth, k, in_channels, classes):
    model = wide_resnet(plain_layers(), (in_channels, 8, 8), classes, depth=depth, widen_factor=k)
    assert num_params(model) == wrn_formula(depth, k, in_channels, classes)


def test_ensemble_parameter_counts_follow_the_single_model():
    single = num_params(wide_resnet(plain_layers(), (3, 8, 8), 10, depth=16, widen_factor=2))
    batch_ensemble = num_params(wide_resnet(batch_ensemble_layers(4), (3, 8, 8), 10, depth=16, widen_factor=2))
    deep_ensemble = num_params(wide_resnet(deep_ensemble_layers(4), (3, 8, 8), 10, depth=16, widen_factor=2))
    assert deep_ensemble == 4 * single
    assert single < batch_ensemble < 1.05 * single  # rank-1 fast weights and per-member biases only


@pytest.mark.parametrize("k,shortcuts", [(1, 2), (2, 3)])
def test_layer_structure(k, shortcuts):
    """WRN-10-k: 6n + 1 = 7 conv3x3; a 1x1 shortcut where the shape changes (stage 1 only when k > 1)."""
    model = wide_resnet(plain_layers(), (3, 8, 8), 10, depth=10, widen_factor=k)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.kernel_size == (3, 3) for c in convs) == 7
    assert sum(c.kernel_size == (1, 1) for c in convs) == shortcuts
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2 * 3 + 1
    seen = {}
    model.bn.register_forward_hook(lambda mod, inp, out: seen.update(shape=out.shape))  # returns None: output kept
    model(torch.randn(2, 3, 8, 8))
    assert seen["shape"] == (2, 64 * k, 2, 2)  # strides 1, 2, 2: H/4, W/4




@pytest.mark.parametrize("method", FACTORIES)
def test_output_shape_and_backward(method):
    torch.manual_seed(0)
    m, batch = (1 if method == "single" else 3), 2
    dropout = 0.1 if method == "mc_dropout" else 0.0
    model = wide_resnet(FACTORIES[method](m), (3, 8, 8), 7, depth=10, widen_factor=1, dropout=dropout)
    x = tile_members(torch.randn(batch, 3, 8, 8), m)  # (M*B, 3, 8, 8)
    y = model(x)
    assert y.shape == (m * batch, 7)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def randomize_norms(model: nn.Module) -> None:
    """Random affine parameters and running statistics, so eval mode tests more than the initial values."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(("running_mean", "bias")):
                tensor.copy_(torch.randn_like(tensor) * 0.1)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif tensor.dim() == 2 and "bn" in name:  # EnsembleBatchNorm2d weight (M, C)
                tensor.copy_(torch.rand_like(tensor) + 0.5)


def test_deep_ensemble_member_is_an_independent_wide_resnet():
    """Member i's rows give what a plain WRN built on its own, holding member i's slice of every tensor, gives."""
    torch.manual_seed(0)
    m, batch = 3, 2
    ens = wide_resnet(deep_ensemble_layers(m), (3, 8, 8), 5, depth=10, widen_factor=2).double()
    randomize_norms(ens)
    ens.eval()
    x = torch.randn(m * batch, 3, 8, 8, dtype=torch.float64)
    y = ens(x)
    for i in range(m):
        member = wide_resnet(plain_layers(), (3, 8, 8), 5, depth=10, widen_factor=2).double().eval()
        state = {k: (v if k.endswith("num_batches_tracked") else v[i]) for k, v in ens.state_dict().items()}
        member.load_state_dict(state)  # strict: every tensor of the plain network has a per-member slice
        rows = slice(i * batch, (i + 1) * batch)
        torch.testing.assert_close(y[rows], member(x[rows]))


def test_batch_ensemble_member_uses_its_effective_weights():
    """In eval (shared BatchNorm on running stats) member i = plain WRN with W ∘ s_i r_iᵀ."""
    torch.manual_seed(0)
    m, batch = 3, 2
    ens = wide_resnet(batch_ensemble_layers(m), (3, 8, 8), 5, depth=10, widen_factor=1).eval()
    x = torch.randn(m * batch, 3, 8, 8)
    y = ens(x)
    for i in range(m):
        member = wide_resnet(plain_layers(), (3, 8, 8), 5, depth=10, widen_factor=1).eval()
        own = dict(member.named_modules())
        with torch.no_grad():
            for name, module in ens.named_modules():
                if hasattr(module, "member_weight"):  # BatchConv2d / BatchLinear
                    own[name].weight.copy_(module.member_weight(i))
                    if module.bias is not None:
                        own[name].bias.copy_(module.bias[i])
                elif isinstance(module, nn.BatchNorm2d):
                    own[name].load_state_dict(module.state_dict())
        rows = slice(i * batch, (i + 1) * batch)
        torch.testing.assert_close(y[rows], member(x[rows]), atol=1e-5, rtol=1e-4)


def test_dropout_placement_and_mc_dropout_in_eval():
    assert not any(isinstance(mod, nn.modules.dropout._DropoutNd) for mod in wide_resnet(plain_layers(), (3, 8, 8), 10, depth=16).modules())
    m = 4
    model = wide_resnet(plain_layers(m, mc_dropout=True), (3, 8, 8), 10, depth=16, widen_factor=1, dropout=0.3).eval()
    found = [mod for mod in model.modules() if isinstance(mod, nn.modules.dropout._DropoutNd)]
    assert sum(isinstance(mod, nn.Dropout2d) for mod in found) == 3 * 2  # one in each of the 3 × n blocks
    assert sum(isinstance(mod, nn.Dropout) for mod in found) == 1  # before the final linear
    torch.manual_seed(0)
    y = model(tile_members(torch.randn(2, 3, 8, 8), m)).view(m, 2, 10)  # (M, B, C): identical inputs
    assert not torch.allclose(y[0], y[1])


@pytest.mark.parametrize(
    "kwargs,shown",
    [
        ({"depth": 27}, "depth=27"),
        ({"depth": 4}, "depth=4"),
        ({"depth": 8}, "depth=8"),
        ({"depth": 28.0}, "depth=28.0"),
        ({"depth": True}, "depth=True"),
        ({"widen_factor": 0}, "widen_factor=0"),
        ({"widen_factor": -2}, "widen_factor=-2"),
        ({"widen_factor": 2.5}, "widen_factor=2.5"),
        ({"input_shape": (32, 32)}, "input_shape (C, H, W), got (32, 32)"),
        ({"dropout": 1.0}, "dropout must be in [0, 1)"),
    ],
)
def test_invalid_options_raise_a_one_line_error(kwargs, shown):
    args = {"layers": plain_layers(), "input_shape": (3, 8, 8), "num_classes": 10} | kwargs
    with pytest.raises(ConfigError, match=re.escape(shown)) as error:
        wide_resnet(**args)
    assert "\n" not in str(error.value)


def test_depth_error_says_what_to_use():
    with pytest.raises(ConfigError, match=re.escape("(depth - 4) divisible by 6, e.g. 16, 22 or 28")):
        wide_resnet(plain_layers(), (3, 8, 8), 10, depth=27)


def test_backbone_options_of_wide_resnet():
    assert backbone_options("wide_resnet") == {"depth": 28, "widen_factor": 10}
    assert backbone_options("wide_resnet", depth=16, widen_factor=None, width=None) == {"depth": 16, "widen_factor": 10}
    message = "--model.hidden_sizes applies to the mlp backbone, not wide_resnet; drop it (wide_resnet takes --model.backbone.depth, --model.backbone.widen_factor)"
    with pytest.raises(ConfigError, match=re.escape(message)):
        backbone_options("wide_resnet", hidden_sizes=[32])
    with pytest.raises(ConfigError, match=re.escape("--model.widen_factor applies to the wide_resnet backbone, not resnet18")):
        backbone_options("resnet18", widen_factor=2)


WRN = dict(backbone="wide_resnet", depth=10, widen_factor=1, input_shape=(3, 8, 8))


@pytest.mark.parametrize("cls", [SingleModel, BatchEnsemble, DeepEnsemble, MCDropout])
def test_methods_build_wide_resnet_end_to_end(cls):
    torch.manual_seed(0)
    model = cls(**WRN).eval()
    m = model.num_members
    assert m == (1 if cls is SingleModel else 4)
    out = model(torch.randn(5, 3, 8, 8))
    assert out.shape == (m, 5, 10)
    # the checkpoint records the backbone's options object, without other backbones' options
    assert model.hparams["backbone"] == {"class_path": "ensemble_lab.nn.WideResNetOptions", "init_args": {"depth": 10, "widen_factor": 1}}
    assert not {"width", "hidden_sizes", "depth", "widen_factor"} & set(model.hparams)


def test_methods_refuse_bad_wide_resnet_options():
    with pytest.raises(ConfigError, match=re.escape("depth=12")):
        SingleModel(**(WRN | {"depth": 12}))
    with pytest.raises(ConfigError, match=re.escape("--model.hidden_sizes applies to the mlp backbone, not wide_resnet")):
        BatchEnsemble(**WRN, hidden_sizes=[32])
    with pytest.raises(ConfigError, match=re.escape("--model.depth applies to the wide_resnet / vit backbone, not resnet18")):
        DeepEnsemble(backbone="resnet18", width=4, depth=10, input_shape=(3, 8, 8))
