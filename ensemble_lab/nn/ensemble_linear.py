"""M independent linear layers evaluated in one batched matmul (the Deep Ensemble layer)."""

import math

import torch
from torch import Tensor, nn

from ensemble_lab.nn.members import check_num_members, gram_of_rows, rows_per_member


class EnsembleLinear(nn.Module):
    """M independent linear layers over member-major rows; member i uses ``weight[i]``, ``bias[i]``."""

    def __init__(self, in_features: int, out_features: int, num_members: int, bias: bool = True) -> None:
        """
        Args:
            in_features: size of each input row.
            out_features: size of each output row.
            num_members: number of independent members M.
            bias: give every member a bias vector.
        """
        super().__init__()
        check_num_members(num_members)
        self.in_features, self.out_features, self.num_members = in_features, out_features, num_members
        self.weight = nn.Parameter(torch.empty(num_members, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_members, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each member drawn independently from nn.Linear's default init."""
        bound = 1 / math.sqrt(self.in_features)
        for i in range(self.num_members):  # init only: members are independent draws
            nn.init.kaiming_uniform_(self.weight[i], a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, in_features) member-major rows -> (M*B, out_features)."""
        m, b = self.num_members, rows_per_member(x.shape[0], self.num_members)
        x = x.view(m, b, self.in_features)  # (M, B, in)
        if self.bias is None:
            y = torch.bmm(x, self.weight.transpose(1, 2))  # (M, B, out)
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))  # (M, B, out)
        return y.reshape(m * b, self.out_features)

    def member_weight(self, i: int) -> Tensor:
        """Member i's weight (out_features, in_features)."""
        return self.weight[i]

    def member_gram(self) -> Tensor:
        """G_ij = ⟨θ_i, θ_j⟩ (M, M) float64 of the members' own weights and biases."""
        return gram_of_rows(self.weight, self.bias)

    def member_parameters(self) -> list[Tensor]:
        """The stored tensors whose row i is member i's own: weight and bias."""
        return [p for p in (self.weight, self.bias) if p is not None]

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, num_members={self.num_members}, bias={self.bias is not None}"
