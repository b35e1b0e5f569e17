"""BatchEnsemble's layer variants against loops over explicitly built member weights.

The reference never calls the layer's own member_weight / perturbations: it rebuilds
W_i = W ∘ Σ_k s_ik r_ikᵀ from the stored parameters with Python loops, then runs plain
F.linear / F.conv2d one member at a time.
"""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.metrics.weight_space import member_gram, weight_cosine, weight_cosine_stored
from ensemble_lab.nn import BatchConv2d, BatchLinear, EnsembleBatchNorm2d, FastWeights, batch_ensemble_layers, plain_layers
from ensemble_lab.nn.resnet import resnet18

M = 3


def explicit_factors(layer) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """r[i][k], s[i][k] from the stored parameters; member 0 all ones (s = 1/k) when unperturbed."""
    k, m = layer.fast.rank, layer.num_members
    r_all = layer.r if k > 1 else layer.r.unsqueeze(1)  # (M, k, *in)
    s_all = layer.s if k > 1 else layer.s.unsqueeze(1)  # (M, k, out)
    r = [[r_all[i, j] for j in range(k)] for i in range(m)]
    s = [[s_all[i, j] for j in range(k)] for i in range(m)]
    if layer.fast.unperturbed_first_member:
        r[0] = [torch.ones_like(t) for t in r[0]]
        s[0] = [torch.full_like(t, 1.0 / k) for t in s[0]]
    return r, s


def explicit_weight(layer, i: int) -> torch.Tensor:
    """Member i's weight W ∘ Σ_k s_ik r_ikᵀ, one rank-1 term at a time."""
    r, s = explicit_factors(layer)
    total = torch.zeros_like(layer.weight)
    for r_ik, s_ik in zip(r[i], s[i]):
        if layer.weight.dim() == 2:  # linear: (out, in)
            outer = s_ik[:, None] * r_ik[None, :]
        elif r_ik.dim() == 1:  # channel-wise conv: the same at every kernel position
            outer = (s_ik[:, None] * r_ik[None, :])[:, :, None, None]
        else:  # kernel-wise conv: r over (in, kh, kw)
            outer = s_ik[:, None, None, None] * r_ik[None]
        total = total + outer
    return layer.weight * total


def member_loop(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's output computed member by member with plain torch ops."""
    m, b = layer.num_members, x.shape[0] // layer.num_members
    outputs = []
    for i in range(m):
        rows = x[i * b : (i + 1) * b]
        bias = None if layer.bias is None else layer.bias[i]
        if isinstance(layer, BatchLinear):
            outputs.append(F.linear(rows, explicit_weight(layer, i), bias))
        else:
            outputs.append(F.conv2d(rows, explicit_weight(layer, i), bias, layer.stride, layer.padding))
    return torch.cat(outputs)


LAYERS = {
    "linear-rank1": lambda fast: BatchLinear(5, 4, M, fast_weights=fast),
    "linear-rank1-tokens": lambda fast: BatchLinear(5, 4, M, fast_weights=fast),  # fed TOKENS rows: builds member weights
    "linear-rank3": lambda fast: BatchLinear(5, 4, M, fast_weights=FastWeights(**{**vars(fast), "rank": 3})),
    "conv-channel-rank2": lambda fast: BatchConv2d(
        3, 4, 3, M, padding=1, bias=True, fast_weights=FastWeights(**{**vars(fast), "rank": 2})
    ),
    "conv-kernel-rank1": lambda fast: BatchConv2d(3, 4, (3, 2), M, stride=2, bias=True, fast_weights=fast, perturbation="kernel"),
    "conv-kernel-rank2": lambda fast: BatchConv2d(
        2, 3, 3, M, padding=1, fast_weights=FastWeights(**{**vars(fast), "rank": 2}), perturbation="kernel"
    ),
    "conv-channel-rank1": lambda fast: BatchConv2d(3, 4, 3, M, padding=1, bias=True, fast_weights=fast),
}
VARIANTS = {
    "plain": FastWeights(),
    "unperturbed": FastWeights(unperturbed_first_member=True),
    "blocking": FastWeights(gradient_blocking=True),
}


TOKENS = 12  # 2 images of 12 tokens: 24 rows per member, > 5·5·4 / (5 + 4), so "linear-rank1-tokens" builds member weights


def layer_input(layer, batch: int = 2, tokens: int | None = None) -> torch.Tensor:
    shape = (layer.in_features,) if isinstance(layer, BatchLinear) else (layer.in_channels, 6, 5)
    if tokens is not None:
        shape = (tokens, *shape)
    return torch.randn(M * batch, *shape, dtype=torch.float64)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", LAYERS)
def test_forward_and_gradients_equal_a_loop_over_member_weights(name, variant):
    torch.manual_seed(0)
    layer = LAYERS[name](VARIANTS[variant]).double()
    x = layer_input(layer, tokens=TOKENS if name.endswith("tokens") else None).requires_grad_()
    if isinstance(layer, BatchLinear) and layer.fast.rank == 1:  # each rank-1 path is the one named
        assert layer._builds_member_weights(x.numel() // (M * layer.in_features)) == name.endswith("tokens")
    y = layer(x)
    expected = member_loop(layer, x)
    torch.testing.assert_close(y, expected)
    cotangent = torch.randn_like(y)
    params = [p for p in (layer.weight, layer.r, layer.s, layer.bias) if p is not None]
    got = torch.autograd.grad((y * cotangent).sum(), [x, *params])
    if VARIANTS[variant].gradient_blocking:  # W learns from member 0's rows alone: its reference gradient is member 0's
        b = x.shape[0] // M
        reference = torch.autograd.grad((expected * cotangent).sum(), [x, *params[1:]], retain_graph=True)
        weight_grad = torch.autograd.grad((expected[:b] * cotangent[:b]).sum(), layer.weight)[0]
        want = [reference[0], weight_grad, *reference[1:]]
    else:
        want = torch.autograd.grad((expected * cotangent).sum(), [x, *params])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("name", LAYERS)
def test_gram_and_member_weight_equal_materialised_members(name):
    torch.manual_seed(1)
    layer = LAYERS[name](FastWeights(unperturbed_first_member=True)).double()
    with torch.no_grad():  # members differ from their init in every factor
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    explicit = [explicit_weight(layer, i) for i in range(M)]
    for i in range(M):
        torch.testing.assert_close(layer.member_weight(i), explicit[i])
    rows = [torch.cat([w.flatten(), *([] if layer.bias is None else [layer.bias[i]])]) for i, w in enumerate(explicit)]
    vectors = torch.stack(rows).detach()  # (M, P)
    torch.testing.assert_close(member_gram(layer), vectors @ vectors.T, rtol=1e-12, atol=1e-10)
    unit = vectors / vectors.norm(dim=1, keepdim=True)
    torch.testing.assert_close(weight_cosine(layer), (unit @ unit.T).clamp(-1, 1), rtol=0, atol=1e-12)


def test_unperturbed_first_member_is_w_itself_and_its_factors_never_train():
    torch.manual_seed(2)
    layer = BatchLinear(4, 3, M, fast_weights=FastWeights(unperturbed_first_member=True, rank=2))
    assert torch.equal(layer.member_weight(0), layer.weight)
    r0, s0 = layer.r[0].detach().clone(), layer.s[0].detach().clone()
    r1 = layer.r[1].detach().clone()
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(5):
        optimizer.zero_grad()
        layer(torch.randn(M * 4, 4)).square().mean().backward()
        optimizer.step()
    assert torch.equal(layer.r[0], r0) and torch.equal(layer.s[0], s0)
    assert not torch.equal(layer.r[1], r1)  # the other members' fast weights do train
    assert torch.equal(layer.member_weight(0), layer.weight)


@pytest.mark.parametrize("rank", [1, 3])
def test_ones_init_gives_identical_members(rank):
    torch.manual_seed(3)
    network = resnet18(batch_ensemble_layers(M, fast_weight_init="ones", rank=rank), (3, 8, 8), 5, width=4).eval()
    x = torch.randn(2, 3, 8, 8).repeat(M, 1, 1, 1)  # every member gets the same images, member-major
    logits = network(x).view(M, 2, 5)
    torch.testing.assert_close(logits, logits[:1].expand_as(logits), rtol=0, atol=1e-6)
    torch.testing.assert_close(weight_cosine(network), torch.ones(M, M, dtype=torch.float64), rtol=0, atol=1e-12)


def test_normal_init_mean_and_std_are_options():
    torch.manual_seed(4)
    layer = BatchLinear(300, 200, 4, fast_weights=FastWeights(mean=0.0, std=0.1))
    fast = torch.cat([layer.r.flatten(), layer.s.flatten()]).detach()
    assert abs(fast.mean().item()) < 0.01 and abs(fast.std().item() - 0.1) < 0.01
    ranked = BatchLinear(300, 200, 4, fast_weights=FastWeights(rank=4))  # s / k keeps Σ_k s_ik r_ikᵀ at mean 1
    assert ranked.r.shape == (4, 4, 300) and ranked.s.shape == (4, 4, 200)
    assert abs(ranked.perturbations().mean().item() - 1.0) < 0.05


def test_per_member_norm_equals_separate_batchnorms_on_the_members_rows():
    """A per-member-norm BatchEnsemble ResNet in training mode = M plain ResNets, each with member i's
    weights and its own BatchNorm, each run on its own rows only."""
    torch.manual_seed(5)
    network = resnet18(batch_ensemble_layers(M, norm="per_member"), (3, 8, 8), 5, width=4).double().train()
    with torch.no_grad():  # give each member's norm its own affine so a mix-up would show
        for module in network.modules():
            if isinstance(module, EnsembleBatchNorm2d):
                module.weight.add_(0.2 * torch.randn_like(module.weight))
                module.bias.add_(0.2 * torch.randn_like(module.bias))
    batch = 4
    x = torch.randn(M * batch, 3, 8, 8, dtype=torch.float64)
    y = network(x)
    for i in range(M):
        member = resnet18(plain_layers(), (3, 8, 8), 5, width=4).double().train()
        own = dict(member.named_modules())
        with torch.no_grad():
            for name, module in network.named_modules():
                if isinstance(module, (BatchConv2d, BatchLinear)):
                    own[name].weight.copy_(explicit_weight(module, i))
                    if module.bias is not None:
                        own[name].bias.copy_(module.bias[i])
                elif isinstance(module, EnsembleBatchNorm2d):
                    own[name].weight.copy_(module.weight[i])
                    own[name].bias.copy_(module.bias[i])
        rows = slice(i * batch, (i + 1) * batch)
        torch.testing.assert_close(y[rows], member(x[rows]))
    assert not any(type(m) is nn.BatchNorm2d for m in network.modules())


def test_weight_cosine_stored_by_hand():
    """Two members of one BatchLinear(2 -> 1), no bias: W = [1, 2], r_0 = [1, 1], r_1 = [2, 0], s = [1], [3].

    Stored: θ_0 = (W, r_0, s_0) = (1, 2, 1, 1, 1), θ_1 = (1, 2, 2, 0, 3): cos = 10 / (√8 √18) = 10/12.
    Effective: W_0 = [1, 2], W_1 = [6, 0]: cos = 6 / (√5 · 6) = 1/√5.
    """
    layer = BatchLinear(2, 1, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
        layer.r.copy_(torch.tensor([[1.0, 1.0], [2.0, 0.0]]))
        layer.s.copy_(torch.tensor([[1.0], [3.0]]))
    model = nn.Sequential(layer)
    assert weight_cosine_stored(model)[0, 1].item() == pytest.approx(10 / 12, abs=1e-12)
    assert weight_cosine(model)[0, 1].item() == pytest.approx(5**-0.5, abs=1e-12)
    # a shared layer joins every member's stored vector (and only that reading): a plain bias b = 4 adds 16 to every entry
    shared = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        shared.weight.fill_(4.0)
    both = nn.Sequential(layer, shared)
    assert weight_cosine_stored(both)[0, 1].item() == pytest.approx(26 / ((24 * 34) ** 0.5), abs=1e-12)
    assert weight_cosine(both)[0, 1].item() == pytest.approx(5**-0.5, abs=1e-12)


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(rank=0), "--model.rank"),
        (dict(init="uniform"), "ones"),
        (dict(std=-1.0), "--model.fast_weight_std"),
    ],
)
def test_bad_fast_weight_options_say_which(options, match):
    with pytest.raises(ConfigError, match=match):
        FastWeights(**options)
    with pytest.raises(ConfigError, match="kernel"):
        BatchConv2d(2, 2, 3, M, perturbation="pixel")
    with pytest.raises(ConfigError, match="per_member"):
        batch_ensemble_layers(M, norm="group")
