"""BatchEnsemble's linear layer (Wen, Tran, Ba; ICLR 2020): a shared weight, rank-k fast weights per member."""

import math

import torch
from torch import Tensor, nn

from ensemble_lab.nn.fast_weights import FastWeightLayer, FastWeights
from ensemble_lab.nn.members import rows_per_member


class BatchLinear(FastWeightLayer):
    """A linear layer shared by M members, each perturbed by fast weights.

    Member i uses W_i = W ∘ F_i, F_i = Σ_k s_ik r_ikᵀ, and its own bias b_i. At rank 1 all members
    run as one factored op, y = ((x ∘ r_i) Wᵀ) ∘ s_i + b_i, unless the rows far outnumber the weight
    (a transformer's tokens): then, and always above rank 1, the member weights are built
    (M·out·in) and applied with their biases in one batched matmul.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_members: int,
        bias: bool = True,
        fast_weights: FastWeights | None = None,
    ) -> None:
        """
        Args:
            in_features: size of each input row.
            out_features: size of each output row.
            num_members: number of ensemble members M.
            bias: give every member its own bias vector.
            fast_weights: rank, init and training of r and s (default: rank 1, r, s ~ N(1, 0.5)).
        """
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self._make_fast_weights(num_members, (in_features,), out_features, bias, fast_weights or FastWeights())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Shared weight and bias as nn.Linear; fast weights as ``fast_weights`` says."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._reset_fast_weights(bias_bound=1 / math.sqrt(self.in_features))

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, ..., in_features) member-major rows (tokens: (M*B, T, in)) -> (M*B, ..., out_features)."""
        shape = x.shape
        m = self.num_members
        rows_per_member(shape[0], m)  # a ConfigError unless the rows are member-major
        x = x.reshape(m, -1, self.in_features)  # (M, B·T, in): a member's tokens are its rows
        if self.fast.rank == 1 and not self._builds_member_weights(x.shape[1]):
            r, s = self.fast_factors()  # (M, 1, in), (M, 1, out): broadcast over the B rows
            y = self._apply_shared(lambda rows, w: rows @ w.t(), x * r)  # (M, B, out)
            # Cast to the matmul's dtype: under autocast a float32 s or bias would promote the output back to float32.
            y = self._add_bias(y * s.to(y.dtype))
        else:
            weights = self.member_weights().transpose(1, 2)  # (M, in, out)
            if self.bias is None:
                y = torch.bmm(x, weights)  # (M, B, out)
            else:  # the bias added inside the matmul, as nn.Linear's addmm does
                y = torch.baddbmm(self.bias.unsqueeze(1), x, weights)  # (M, 1, out) + (M, B, in) @ (M, in, out)
        return y.reshape(*shape[:-1], self.out_features)  # (M*B, ..., out)

    def _builds_member_weights(self, rows: int) -> bool:
        """Whether M weights W ∘ s_i r_iᵀ and one batched matmul beat the factored form on ``rows`` rows per member.

        The factored form passes over the activations twice more (x ∘ r, y ∘ s; rows · (in + out) per member,
        forward and backward); building the weights passes over in · out per member, and its batched matmul
        is slower than one large matmul for few rows. On the CPU (benchmarks/README.md, figure (l)) building
        wins once the activations are about 5 times the weight: a ViT's tokens, not an MLP's batch.
        """
        return rows * (self.in_features + self.out_features) > 5 * self.in_features * self.out_features

    def _broadcast(self, f: Tensor) -> Tensor:
        return f  # (M, out, in): already W's layout

    def _weight_sq(self) -> Tensor:
        return self.weight.detach().to(torch.float64).square()  # (out, in)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, num_members={self.num_members}, "
            f"bias={self.bias is not None}, rank={self.fast.rank}"
        )
