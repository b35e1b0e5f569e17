"""Low-rank ensemble layers (the LoRA-Ensemble family): a shared weight plus a rank-k update per member.

Member i's weight is W_i = W + c·A_i B_i: the additive counterpart of BatchEnsemble's multiplicative
W ∘ s_i r_iᵀ, with c = lora_alpha / k (LoRA's scaling) or 1 when ``lora_alpha`` is None (the default). Stored shapes: W as nn.Linear / nn.Conv2d's weight, A (M, out, k) on the output side,
B (M, k, in_flat) on the input side, with in_flat = in_features, or in_channels·kh·kw for a
convolution (B_i read as a (k, in, kh, kw) kernel), and per-member biases (M, out).

No member weight is ever built in ``forward``: the shared weight runs once over all M*B rows and the
low-rank path through the rank-k bottleneck (Linear: two batched matmuls; Conv2d: B in the same
convolution as W, A as a batched matmul), and the two are added.
"""

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.conv_args import IntOrPair, as_pair
from ensemble_lab.nn.members import check_num_members, gram_of_rows, rows_per_member

#: LoRA's init (Hu et al. 2021; LoRA-Ensemble keeps it), in this file's names: the input-side B drawn as a
#: linear layer's weight, the output-side A "zero" (every member starts as W) or "small" (A_i B_i about
#: SMALL_INIT_SCALE times W's init scale: the members differ slightly from the start)
FACTOR_INITS = ("zero", "small")
SMALL_INIT_SCALE = 0.01


def check_low_rank_options(rank: int, factor_init: str, lora_alpha: float | None = None) -> None:
    """Raise a one-line ConfigError, naming the method option, for a rank, init or scaling no layer could build."""
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ConfigError(f"--model.rank must be an integer >= 1, got {rank!r}")
    if factor_init not in FACTOR_INITS:
        raise ConfigError(f"--model.factor_init {factor_init!r} is not known; allowed: {', '.join(FACTOR_INITS)}")
    if lora_alpha is not None and (
        isinstance(lora_alpha, bool) or not isinstance(lora_alpha, int | float) or not 0 < lora_alpha < math.inf
    ):
        raise ConfigError(f"--model.lora_alpha must be a finite number > 0, or null for no scaling, got {lora_alpha!r}")


def update_scale(rank: int, lora_alpha: float | None) -> float:
    """c in W + c·A_i B_i: LoRA's lora_alpha / rank, or 1 without ``lora_alpha``."""
    return 1.0 if lora_alpha is None else lora_alpha / rank


class LowRankLayer(nn.Module):
    """What LowRankLinear and LowRankConv2d share: W, the factors A and B, per-member biases.

    A subclass creates ``weight`` (its fan-in is ``in_flat``) and calls ``_make_factors``.
    """

    weight: nn.Parameter
    A: nn.Parameter
    B: nn.Parameter
    bias: nn.Parameter | None

    def _make_factors(
        self, num_members: int, out: int, in_flat: int, bias: bool, rank: int, factor_init: str, lora_alpha: float | None
    ) -> None:
        check_num_members(num_members)
        check_low_rank_options(rank, factor_init, lora_alpha)
        self.num_members, self.rank, self.factor_init = num_members, rank, factor_init
        self.lora_alpha, self.scaling = lora_alpha, update_scale(rank, lora_alpha)
        self.in_flat = in_flat
        self.A = nn.Parameter(torch.empty(num_members, out, rank))
        self.B = nn.Parameter(torch.empty(num_members, rank, in_flat))
        self.bias = nn.Parameter(torch.empty(num_members, out)) if bias else None

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """W and the bias as nn.Linear / nn.Conv2d; B as W, one draw per member; A zero or small (``factor_init``).

        As in LoRA, the factor next to the output starts at zero and the one next to the input is
        random at a linear layer's scale, so a member's own update A_i B_i grows from zero at the
        pace of the shared W's (the first step moves W_i by -lr·∂L/∂W_i·B_iᵀB_i, B_iᵀB_i of norm
        about 1/3), not faster. The biases start identical for every member (one draw, copied): with
        "zero" the members are exactly the same network at the start and differ only by what A learns.
        """
        bound = 1 / math.sqrt(self.in_flat)  # nn.Linear / nn.Conv2d's bias bound, and W's
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.uniform_(self.B, -bound, bound)  # kaiming_uniform(a=√5) over in_flat, as W and as LoRA's input factor
        if self.factor_init == "zero":
            nn.init.zeros_(self.A)
        else:  # "small": std(A_i B_i) = SMALL_INIT_SCALE · std(W)
            nn.init.normal_(self.A, 0.0, SMALL_INIT_SCALE / math.sqrt(self.rank))
        if self.bias is not None:
            nn.init.uniform_(self.bias[:1], -bound, bound)
            self.bias.copy_(self.bias[:1].expand_as(self.bias))

    def _scaled_a(self) -> Tensor:
        """c·A (M, out, k): the scaling on the small factor, not on the activations."""
        return self.A if self.scaling == 1.0 else self.A * self.scaling

    def _add_bias(self, y: Tensor) -> Tensor:
        """``y`` (M, B, out, ...) plus member i's bias on its rows; cast to y's dtype (autocast)."""
        if self.bias is None:
            return y
        return y + self.bias.view(*self.bias.shape, *(1,) * (y.dim() - 3)).unsqueeze(1).to(y.dtype)

    # ---- weight space: the layer says what its members are ---------------------------------------
    def member_weight(self, i: int) -> Tensor:
        """Member i's effective weight W + c·A_i B_i, shaped like ``.weight``."""
        if not -self.num_members <= i < self.num_members:
            raise IndexError(f"member {i} out of range for {self.num_members} members")
        return self.weight + (self._scaled_a()[i] @ self.B[i]).view_as(self.weight)  # (out, k) @ (k, in_flat) -> W's shape

    def member_state(self, i: int) -> dict[str, Tensor]:
        """Member i as a plain nn.Linear / nn.Conv2d would hold it: ``weight`` W + c·A_i B_i and, with biases, ``bias`` b_i (detached)."""
        state = {"weight": self.member_weight(i).detach()}
        if self.bias is not None:
            state["bias"] = self.bias[i].detach()
        return state

    def member_gram(self) -> Tensor:
        """G_ij = ⟨θ_i, θ_j⟩ (M, M) float64 of the members' effective weights W + c·A_i B_i and own biases.

        Factored, no member weight built (A read as c·A): ⟨W + A_iB_i, W + A_jB_j⟩ = ‖W‖² + t_i + t_j +
        ⟨A_iᵀA_j, B_iB_jᵀ⟩ with t_i = ⟨A_iᵀW, B_i⟩; it costs M·k·out·in_flat + M²·k²·(out + in_flat) instead of the
        M²·out·in_flat of a Gram of materialised weights.
        """
        with torch.no_grad():
            w = self.weight.detach().to(torch.float64).reshape(self.weight.shape[0], -1)  # (out, in_flat)
            a = self.A.detach().to(torch.float64) * self.scaling  # (M, out, k): c·A
            b = self.B.detach().to(torch.float64)  # (M, k, in_flat)
            cross = torch.einsum("mok,oi,mki->m", a, w, b)  # (M,): t_i = ⟨W, A_i B_i⟩
            aa = torch.einsum("iok,jol->ijkl", a, a)  # (M, M, k, k): A_iᵀ A_j
            bb = torch.einsum("iko,jlo->ijkl", b, b)  # (M, M, k, k): B_i B_jᵀ
            gram = w.square().sum() + cross.unsqueeze(1) + cross.unsqueeze(0) + (aa * bb).sum((2, 3))  # (M, M)
            return gram + gram_of_rows(self.bias) if self.bias is not None else gram

    def member_parameters(self) -> list[Tensor]:
        """The stored tensors whose row i is member i's own: A, B and the biases."""
        return [p for p in (self.A, self.B, self.bias) if p is not None]


class LowRankLinear(LowRankLayer):
    """A linear layer shared by M members, each adding its own rank-k update: W_i = W + c·A_i B_i.

    y_i = x Wᵀ + c·(x B_iᵀ) A_iᵀ + b_i: one matmul with W over all rows, two batched matmuls through
    the rank-k bottleneck.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_members: int,
        bias: bool = True,
        rank: int = 1,
        factor_init: str = "zero",
        lora_alpha: float | None = None,
    ) -> None:
        """
        Args:
            in_features: size of each input row.
            out_features: size of each output row.
            num_members: number of ensemble members M.
            bias: give every member its own bias vector.
            rank: k >= 1, the rank of every member's update A_i B_i.
            factor_init: "zero" (A = 0: the members start identical, as LoRA) or "small"
                (A ~ N(0, 0.01²/k): the members differ slightly from the start).
            lora_alpha: LoRA's α: the update is scaled by c = α / rank; None: c = 1.
        """
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self._make_factors(num_members, out_features, in_features, bias, rank, factor_init, lora_alpha)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, ..., in_features) member-major rows (tokens: (M*B, T, in)) -> (M*B, ..., out_features)."""
        shape, m = x.shape, self.num_members
        rows_per_member(shape[0], m)  # a ConfigError unless the rows are member-major
        shared = F.linear(x, self.weight).reshape(m, -1, self.out_features)  # (M*B, ..., out) -> (M, B·T, out)
        rows = x.reshape(m, -1, self.in_features)  # (M, B·T, in): a member's tokens are its rows
        low = torch.bmm(rows, self.B.transpose(1, 2).to(rows.dtype))  # (M, B, in) @ (M, in, k) -> (M, B, k)
        low = torch.bmm(low, self._scaled_a().transpose(1, 2).to(low.dtype))  # (M, B, k) @ (M, k, out) -> (M, B, out)
        y = shared + low.to(shared.dtype)  # (M, B, out)
        return self._add_bias(y).reshape(*shape[:-1], self.out_features)  # (M*B, ..., out)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, num_members={self.num_members}, "
            f"bias={self.bias is not None}, rank={self.rank}, factor_init={self.factor_init}, scaling={self.scaling:g}"
        )


class LowRankConv2d(LowRankLayer):
    """A convolution shared by M members, each adding its own rank-k kernel update: W_i = W + c·A_i B_i.

    B_i (k, in·kh·kw) is read as a (k, in, kh, kw) kernel and A_i (out, k) as a 1x1 kernel, so
    conv(x, W_i) = conv(x, W) + conv1x1(conv(x, B_i), A_i). W and every member's B run as ONE dense
    convolution over all M*B rows, with out + M·k output channels; each row then keeps its own
    member's k channels and maps them up with A_i (a batched matmul). Computing every member's B on
    every row costs M·k / out of the shared convolution (6% at M = 4, k = 1, 64 channels), and beat
    a grouped convolution per member (groups = M, k output channels each) by 1.4-2x on CPU, where
    convolutions with a few channels per group run slowly, forward and backward.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        num_members: int,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        bias: bool = False,
        rank: int = 1,
        factor_init: str = "zero",
        lora_alpha: float | None = None,
    ) -> None:
        """
        Args:
            in_channels: channels of each input row.
            out_channels: channels of each output row.
            kernel_size: height and width of the kernel (int or pair).
            num_members: number of ensemble members M.
            stride: stride of the convolution (int or pair).
            padding: zero padding on each side (int or pair).
            bias: give every member its own bias vector (out_channels,).
            rank: k >= 1, the rank of every member's update A_i B_i (B over input channels × kernel positions).
            factor_init: "zero" (A = 0: the members start identical, as LoRA) or "small"
                (A ~ N(0, 0.01²/k): the members differ slightly from the start).
            lora_alpha: LoRA's α: the update is scaled by c = α / rank; None: c = 1.
        """
        super().__init__()
        kh, kw = as_pair(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kh, kw))
        self._make_factors(num_members, out_channels, in_channels * kh * kw, bias, rank, factor_init, lora_alpha)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, in_channels, H, W) member-major rows -> (M*B, out_channels, H', W')."""
        m, b = self.num_members, rows_per_member(x.shape[0], self.num_members)
        k, cout = self.rank, self.out_channels
        down = self.B.reshape(m * k, self.in_channels, *self.kernel_size)  # (M, k, Cin·kh·kw) -> (M*k, Cin, kh, kw)
        kernels = torch.cat([self.weight, down])  # (Cout + M*k, Cin, kh, kw): W, then every member's B
        both = F.conv2d(x, kernels, None, self.stride, self.padding)  # (M*B, Cout + M*k, H', W')
        h, w = both.shape[-2:]
        both = both.view(m, b, cout + m * k, h * w)  # (M, B, Cout + M*k, H'W')
        shared = both[:, :, :cout]  # (M, B, Cout, H'W')
        every_b = both[:, :, cout:].view(m, b, m, k, h * w)  # (M, B, M, k, H'W): member j's B on member i's rows
        own = every_b.diagonal(dim1=0, dim2=2).permute(3, 0, 1, 2)  # (B, k, H'W, M) -> (M, B, k, H'W): j = i
        low = torch.matmul(self._scaled_a().unsqueeze(1).to(own.dtype), own)  # (M, 1, Cout, k) @ (M, B, k, H'W) -> (M, B, Cout, H'W)
        y = (shared + low).view(m, b, cout, h, w)  # (M, B, Cout, H', W')
        return self._add_bias(y).reshape(m * b, cout, h, w)  # (M*B, Cout, H', W')

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"num_members={self.num_members}, stride={self.stride}, padding={self.padding}, "
            f"bias={self.bias is not None}, rank={self.rank}, factor_init={self.factor_init}, scaling={self.scaling:g}"
        )
