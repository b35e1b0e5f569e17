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


def resnet18_authors_mask_count(width: int = 64) -> int:
    """Mask layers of the authors' Masksembles ResNet-18, counted from the architecture: per basic block the
    input of conv1, of conv2 and of the 1x1 shortcut conv where the block has one (stride 2 or a change of
    width), plus the pooled features before the classifier; the stem conv reads the image, unmasked."""
    count, channels = 0, width
    for stage, mult in enumerate((1, 2, 4, 8)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            count += 2 + (stride != 1 or channels != width * mult)
            channels = width * mult
    return count + 1


def masked_input_layers(net: nn.Module, x: torch.Tensor, m: int, scale: float) -> list[str]:
    """Names of the convs and linears whose input has, in every member's rows, at least F - kept channels
    that are zero everywhere (kept from the paper's formula; about half the channels, where an unmasked
    input has few or none) and whose members' zero channels differ."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        mod.register_forward_pre_hook(lambda _, args, name=name: inputs.__setitem__(name, args[0].detach()))
        for name, mod in net.named_modules()
        if isinstance(mod, nn.Conv2d | nn.Linear)
    ]
    net.train()(x)  # batch statistics: a ReLU output channel is zero on a whole member's rows only where masked
    for hook in hooks:
        hook.remove()
    masked = []
    for name, rows in inputs.items():
        f = rows.shape[1]
        used = rows.unflatten(0, (m, -1)).transpose(1, 2).flatten(2).ne(0).any(dim=2)  # (M, F): channel non-zero somewhere
        if f >= 10 and (used.sum(dim=1) <= paper_kept(f, m, scale)).all() and torch.unique(used, dim=0).shape[0] == m:
            masked.append(name)
    return masked


def test_resnet18_masks_the_input_of_every_block_conv_and_the_classifier_as_the_authors():
    """The authors' placement (their library's Masksembles ResNet: a mask before each conv of a block, the
    shortcut conv included, and before the classifier): 20 mask layers on ResNet-18, found by what each
    layer's input looks like, not by module names."""
    assert resnet18_authors_mask_count() == 20
    assert num_params(resnet18(masksembles_layers(4, 2.0), (3, 32, 32), 10)) == SINGLE_PARAMS  # masks add no parameter
    torch.manual_seed(0)
    m, s = 4, 2.0
    net = resnet18(masksembles_layers(m, s, "inputs", seed=3), (3, 32, 32), 10, width=16)
    mask_layers = [mod for mod in net.modules() if isinstance(mod, MemberMasks)]
    assert len(mask_layers) == resnet18_authors_mask_count(16) == 20
    for layer in mask_layers:
        assert (layer.masks.sum(dim=1) == paper_kept(layer.num_features, m, s)).all()
    masked = masked_input_layers(net, tile_members(torch.rand(8, 3, 32, 32), m), m, s)
    weighted = [n for n, mod in net.named_modules() if isinstance(mod, nn.Conv2d | nn.Linear)]
    assert masked == [n for n in weighted if n != "conv1"]  # every conv but the stem, and the linear
    # every layer draws its own masks: no two layers of one width share them
    for a, b in itertools.combinations(mask_layers, 2):
        assert a.masks.shape != b.masks.shape or not torch.equal(a.masks, b.masks)


def test_wide_resnet_and_mlp_placements():
    """WRN as the authors' ResNet (each block conv's input, projections included, and the classifier's);
    the MLP after each hidden activation, i.e. the input of every linear but the first, in both placements."""
    m, s = 4, 2.0
    torch.manual_seed(1)
    wrn = wide_resnet(masksembles_layers(m, s), (3, 8, 8), 10, depth=10, widen_factor=1)
    # 3 blocks of 2 convs, projections in stages 2 and 3 (16 -> 32 -> 64), then the classifier
    assert sum(isinstance(mod, MemberMasks) for mod in wrn.modules()) == 3 * 2 + 2 + 1
    weighted = [n for n, mod in wrn.named_modules() if isinstance(mod, nn.Conv2d | nn.Linear)]
    masked = masked_input_layers(wrn, tile_members(torch.rand(8, 3, 16, 16), m), m, s)
    assert masked == [n for n in weighted if n != "conv1"]
    for placement in ("inputs", "block_outputs"):
        net = mlp(masksembles_layers(m, s, placement), (1, 8, 8), 10, hidden_sizes=(32, 16))
        linears = [n for n, mod in net.named_modules() if isinstance(mod, nn.Linear)]
        assert masked_input_layers(net, tile_members(torch.randn(64, 1, 8, 8), m), m, s) == linears[1:]


def test_block_outputs_placement_keeps_the_earlier_network():
    """mask_placement="block_outputs": one mask layer per residual block's output (ResNet-18: 8; WRN also the
    classifier's input), and layers of one width share their masks."""
    layers = masksembles_layers(4, 2.0, "block_outputs", seed=5)
    resnet = resnet18(layers, (3, 8, 8), 10, width=16)
    masks = [mod for mod in resnet.modules() if isinstance(mod, MemberMasks)]
    assert len(masks) == 8 and all(name.endswith("member_masks") for name, mod in resnet.named_modules() if mod in masks)
    torch.testing.assert_close(masks[0].masks, masks[1].masks, rtol=0, atol=0)  # the two 16-channel blocks
    wrn = wide_resnet(layers, (3, 8, 8), 10, depth=10, widen_factor=1)
    assert sum(isinstance(mod, MemberMasks) for mod in wrn.modules()) == 4  # 3 blocks and the head
    for net in (resnet, wrn):
        y = net.eval()(tile_members(torch.randn(2, 3, 8, 8), 4)).view(4, 2, 10)
        assert not torch.allclose(y[0], y[1])


def network_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in model.named_buffers() if name.endswith(".masks")}


def same_masks(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("placement", ["inputs", "block_outputs"])
def test_masks_follow_the_run_seed(placement):
    """seed_everything (what the CLI's --seed_everything calls before building the model) decides the masks:
    the same seed gives the same masks, another seed other masks in every layer; an explicit mask_seed wins."""
    from lightning import seed_everything

    def build(seed: int, **options) -> Masksembles:
        seed_everything(seed, verbose=False)
        return Masksembles(num_members=4, backbone="resnet18", width=16, input_shape=(3, 8, 8), mask_placement=placement, **options)

    first = build(1)
    one, again, two = network_masks(first), network_masks(build(1)), network_masks(build(2))
    assert one and same_masks(one, again)
    assert all(not torch.equal(one[k], two[k]) for k in one)
    assert first.hparams["mask_seed"] == 1  # recorded: a checkpoint rebuilds the same masks
    assert same_masks(network_masks(build(7, mask_seed=1)), one)


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
        masks = [mod for n, mod in network.named_modules() if n.endswith("masks")]
        assert masks and all(type(mod) is nn.Identity for mod in masks)
