"""Weight-space cosine: the factored computation against explicitly materialised member weights."""

import pytest
import torch
from torch import nn

from ensemble_lab.methods import BatchEnsemble, DeepEnsemble, MCDropout, SingleModel
from ensemble_lab.metrics.weight_space import member_gram, off_diagonal_mean, weight_cosine, weight_space_summary
from ensemble_lab.nn import BatchConv2d, BatchLinear, EnsembleBatchNorm2d, EnsembleConv2d, EnsembleLinear

MLP = dict(input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(16, 8))
RESNET = dict(input_shape=(3, 8, 8), num_classes=10, backbone="resnet18", width=4)


def explicit_member_vectors(model: nn.Module, num_members: int) -> torch.Tensor:
    """(M, P): each member's linear / conv parameters written out one by one (effective weights, biases)."""
    members = []
    for i in range(num_members):
        parts = []
        for module in model.modules():
            if isinstance(module, (BatchLinear, BatchConv2d)):
                parts.append(module.member_weight(i).flatten())  # W ∘ s_i r_iᵀ, materialised
            elif isinstance(module, (EnsembleLinear, EnsembleConv2d)):
                parts.append(module.weight[i].flatten())
            else:
                continue
            if module.bias is not None:
                parts.append(module.bias[i].flatten())
        members.append(torch.cat(parts).double())
    return torch.stack(members).detach()  # (M, P)


def explicit_cosine(vectors: torch.Tensor) -> torch.Tensor:
    unit = vectors / vectors.norm(dim=1, keepdim=True)
    return unit @ unit.T


def scramble(model: nn.Module, seed: int) -> nn.Module:
    """Give every parameter random values (members differ in fast weights, biases and norm affine)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + 0.3)
    return model


@pytest.mark.parametrize(
    "build",
    [
        lambda: BatchEnsemble(num_members=3, **MLP),
        lambda: BatchEnsemble(num_members=4, **RESNET),
        lambda: DeepEnsemble(num_members=3, **MLP),
        lambda: DeepEnsemble(num_members=2, **RESNET),
    ],
    ids=["be-mlp", "be-resnet", "de-mlp", "de-resnet"],
)
@pytest.mark.parametrize("scrambled", [False, True])
def test_factored_cosine_equals_materialised(build, scrambled):
    torch.manual_seed(0)
    model = build().double()  # the explicit reference materialises in float64 too: no float32 round-off
    if scrambled:
        scramble(model, seed=1)
    vectors = explicit_member_vectors(model, model.num_members)
    cosine = weight_cosine(model)
    assert cosine.shape == (model.num_members,) * 2 and cosine.dtype == torch.float64
    torch.testing.assert_close(cosine, explicit_cosine(vectors), rtol=0, atol=1e-12)
    torch.testing.assert_close(member_gram(model), vectors @ vectors.T, rtol=1e-12, atol=1e-9)
    assert torch.equal(cosine, cosine.T) and torch.all(cosine.diagonal() == 1.0)


@pytest.mark.parametrize("bias", [False, True])
def test_single_layers_gram(bias):
    """Exact inner products of one BatchConv2d (non-square kernel) and one BatchLinear."""
    torch.manual_seed(2)
    for layer in (BatchConv2d(3, 5, (3, 2), num_members=4, bias=bias), BatchLinear(6, 7, num_members=3, bias=bias)):
        layer = layer.double()
        vectors = explicit_member_vectors(layer, layer.num_members)
        torch.testing.assert_close(member_gram(layer), vectors @ vectors.T, rtol=1e-12, atol=1e-12)


def test_batch_ensemble_shared_batchnorm_is_left_out():
    torch.manual_seed(3)
    model = BatchEnsemble(num_members=3, **RESNET)
    before = weight_cosine(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.mul_(10.0).add_(3.0)
    torch.testing.assert_close(weight_cosine(model), before, rtol=0, atol=0)


def test_norm_layers_are_left_out_so_independent_inits_are_near_orthogonal():
    torch.manual_seed(4)
    model = DeepEnsemble(num_members=2, **RESNET)
    before = weight_cosine(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, EnsembleBatchNorm2d):
                module.weight.mul_(10.0).add_(3.0)
                module.bias.add_(1.0)
    torch.testing.assert_close(weight_cosine(model), before, rtol=0, atol=0)
    assert abs(off_diagonal_mean(before)) < 0.1  # independent inits: orthogonal up to sampling noise


def test_identical_and_opposite_members():
    model = BatchEnsemble(num_members=3, **MLP)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BatchLinear):
                module.r.copy_(module.r[0].expand_as(module.r))
                module.s.copy_(module.s[0].expand_as(module.s))
                module.bias.copy_(module.bias[0].expand_as(module.bias))
    torch.testing.assert_close(weight_cosine(model), torch.ones(3, 3, dtype=torch.float64))
    deep = DeepEnsemble(num_members=2, **MLP)
    with torch.no_grad():
        for p in deep.parameters():
            p[1].copy_(-p[0])
    torch.testing.assert_close(weight_cosine(deep), torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64))


def test_single_model_and_mc_dropout():
    one = {"weight_cosine": [[1.0]], "weight_cosine_mean": None}
    assert weight_space_summary(SingleModel(**MLP)) == {**one, "weight_cosine_stored": [[1.0]], "weight_cosine_stored_mean": None}
    # MC Dropout members share every weight: no weight-space diversity to report, in either reading
    none = dict.fromkeys(["weight_cosine", "weight_cosine_mean", "weight_cosine_stored", "weight_cosine_stored_mean"])
    assert weight_space_summary(MCDropout(num_members=4, **MLP)) == none


def test_summary_and_off_diagonal_mean():
    matrix = torch.tensor([[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]])
    assert off_diagonal_mean(matrix) == pytest.approx(0.4)
    assert off_diagonal_mean(torch.ones(1, 1)) is None
    model = DeepEnsemble(num_members=3, **MLP)
    summary = weight_space_summary(model)
    assert len(summary["weight_cosine"]) == 3 and all(len(row) == 3 for row in summary["weight_cosine"])
    assert summary["weight_cosine_mean"] == pytest.approx(off_diagonal_mean(weight_cosine(model)))
    # independently initialised members are nearly orthogonal
    assert abs(summary["weight_cosine_mean"]) < 0.2
