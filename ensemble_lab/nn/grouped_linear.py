"""A plain block-diagonal linear layer: one member of a Packed-Ensembles linear with γ groups, on its own."""

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError


class GroupedLinear(nn.Module):
    """y = x Wᵀ + b with W block-diagonal: output block j (out / groups units) reads only input block j.

    The same map as a 1x1 ``nn.Conv1d(in_features, out_features, groups=groups)``. ``weight`` is
    (out_features, in_features / groups), block j's rows stacked in order: the layout of one member of
    ``EnsembleLinear(..., groups=groups)``, so that member's ``member_state`` loads here.
    """

    def __init__(self, in_features: int, out_features: int, groups: int, bias: bool = True) -> None:
        """
        Args:
            in_features: size of each input row; divides by ``groups``.
            out_features: size of each output row; divides by ``groups``.
            groups: the number of diagonal blocks (>= 1; 1 is nn.Linear).
            bias: add a bias vector (out_features,).
        """
        super().__init__()
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1 or in_features % groups or out_features % groups:
            raise ConfigError(f"GroupedLinear({in_features}, {out_features}, groups={groups!r}): both sizes must divide by groups >= 1")
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.weight = nn.Parameter(torch.empty(out_features, in_features // groups))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        bound = 1 / math.sqrt(in_features // groups)  # fan-in of one block, as EnsembleLinear
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """(N, ..., in_features) -> (N, ..., out_features) (tokens: (N, T, in) -> (N, T, out))."""
        rows = x.reshape(-1, self.in_features, 1)  # (N·T, in, 1): every token a row
        y = F.conv1d(rows, self.weight.unsqueeze(-1), self.bias, groups=self.groups)  # (N·T, out, 1)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, groups={self.groups}, bias={self.bias is not None}"
