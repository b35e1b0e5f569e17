"""Parameter-space diversity: cosine similarity between the members' flattened weights, two readings.

The layers say what their members are (the evaluation never looks at a layer's class): a layer
with per-member parameters has ``member_parameters()`` (the stored tensors whose row i is member
i's own) and, when those parameters shape what member i computes with, ``member_gram()`` (the
(M, M) inner products of its members' effective weights, factored where that is cheaper).

- ``weight_cosine`` (effective): θ_i concatenates, over every layer with ``member_gram``, what
  member i computes with: its effective weight (BatchEnsemble: W ∘ F_i, Deep Ensemble:
  ``weight[i]``) and its own bias. Layers shared by all members (BatchEnsemble's shared W seen
  alone, a shared BatchNorm, any plain nn.Linear / nn.Conv2d) are left out: identical for every
  member by construction, they would add the same constant to every Gram entry and push the
  cosine towards 1 whatever training did. Norm layers never count, per-member or shared: their
  scales all start at exactly 1, a constant that alone gives two independently initialised
  ResNet-18 members a cosine of 0.75 (0.0002 without them).
- ``weight_cosine_stored``: θ_i is every parameter of the model as stored, the shared ones (W,
  shared norms) included in every member's vector and the per-member ones (r_i, s_i, b_i,
  ``weight[i]``, per-member norms) by member. A reading a paper may have used; for BatchEnsemble
  it is close to 1 by construction, because the shared W dominates every member's vector.

Both are built from Gram matrices G = Σ_layers G_layer, so no member's network is materialised
(except a rank > 1 layer's weights). Buffers (running statistics) never count. A model whose
members share every parameter (MC Dropout: members differ by dropout masks only) has no
weight-space diversity to measure: both return None. M = 1 gives [[1.0]].
"""

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ensemble_lab.nn.members import gram_of_rows, member_network_parameters, member_owned_parameters


def _sum(grams: list[Tensor]) -> Tensor | None:
    if not grams:
        return None
    total = grams[0]
    for gram in grams[1:]:
        total = total + gram.to(total.device)
    return total


def member_gram(model: nn.Module) -> Tensor | None:
    """G_ij = ⟨θ_i, θ_j⟩ (M, M) float64 of the effective reading; None without a per-member layer."""
    return _sum([ask() for module in model.modules() if callable(ask := getattr(module, "member_gram", None))])


def stored_member_gram(model: nn.Module) -> Tensor | None:
    """G_ij of the stored reading: Σ_own ⟨p[i], p[j]⟩ + Σ_shared ‖p‖²; None when every parameter is shared."""
    own = member_owned_parameters(model)
    own_ids = {id(p) for p in own}
    gram = _sum([gram_of_rows(p) for p in own])
    if gram is None:
        return None
    shared = [p for p in member_network_parameters(model) if id(p) not in own_ids]
    shared_sq = sum(float(p.detach().to(torch.float64).square().sum()) for p in shared)  # every member holds them all
    return gram + shared_sq


def _cosine(gram: Tensor) -> Tensor:
    norm = gram.diagonal().sqrt()  # (M,)
    cosine = (gram / (norm.unsqueeze(1) * norm.unsqueeze(0))).clamp(-1.0, 1.0)  # (M, M)
    diagonal = cosine.diagonal()  # a view: exact ones instead of 1 ± round-off, NaN kept
    diagonal.copy_(torch.where(norm > 0, torch.ones_like(norm), diagonal))
    return cosine


def _reading(model: nn.Module, gram_of: Callable[[nn.Module], Tensor | None]) -> Tensor | None:
    if getattr(model, "num_members", None) == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    gram = gram_of(model)
    return None if gram is None else _cosine(gram)


@torch.no_grad()
def weight_cosine(model: nn.Module) -> Tensor | None:
    """Cosine similarity of the members' effective weights (see the module docstring).

    Args:
        model: an ensemble-lab method (``num_members`` M) or any module built from per-member layers.

    Returns:
        (M, M) float64 with ones on the diagonal; [[1.0]] when M = 1; None when the members share
        every parameter (MC Dropout). A member whose parameters are all zero gives NaN in its row.
    """
    return _reading(model, member_gram)


@torch.no_grad()
def weight_cosine_stored(model: nn.Module) -> Tensor | None:
    """Cosine similarity of the members' parameters as stored, shared ones in every member's vector.

    Args:
        model: an ensemble-lab method (``num_members`` M) or any module built from per-member layers.

    Returns:
        (M, M) float64 as ``weight_cosine``; None when the members share every parameter.
    """
    return _reading(model, stored_member_gram)


def off_diagonal_mean(matrix: Tensor) -> float | None:
    """Mean of the entries i ≠ j of a square matrix; None when there is no such entry (M = 1)."""
    m = matrix.shape[0]
    if m < 2:
        return None
    mask = ~torch.eye(m, dtype=torch.bool, device=matrix.device)
    return float(matrix[mask].mean())


def weight_space_summary(model: nn.Module) -> dict[str, list[list[float]] | float | None]:
    """Both readings: ``weight_cosine`` / ``weight_cosine_stored`` (M×M nested lists or None) and
    their off-diagonal means ``weight_cosine_mean`` / ``weight_cosine_stored_mean``."""
    summary: dict[str, list[list[float]] | float | None] = {}
    for key, cosine in (("weight_cosine", weight_cosine(model)), ("weight_cosine_stored", weight_cosine_stored(model))):
        summary[key] = None if cosine is None else cosine.cpu().tolist()
        summary[f"{key}_mean"] = None if cosine is None else off_diagonal_mean(cosine)
    return summary
