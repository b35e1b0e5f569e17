"""Helpers for the member-major row layout: rows [m*B, (m+1)*B) belong to member m."""

import torch
from torch import Tensor, nn

from ensemble_lab.errors import ConfigError


def check_num_members(num_members: int) -> None:
    """Raise a ConfigError unless ``num_members`` is a positive integer."""
    if not isinstance(num_members, int) or num_members < 1:
        raise ConfigError(f"num_members must be an integer >= 1, got {num_members!r}")


def rows_per_member(rows: int, num_members: int) -> int:
    """Number of rows B each member owns in a member-major batch of ``rows`` = M * B rows.

    Raises a ConfigError instead of padding when ``rows`` does not divide by ``num_members``.
    """
    if rows % num_members != 0:
        raise ConfigError(
            f"got {rows} rows for {num_members} members: a member-major batch needs a multiple of "
            f"num_members rows (M*B). Tile the input with tile_members(x, {num_members}) first."
        )
    return rows // num_members


def tile_members(x: Tensor, num_members: int) -> Tensor:
    """Repeat a batch (B, ...) for every member, member-major: (M*B, ...)."""
    if num_members == 1:
        return x
    # (B, ...) -> (M, B, ...) -> (M*B, ...)
    return x.unsqueeze(0).expand(num_members, *x.shape).reshape(num_members * x.shape[0], *x.shape[1:])


def gram_of_rows(*tensors: Tensor | None) -> Tensor:
    """Σ over tensors of shape (M, ...) of the (M, M) Gram of their flattened rows, in float64 (detached).

    Row i of each tensor is member i's; ``None`` entries are skipped (at least one must be a tensor).
    """
    present = [t.detach().to(torch.float64).flatten(1) for t in tensors if t is not None]  # each (M, k)
    if not present:
        raise ValueError("gram_of_rows needs at least one tensor")
    gram = present[0] @ present[0].T  # (M, M)
    for rows in present[1:]:
        gram = gram + rows @ rows.T
    return gram


def member_owned_parameters(model: nn.Module) -> list[Tensor]:
    """Every stored tensor whose row i is member i's own, as the layers declare them (``member_parameters()``)."""
    return [p for module in model.modules() if callable(ask := getattr(module, "member_parameters", None)) for p in ask()]


def member_network_parameters(model: nn.Module) -> list[Tensor]:
    """Every parameter the members compute with: all of ``model``'s, less those its ``training_only_parameters()``
    names (a snapshot ensemble's network in training, which no member runs)."""
    ask = getattr(model, "training_only_parameters", None)
    left_out = {id(p) for p in ask()} if callable(ask) else set()
    return [p for p in model.parameters() if id(p) not in left_out]
