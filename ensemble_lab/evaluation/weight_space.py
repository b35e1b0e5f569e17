"""Parameter-space diversity: cosine similarity between the members' flattened weights.

Member i's parameter vector θ_i is the concatenation, over every linear and convolution layer
that holds per-member parameters, of what member i computes with: its effective weight
(BatchEnsemble: W ∘ s_i r_iᵀ, Deep Ensemble: ``weight[i]``) and its own bias where it has one.
The cosine matrix is C_ij = ⟨θ_i, θ_j⟩ / (‖θ_i‖ ‖θ_j‖), built from one Gram matrix per layer,
G = Σ_layers G_layer, so no member's network is ever materialised.

Choices (README, "Weight space"):
- Biases count when they are per member (part of what the member computes). Norm layers never
  count, per-member or shared: their scales all start at exactly 1, a constant that alone gives two
  independently initialised ResNet-18 members a cosine of 0.75 (0.0002 without them) and would
  compare a Deep Ensemble's per-member norms with BatchEnsemble's shared, left-out ones. Buffers
  (running statistics) never count either.
- Layers shared by all members (BatchEnsemble's shared BatchNorm, any plain nn.Linear / nn.Conv2d)
  are left out: they are identical for every member by construction and would only add the same
  constant to every Gram entry, pushing the cosine towards 1 whatever training did.
- A model with no per-member layer (MC Dropout: members differ by dropout masks only) has no
  weight-space diversity to measure: ``weight_cosine`` returns None. M = 1 gives [[1.0]].
"""

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ensemble_lab.nn import BatchConv2d, BatchLinear, EnsembleConv2d, EnsembleLinear

GramFn = Callable[[nn.Module], Tensor]


def _own_gram(*params: Tensor | None) -> Tensor:
    """Σ over tensors of shape (M, ...) of the (M, M) Gram of their flattened rows, in float64."""
    present = [p.detach().to(torch.float64).flatten(1) for p in params if p is not None]  # each (M, k)
    return sum(p @ p.T for p in present)  # (M, M)


def _rank_one_gram(weight_sq: Tensor, r: Tensor, s: Tensor) -> Tensor:
    """G_ij = Σ_{o,k} W²_ok s_io s_jo r_ik r_jk = (s_i∘s_j)ᵀ (W∘W) (r_i∘r_j), without M weight copies.

    Args:
        weight_sq: W∘W summed over kernel positions, (out, in), float64.
        r: input fast weights (M, in).
        s: output fast weights (M, out).
    """
    m = r.shape[0]
    r, s = r.detach().to(torch.float64), s.detach().to(torch.float64)
    rr = (r.unsqueeze(1) * r.unsqueeze(0)).reshape(m * m, -1)  # (M*M, in): r_i ∘ r_j
    ss = s.unsqueeze(1) * s.unsqueeze(0)  # (M, M, out): s_i ∘ s_j
    projected = (rr @ weight_sq.T).view(m, m, -1)  # (M, M, out): (W∘W)(r_i∘r_j)
    return (projected * ss).sum(-1)  # (M, M)


def _batch_linear_gram(layer: BatchLinear) -> Tensor:
    weight_sq = layer.weight.detach().to(torch.float64).square()  # (out, in)
    return _rank_one_gram(weight_sq, layer.r, layer.s) + _own_gram(layer.bias)


def _batch_conv_gram(layer: BatchConv2d) -> Tensor:
    # s_i r_iᵀ is the same at every kernel position, so the positions sum inside W∘W first.
    weight_sq = layer.weight.detach().to(torch.float64).square().sum((2, 3))  # (out, in)
    return _rank_one_gram(weight_sq, layer.r, layer.s) + _own_gram(layer.bias)


def _ensemble_layer_gram(layer: nn.Module) -> Tensor:
    # EnsembleLinear / EnsembleConv2d: weight[i], bias[i] belong to member i
    return _own_gram(layer.weight, layer.bias)


#: layer type -> function giving the (M, M) Gram of that layer's per-member parameters.
#: A new per-member layer registers here; layer types not listed count as shared.
MEMBER_GRAMS: dict[type, GramFn] = {
    BatchLinear: _batch_linear_gram,
    BatchConv2d: _batch_conv_gram,
    EnsembleLinear: _ensemble_layer_gram,
    EnsembleConv2d: _ensemble_layer_gram,
}


def member_gram(model: nn.Module) -> Tensor | None:
    """Gram matrix G_ij = ⟨θ_i, θ_j⟩ (M, M) float64 over every per-member layer; None if there is none."""
    total: Tensor | None = None
    for module in model.modules():
        gram_fn = MEMBER_GRAMS.get(type(module))
        if gram_fn is None:
            continue
        gram = gram_fn(module)
        if not isinstance(gram, Tensor):  # a layer without parameters (e.g. affine=False) adds nothing
            continue
        total = gram if total is None else total + gram.to(total.device)
    return total


@torch.no_grad()
def weight_cosine(model: nn.Module) -> Tensor | None:
    """Cosine similarity between the members' flattened parameters (see the module docstring).

    Args:
        model: an ensemble-lab method (``num_members`` M) or any module built from per-member layers.

    Returns:
        (M, M) float64 with ones on the diagonal; [[1.0]] when M = 1; None when the members share
        every parameter (MC Dropout). A member whose parameters are all zero gives NaN in its row.
    """
    num_members = getattr(model, "num_members", None)
    if num_members == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    gram = member_gram(model)
    if gram is None:
        return None
    norm = gram.diagonal().sqrt()  # (M,)
    cosine = (gram / (norm.unsqueeze(1) * norm.unsqueeze(0))).clamp(-1.0, 1.0)  # (M, M)
    diagonal = cosine.diagonal()  # a view: exact ones instead of 1 ± round-off, NaN kept
    diagonal.copy_(torch.where(norm > 0, torch.ones_like(norm), diagonal))
    return cosine


def off_diagonal_mean(matrix: Tensor) -> float | None:
    """Mean of the entries i ≠ j of a square matrix; None when there is no such entry (M = 1)."""
    m = matrix.shape[0]
    if m < 2:
        return None
    mask = ~torch.eye(m, dtype=torch.bool, device=matrix.device)
    return float(matrix[mask].mean())


def weight_space_summary(model: nn.Module) -> dict[str, list[list[float]] | float | None]:
    """``{"weight_cosine": M×M nested list or None, "weight_cosine_mean": off-diagonal mean or None}``."""
    cosine = weight_cosine(model)
    if cosine is None:
        return {"weight_cosine": None, "weight_cosine_mean": None}
    return {"weight_cosine": cosine.cpu().tolist(), "weight_cosine_mean": off_diagonal_mean(cosine)}
