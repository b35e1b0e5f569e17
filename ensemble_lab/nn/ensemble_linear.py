"""M independent linear layers evaluated in one batched matmul (the Deep Ensemble layer)."""

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.members import check_num_members, gram_of_rows, rows_per_member


class EnsembleLinear(nn.Module):
    """M independent linear layers over member-major rows; member i uses ``weight[i]``, ``bias[i]``."""

    def __init__(
        self, in_features: int, out_features: int, num_members: int, bias: bool = True, groups: int = 1, shared_input: bool = False
    ) -> None:
        """
        Args:
            in_features: size of each input row.
            out_features: size of each output row.
            num_members: number of independent members M.
            bias: give every member a bias vector.
            groups: blocks of each member's weight (Packed-Ensembles' γ): member i's map is block-diagonal,
                output block j (``out_features / groups`` units) reading only input block j, as a 1x1
                nn.Conv1d(in_features, out_features, groups=groups); ``weight[i]`` is
                (out_features, in_features / groups), rows of block j stacked in order. 1: dense.
            shared_input: every member reads the same untiled rows (B, in_features), as a network's first
                layer reads the inputs: one matmul with M * out_features outputs instead of M copies of the
                rows through a batched one (same weights, same values); the output is member-major
                (M*B, out_features) as usual. Needs groups 1.
        """
        super().__init__()
        check_num_members(num_members)
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise ConfigError(f"groups must be an integer >= 1, got {groups!r}")
        if in_features % groups or out_features % groups:
            raise ConfigError(
                f"EnsembleLinear({in_features}, {out_features}, groups={groups}): both feature counts must divide by groups"
            )
        if shared_input and groups != 1:
            raise ConfigError(f"EnsembleLinear(shared_input=True) reads the whole input in every member: groups must be 1, got {groups}")
        self.in_features, self.out_features, self.num_members = in_features, out_features, num_members
        self.groups, self.shared_input = groups, shared_input
        self.weight = nn.Parameter(torch.empty(num_members, out_features, in_features // groups))
        self.bias = nn.Parameter(torch.empty(num_members, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each member drawn independently from nn.Linear's default init."""
        bound = 1 / math.sqrt(self.in_features // self.groups)  # fan-in of one block
        for i in range(self.num_members):  # init only: members are independent draws
            nn.init.kaiming_uniform_(self.weight[i], a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, ..., in_features) member-major rows (tokens: (M*B, T, in)) -> (M*B, ..., out_features);
        shared_input: (B, ..., in_features) -> the same."""
        if self.shared_input:
            return self._shared_forward(x)
        shape, m = x.shape, self.num_members
        rows_per_member(shape[0], m)  # a ConfigError unless the rows are member-major
        x = x.reshape(m, -1, self.in_features)  # (M, B·T, in): a member's tokens are its rows
        if self.groups != 1:
            y = self._grouped_forward(x, m, x.shape[1])
        elif self.bias is None:
            y = torch.bmm(x, self.weight.transpose(1, 2))  # (M, B·T, out)
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))  # (M, B·T, out)
        return y.reshape(*shape[:-1], self.out_features)  # (M*B, ..., out)

    def _shared_forward(self, x: Tensor) -> Tensor:
        """One (B, ..., in) x (in, M*out) matmul for every member at once, then member-major rows."""
        m, b, out = self.num_members, x.shape[0], self.out_features
        bias = None if self.bias is None else self.bias.flatten()  # (M*out,)
        y = F.linear(x, self.weight.flatten(0, 1), bias)  # (B, ..., M*out): member i in columns [i*out, (i+1)*out)
        y = y.unflatten(-1, (m, out)).movedim(-2, 0)  # (M, B, ..., out)
        return y.reshape(m * b, *x.shape[1:-1], out)  # (M*B, ..., out)

    def _grouped_forward(self, x: Tensor, m: int, b: int) -> Tensor:
        """Block-diagonal members, ``x`` (M, B, in) -> (M, B, out): one bmm over the M * groups blocks."""
        g, gin, gout = self.groups, self.in_features // self.groups, self.out_features // self.groups
        x = x.view(m, b, g, gin).transpose(1, 2).reshape(m * g, b, gin)  # (M*G, B, in/G)
        weight = self.weight.view(m * g, gout, gin)  # block j of member i: rows [j*out/G, (j+1)*out/G)
        y = torch.bmm(x, weight.transpose(1, 2))  # (M*G, B, out/G)
        y = y.view(m, g, b, gout).transpose(1, 2).reshape(m, b, self.out_features)  # (M, B, out)
        if self.bias is not None:
            y = y + self.bias.unsqueeze(1)
        return y

    def member_weight(self, i: int) -> Tensor:
        """Member i's weight (out_features, in_features / groups)."""
        return self.weight[i]

    def member_state(self, i: int) -> dict[str, Tensor]:
        """Member i as a plain nn.Linear would hold it: ``weight`` (and ``bias``) slice i, detached.

        With groups > 1 the weight is block-diagonal (out, in / groups): no dense nn.Linear of that shape exists.
        """
        return {name: t[i].detach() for name, t in (("weight", self.weight), ("bias", self.bias)) if t is not None}

    def member_gram(self) -> Tensor:
        """G_ij = ⟨θ_i, θ_j⟩ (M, M) float64 of the members' own weights and biases."""
        return gram_of_rows(self.weight, self.bias)

    def member_parameters(self) -> list[Tensor]:
        """The stored tensors whose row i is member i's own: weight and bias."""
        return [p for p in (self.weight, self.bias) if p is not None]

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups != 1 else ""
        shared = ", shared_input=True" if self.shared_input else ""
        return f"{self.in_features}, {self.out_features}, num_members={self.num_members}, bias={self.bias is not None}{groups}{shared}"
