"""BatchEnsemble's rank-1 linear layer (Wen, Tran, Ba; ICLR 2020)."""

import math

import torch
from torch import Tensor, nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.members import check_num_members, rows_per_member

FAST_WEIGHT_INITS = ("normal", "random_sign")


def init_fast_weights(tensor: Tensor, init: str, std: float) -> None:
    """Fill a fast-weight tensor in place: N(1, std) ("normal") or random ±1 signs ("random_sign")."""
    with torch.no_grad():
        if init == "normal":
            tensor.normal_(1.0, std)
        elif init == "random_sign":
            tensor.bernoulli_(0.5).mul_(2).sub_(1)
        else:
            raise ConfigError(f"fast_weight_init={init!r} is not known; allowed: {', '.join(FAST_WEIGHT_INITS)}")


class BatchLinear(nn.Module):
    """A linear layer shared by M members, each perturbed by a rank-1 fast weight.

    Member i uses W_i = W ∘ (s_i r_iᵀ) and its own bias b_i. All members run in one batched op:
    y = ((x ∘ r_i) Wᵀ) ∘ s_i + b_i on member-major rows (M*B, in_features).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_members: int,
        bias: bool = True,
        fast_weight_init: str = "normal",
        fast_weight_std: float = 0.5,
    ) -> None:
        """
        Args:
            in_features: size of each input row.
            out_features: size of each output row.
            num_members: number of ensemble members M.
            bias: give every member its own bias vector.
            fast_weight_init: "normal" draws r, s ~ N(1, fast_weight_std); "random_sign" draws ±1.
            fast_weight_std: standard deviation of the "normal" fast-weight init.
        """
        super().__init__()
        check_num_members(num_members)
        self.in_features, self.out_features, self.num_members = in_features, out_features, num_members
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.r = nn.Parameter(torch.empty(num_members, in_features))
        self.s = nn.Parameter(torch.empty(num_members, out_features))
        self.bias = nn.Parameter(torch.empty(num_members, out_features)) if bias else None
        self.fast_weight_init, self.fast_weight_std = fast_weight_init, fast_weight_std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Shared weight and bias as nn.Linear; fast weights from ``fast_weight_init``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        init_fast_weights(self.r, self.fast_weight_init, self.fast_weight_std)
        init_fast_weights(self.s, self.fast_weight_init, self.fast_weight_std)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, in_features) member-major rows -> (M*B, out_features)."""
        m, b = self.num_members, rows_per_member(x.shape[0], self.num_members)
        x = x.view(m, b, self.in_features) * self.r.unsqueeze(1)  # (M, B, in)
        y = x @ self.weight.t()  # (M, B, out)
        # Cast to the matmul's dtype: under autocast a float32 s or bias would promote the output back to float32.
        y = y * self.s.unsqueeze(1).to(y.dtype)
        if self.bias is not None:
            y = y + self.bias.unsqueeze(1).to(y.dtype)
        return y.reshape(m * b, self.out_features)  # (M*B, out)

    def member_weight(self, i: int) -> Tensor:
        """Member i's effective weight W ∘ (s_i r_iᵀ), shaped like ``.weight``."""
        return self.weight * torch.outer(self.s[i], self.r[i])

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, num_members={self.num_members}, bias={self.bias is not None}"
