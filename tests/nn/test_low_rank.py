"""LowRankLinear / LowRankConv2d (W_i = W + A_i B_i) against loops over explicitly built member weights.

The reference never calls the layer's own member_weight: it rebuilds W + (α/k)·Σ_k a_ik b_ikᵀ from the
stored A (M, out, k) and B (M, k, in·kh·kw) one rank-1 term at a time (α/k: LoRA's scaling, from the
test's own α, 1 without one), then runs plain F.linear / F.conv2d one member at a time.
"""

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods import LowRankEnsemble, SingleModel
from ensemble_lab.metrics.weight_space import member_gram, weight_cosine
from ensemble_lab.nn import LowRankConv2d, LowRankLinear, low_rank_layers
from ensemble_lab.nn.mlp import mlp
from ensemble_lab.nn.resnet import resnet18

M = 3


def explicit_weight(layer, i: int, alpha: float | None = None) -> torch.Tensor:
    """Member i's weight W + (α/k)·Σ_k A[i, :, k] B[i, k, :]ᵀ (no α: scale 1), reshaped to W's layout."""
    out, rank = layer.weight.shape[0], layer.A.shape[2]
    update = torch.zeros(out, layer.B.shape[2], dtype=layer.weight.dtype)
    for k in range(rank):
        update = update + torch.outer(layer.A[i, :, k], layer.B[i, k, :])  # (out, in·kh·kw)
    scale = 1.0 if alpha is None else alpha / rank
    return layer.weight + scale * update.reshape(layer.weight.shape)


def member_loop(layer, x: torch.Tensor, alpha: float | None = None) -> torch.Tensor:
    """The layer's output computed member by member with plain torch ops."""
    b = x.shape[0] // layer.num_members
    outputs = []
    for i in range(layer.num_members):
        rows = x[i * b : (i + 1) * b]
        bias = None if layer.bias is None else layer.bias[i]
        if isinstance(layer, LowRankLinear):
            outputs.append(F.linear(rows, explicit_weight(layer, i, alpha), bias))
        else:
            outputs.append(F.conv2d(rows, explicit_weight(layer, i, alpha), bias, layer.stride, layer.padding))
    return torch.cat(outputs)


LAYERS = {
    "linear": lambda rank, bias, alpha: LowRankLinear(5, 4, M, bias=bias, rank=rank, lora_alpha=alpha),
    "conv-3x3": lambda rank, bias, alpha: LowRankConv2d(3, 4, 3, M, padding=1, bias=bias, rank=rank, lora_alpha=alpha),
    "conv-3x2-stride2": lambda rank, bias, alpha: LowRankConv2d(
        3, 4, (3, 2), M, stride=2, padding=(1, 0), bias=bias, rank=rank, lora_alpha=alpha
    ),
    "conv-1x1-stride2": lambda rank, bias, alpha: LowRankConv2d(2, 5, 1, M, stride=2, bias=bias, rank=rank, lora_alpha=alpha),
}


def build(name: str, rank: int, bias: bool, alpha: float | None = None) -> nn.Module:
    """A float64 layer whose members differ in every factor and bias (A is no longer zero)."""
    layer = LAYERS[name](rank, bias, alpha).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def layer_input(layer, batch: int = 2) -> torch.Tensor:
    shape = (layer.in_features,) if isinstance(layer, LowRankLinear) else (layer.in_channels, 7, 6)
    return torch.randn(M * batch, *shape, dtype=torch.float64)


@pytest.mark.parametrize("alpha", [None, 8.0])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("name", LAYERS)
def test_forward_and_gradients_equal_a_loop_over_member_weights(name, rank, bias, alpha):
    torch.manual_seed(0)
    layer = build(name, rank, bias, alpha)
    x = layer_input(layer).requires_grad_()
    y = layer(x)
    expected = member_loop(layer, x, alpha)
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected)
    cotangent = torch.randn_like(y)
    params = [p for p in (layer.weight, layer.A, layer.B, layer.bias) if p is not None]
    got = torch.autograd.grad((y * cotangent).sum(), [x, *params])
    want = torch.autograd.grad((expected * cotangent).sum(), [x, *params])
    for which, g, w in zip(["x", "weight", "A", "B", "bias"], got, want):
        torch.testing.assert_close(g, w, msg=lambda m, which=which: f"grad of {which}: {m}")


@pytest.mark.parametrize("alpha", [None, 2.0])
@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("name", LAYERS)
def test_gram_and_member_weight_equal_materialised_members(name, rank, alpha):
    torch.manual_seed(1)
    layer = build(name, rank, bias=True, alpha=alpha)
    explicit = [explicit_weight(layer, i, alpha) for i in range(M)]
    for i in range(M):
        torch.testing.assert_close(layer.member_weight(i), explicit[i])
    with pytest.raises(IndexError):
        layer.member_weight(M)
    vectors = torch.stack([torch.cat([w.flatten(), layer.bias[i]]) for i, w in enumerate(explicit)]).detach()  # (M, P)
    gram = member_gram(layer)
    assert gram.dtype == torch.float64 and gram.shape == (M, M)
    torch.testing.assert_close(gram, vectors @ vectors.T, rtol=1e-12, atol=1e-10)
    unit = vectors / vectors.norm(dim=1, keepdim=True)
    torch.testing.assert_close(weight_cosine(layer), (unit @ unit.T).clamp(-1, 1), rtol=0, atol=1e-12)
    assert [p.shape[0] for p in layer.member_parameters()] == [M, M, M]  # A, B, bias: row i is member i's


@pytest.mark.parametrize("rank", [1, 3])
def test_zero_init_gives_identical_members_that_can_diverge(rank):
    torch.manual_seed(3)
    network = resnet18(low_rank_layers(M, rank=rank), (3, 8, 8), 5, width=4)
    layers = [m for m in network.modules() if isinstance(m, (LowRankLinear, LowRankConv2d))]
    assert layers and all(torch.equal(m.A, torch.zeros_like(m.A)) for m in layers)
    torch.testing.assert_close(weight_cosine(network), torch.ones(M, M, dtype=torch.float64), rtol=0, atol=1e-12)
    x = torch.randn(2, 3, 8, 8).repeat(M, 1, 1, 1)  # every member gets the same images, member-major
    logits = network.eval()(x).view(M, 2, 5)
    torch.testing.assert_close(logits, logits[:1].expand_as(logits), rtol=0, atol=1e-6)
    network.train()(x).square().mean().backward()
    for m in layers:
        assert m.A.grad is not None and m.A.grad.abs().sum() > 0
        # A_i's gradient is ∂L/∂W_i B_iᵀ: the members' random B_i send them different ways
        assert not torch.allclose(m.A.grad[0], m.A.grad[1])


@pytest.mark.parametrize("make", [lambda: LowRankLinear(256, 256, M), lambda: LowRankConv2d(64, 64, 3, M, padding=1)])
def test_members_own_first_update_is_small_beside_the_shared_one(make):
    """LoRA's init: one SGD step moves W by -lr·G (G = Σ_i ∂L/∂W_i) and member i's own A_i B_i by
    -lr·(∂L/∂W_i)·B_iᵀB_i, whose B_iᵀB_i has norm about 1/3 on a k-dimensional subspace: far smaller."""
    torch.manual_seed(5)
    layer = make()
    x = torch.randn(M * 8, *((256,) if isinstance(layer, LowRankLinear) else (64, 6, 6)))
    layer(x).square().mean().backward()
    lr = 0.1
    shared = (lr * layer.weight.grad).flatten(1).norm()
    with torch.no_grad():
        A = -lr * layer.A.grad  # A starts at zero: after the step it is this
    own = torch.stack([(A[i] @ layer.B[i]).norm() for i in range(M)])  # ‖A_i B_i‖ after one step
    assert (own > 0).all() and (own < 0.05 * shared).all(), (own / shared).tolist()


def test_small_init_members_differ_slightly():
    torch.manual_seed(4)
    network = mlp(low_rank_layers(M, factor_init="small"), (1, 8, 8), 10)
    cosine = weight_cosine(network)
    off = cosine[~torch.eye(M, dtype=torch.bool)]
    assert (off < 1).all() and (off > 0.99).all()
    layer = LowRankLinear(400, 300, 4, factor_init="small")
    assert abs(layer.A.std().item() - 0.01) < 1e-3  # N(0, 0.01²/k) at k = 1: 1200 draws
    assert abs(layer.B.std().item() - 1 / (3 * 400) ** 0.5) < 2e-3  # U(±1/sqrt(in)), as nn.Linear's weight
    assert layer.B.abs().max() <= 1 / 400**0.5
    assert torch.equal(layer.bias, layer.bias[:1].expand_as(layer.bias))  # biases start identical


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_resnet18_parameter_count():
    """ResNet-18 (width 64, CIFAR 3x32x32, 10 classes), M = 4, rank 1: the single model's parameters
    plus M·k·(out + in·kh·kw) per conv / linear and the final linear's extra M − 1 bias vectors."""
    m, k = 4, 1
    # (out, in, kh, kw) of every conv and the linear, in order
    convs = [(64, 3, 3, 3)]
    convs += [(64, 64, 3, 3)] * 4  # stage 1: two blocks of two convs
    for out, inp in ((128, 64), (256, 128), (512, 256)):  # stages 2-4: conv1 strided, conv2, 1x1 shortcut, block 2
        convs += [(out, inp, 3, 3), (out, out, 3, 3), (out, inp, 1, 1), (out, out, 3, 3), (out, out, 3, 3)]
    linear = (10, 512, 1, 1)
    factors = sum(m * k * (out + inp * kh * kw) for out, inp, kh, kw in [*convs, linear])
    extra_biases = (m - 1) * 10
    single = SingleModel(backbone="resnet18", width=64, input_shape=(3, 32, 32), num_classes=10)
    assert _count(single) == 11_173_962
    model = LowRankEnsemble(backbone="resnet18", width=64, input_shape=(3, 32, 32), num_classes=10, num_members=m, rank=k)
    assert len(convs) == 20 and factors == 4 * 36_325 == 145_300
    assert _count(model) == 11_173_962 + factors + extra_biases == 11_319_292


def test_digits_mlp_parameter_count():
    """MLP 64-64-32-16-10 (digits), M = 4, rank 1: factors 4·(out + in) per linear, biases × 4."""
    m = 4
    shapes = [(64, 64), (32, 64), (16, 32), (10, 16)]  # (out, in)
    single = SingleModel(backbone="mlp", input_shape=(1, 8, 8))
    assert _count(single) == sum(o * i + o for o, i in shapes) == 6938
    model = LowRankEnsemble(backbone="mlp", input_shape=(1, 8, 8), num_members=m)
    assert _count(model) == 6938 + sum(m * (o + i) + (m - 1) * o for o, i in shapes) == 8496


def test_bf16_autocast_keeps_the_matmul_dtype():
    torch.manual_seed(5)
    for layer, x in (
        (LowRankLinear(6, 4, M, factor_init="small"), torch.randn(M * 2, 6)),
        (LowRankConv2d(3, 4, 3, M, padding=1, bias=True, factor_init="small"), torch.randn(M * 2, 3, 5, 5)),
    ):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), layer(x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"rank": 0}, "--model.rank must be an integer >= 1, got 0"),
        ({"rank": 1.5}, "--model.rank must be an integer >= 1, got 1.5"),
        ({"factor_init": "ones"}, "--model.factor_init 'ones' is not known; allowed: zero, small"),
        ({"lora_alpha": 0}, "--model.lora_alpha must be a finite number > 0, or null for no scaling, got 0"),
        ({"lora_alpha": float("inf")}, "--model.lora_alpha must be a finite number > 0, or null for no scaling, got inf"),
    ],
)
def test_bad_options_are_one_line_config_errors(kwargs, message):
    for build_it in (
        lambda: LowRankLinear(3, 2, M, **kwargs),
        lambda: LowRankConv2d(3, 2, 3, M, **kwargs),
        lambda: low_rank_layers(M, **kwargs),
        lambda: LowRankEnsemble(num_members=M, **kwargs),
    ):
        with pytest.raises(ConfigError) as error:
            build_it()
        assert str(error.value) == message


def test_rank_above_layer_size_warns_once():
    with pytest.warns(UserWarning, match=r"--model.rank 20 is above min\(out, in\) of 2 layer\(s\)") as record:
        LowRankEnsemble(backbone="mlp", input_shape=(1, 8, 8), num_members=2, rank=20)  # 32 -> 16, 16 -> 10
    assert sum("--model.rank" in str(w.message) for w in record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LowRankEnsemble(backbone="mlp", input_shape=(1, 8, 8), num_members=2, rank=10)


def test_rows_not_divisible_by_members_raise():
    with pytest.raises(ConfigError, match="multiple of num_members"):
        LowRankLinear(3, 2, M)(torch.randn(4, 3))
    with pytest.raises(ConfigError, match="multiple of num_members"):
        LowRankConv2d(3, 2, 3, M)(torch.randn(4, 3, 5, 5))


@pytest.mark.parametrize("backbone", [dict(backbone="mlp", input_shape=(1, 8, 8)), dict(backbone="resnet18", width=4, input_shape=(3, 8, 8))])
def test_freeze_shared_trains_only_the_members_own_factors_and_biases(backbone):
    """LoRA-Ensemble's training: the optimizer holds, and the backward pass reaches, only A, B and the members'
    biases; W and BatchNorm's affine stay as initialised. The parameter count does not change."""
    torch.manual_seed(6)
    model = LowRankEnsemble(num_members=M, freeze_shared=True, lora_alpha=4.0, factor_init="small", **backbone)
    low_rank = [m for m in model.network.modules() if isinstance(m, (LowRankLinear, LowRankConv2d))]
    own = {id(p) for m in low_rank for p in (m.A, m.B, m.bias) if p is not None}
    assert _count(model) == _count(LowRankEnsemble(num_members=M, **backbone))
    optimizer = model.configure_optimizers()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == own
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.train()
    model(torch.randn(4, *backbone["input_shape"])).logsumexp(-1).mean().backward()
    optimizer.step()
    for name, p in model.named_parameters():
        if id(p) in own:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            assert not torch.equal(p, before[name]), name
        else:  # every shared weight and norm parameter
            assert p.grad is None and torch.equal(p, before[name]), name
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == (backbone["backbone"] == "resnet18")


def test_lora_alpha_scales_the_update_and_a_checkpoint_keeps_its_own():
    """The default (null) is no scaling; α scales every layer's update by α / k; a checkpoint trained under one α
    is refused by a model built with another (the tensors' shapes agree, the networks do not)."""
    from ensemble_lab.errors import CheckpointMismatchError

    torch.manual_seed(7)
    plain = LowRankEnsemble(num_members=M, rank=2, factor_init="small", input_shape=(1, 8, 8))
    scaled = LowRankEnsemble(num_members=M, rank=2, factor_init="small", lora_alpha=8.0, input_shape=(1, 8, 8))
    scaled.load_state_dict(plain.state_dict())
    for a, b in zip(plain.network.modules(), scaled.network.modules()):
        if isinstance(a, LowRankLinear):
            torch.testing.assert_close(b.member_weight(1) - b.weight, 4.0 * (a.member_weight(1) - a.weight))  # α / k = 8 / 2
    checkpoint = {"state_dict": plain.state_dict(), "hyper_parameters": dict(plain.hparams)}
    with pytest.raises(CheckpointMismatchError, match="trained with --model.lora_alpha null, this run has 8.0") as error:
        scaled.on_load_checkpoint(checkpoint)
    assert "\n" not in str(error.value)
    plain.on_load_checkpoint(checkpoint)  # its own: accepted
