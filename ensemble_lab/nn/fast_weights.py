"""BatchEnsemble's fast weights, shared by BatchLinear and BatchConv2d.

Member i's weight is W ∘ F_i with F_i = Σ_k s_ik r_ikᵀ (rank k; k = 1 is the paper's s_i r_iᵀ).
``r`` runs over the layer's input (channels, or channels × kernel positions for a kernel-wise
convolution), ``s`` over its outputs. Stored shapes: r (M, *in) and s (M, out) at rank 1 (the
public layout), (M, k, *in) and (M, k, out) above; the code works on views (M, k, in_flat).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.members import check_num_members, gram_of_rows

FAST_WEIGHT_INITS = ("normal", "random_sign", "ones", "tabm")


@dataclass(frozen=True)
class FastWeights:
    """How a BatchEnsemble layer forms and trains its members' fast weights.

    Args:
        rank: k ≥ 1 rank-1 terms per member: F_i = Σ_k s_ik r_ikᵀ.
        init: "normal" draws r, s ~ N(mean, std); "random_sign" draws ±1; "ones" sets every
            member's F_i to all ones (members identical at the start: the degenerate control); "tabm"
            is TabM's (Gorishniy et al., ICLR 2025): r of the network's first layer (``first_layer``)
            ±1 at random (each entry +1 or −1 with probability 1/2), its s and every other layer's r
            and s exactly 1, so the members differ at the start only by the signs of their input
            features. With "ones" and "tabm" every member's bias starts equal (one draw shared by all).
            Above rank 1, s is divided by k so that Σ_k s_ik r_ikᵀ keeps the rank-1 mean; its spread
            falls as 1/√k, so rank-k members start closer together (normal init, mean 1, std 0.5:
            effective weight cosine at init 0.64, 0.79, 0.86 at k = 1, 2, 4).
        mean: mean of the "normal" init (1.0 in the authors' code; some summaries say 0).
        std: standard deviation of the "normal" init.
        unperturbed_first_member: member 0 uses W itself: its F_0 is all ones, fixed, never trained.
        gradient_blocking: members 1..M−1 see W detached, so W learns from member 0's rows alone
            (the authors' MNIST code); their fast weights and biases still train.
        first_layer: the layer reads the network's input (set by the layer factory, not an option):
            the one layer whose r the "tabm" init draws at random.
    """

    rank: int = 1
    init: str = "normal"
    mean: float = 1.0
    std: float = 0.5
    unperturbed_first_member: bool = False
    gradient_blocking: bool = False
    first_layer: bool = False

    def __post_init__(self) -> None:
        """Refuse values no layer could build, naming the method option to change."""
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ConfigError(f"--model.rank must be an integer >= 1, got {self.rank!r}")
        if self.init not in FAST_WEIGHT_INITS:
            raise ConfigError(f"--model.fast_weight_init {self.init!r} is not known; allowed: {', '.join(FAST_WEIGHT_INITS)}")
        if not math.isfinite(self.mean):
            raise ConfigError(f"--model.fast_weight_mean must be a finite number, got {self.mean}")
        if not (math.isfinite(self.std) and self.std >= 0):
            raise ConfigError(f"--model.fast_weight_std must be a finite number >= 0, got {self.std}")


def _fill(tensor: Tensor, fast: FastWeights, random: bool = True) -> None:
    """Draw ``tensor`` as ``fast.init`` says; ``random`` False (TabM's s, and r outside the first layer): ones."""
    if fast.init == "normal":
        tensor.normal_(fast.mean, fast.std)
    elif fast.init == "random_sign" or (fast.init == "tabm" and random):
        tensor.bernoulli_(0.5).mul_(2).sub_(1)
    else:  # "ones", and TabM's adapters other than the first layer's r
        tensor.fill_(1.0)


class FastWeightLayer(nn.Module):
    """What BatchLinear and BatchConv2d share: W, the fast weights r, s, per-member biases.

    A subclass creates ``weight`` and calls ``_make_fast_weights``; it says how F_i lines up with
    ``weight`` (``_broadcast``) and how much of W a factored Gram may sum first (``_weight_sq``).
    """

    weight: nn.Parameter
    r: nn.Parameter
    s: nn.Parameter
    bias: nn.Parameter | None

    def _make_fast_weights(self, num_members: int, r_shape: tuple[int, ...], out: int, bias: bool, fast: FastWeights) -> None:
        check_num_members(num_members)
        self.num_members, self.fast = num_members, fast
        rank = () if fast.rank == 1 else (fast.rank,)
        self.r = nn.Parameter(torch.empty(num_members, *rank, *r_shape))
        self.s = nn.Parameter(torch.empty(num_members, *rank, out))
        self.bias = nn.Parameter(torch.empty(num_members, out)) if bias else None

    @torch.no_grad()
    def _reset_fast_weights(self, bias_bound: float) -> None:
        fast = self.fast
        _fill(self.r, fast, random=fast.first_layer)  # "tabm": random in the first layer only
        _fill(self.s, fast, random=False)
        self.s.div_(fast.rank)
        if fast.unperturbed_first_member:  # stored as used: r_0k = 1, s_0k = 1/k, so F_0 = 1
            self.r[0] = 1.0
            self.s[0] = 1.0 / fast.rank
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bias_bound, bias_bound)
            if fast.init in ("ones", "tabm"):  # identical members need identical biases too (TabM: one shared draw)
                self.bias.copy_(self.bias[:1].expand_as(self.bias))

    # ---- the members' fast weights and weights --------------------------------------------------
    def fast_factors(self) -> tuple[Tensor, Tensor]:
        """(r, s) as the members use them, (M, k, in_flat) and (M, k, out); member 0 all-ones when unperturbed."""
        m, k = self.num_members, self.fast.rank
        # reshape, not view: a module moved to channels-last stores a kernel-wise r (M, in, kh, kw) in NHWC order
        r, s = self.r.reshape(m, k, -1), self.s.reshape(m, k, -1)
        if self.fast.unperturbed_first_member:
            r = torch.cat([torch.ones_like(r[:1]), r[1:]])
            s = torch.cat([torch.full_like(s[:1], 1.0 / k), s[1:]])
        return r, s

    def perturbations(self) -> Tensor:
        """F_i = Σ_k s_ik r_ikᵀ of every member, lined up with ``weight``: (M, out, in, ...)."""
        r, s = self.fast_factors()
        return self._broadcast(torch.einsum("mko,mki->moi", s, r))  # (M, out, in_flat) -> (M, *weight.shape)

    def member_weights(self) -> Tensor:
        """Every member's effective weight W ∘ F_i, (M, *weight.shape); W detached for members 1.. under gradient blocking."""
        return self._apply_shared(lambda f, w: w * f, self.perturbations())

    def member_weight(self, i: int) -> Tensor:
        """Member i's effective weight W ∘ F_i, shaped like ``.weight``."""
        if not -self.num_members <= i < self.num_members:
            raise IndexError(f"member {i} out of range for {self.num_members} members")
        r, s = self.fast_factors()
        f = self._broadcast((s[i].t() @ r[i]).unsqueeze(0))[0]  # (out, in, ...): Σ_k s_ik r_ikᵀ
        return self.weight * f

    def member_state(self, i: int) -> dict[str, Tensor]:
        """Member i as a plain nn.Linear / nn.Conv2d would hold it: ``weight`` W ∘ F_i and, with biases, ``bias`` b_i (detached)."""
        state = {"weight": self.member_weight(i).detach()}
        if self.bias is not None:
            state["bias"] = self.bias[i].detach()
        return state

    def _apply_shared(self, op: Callable[..., Tensor], *per_member: Tensor) -> Tensor:
        """``op(*per_member, W)`` for member-major tensors (M, ...). With gradient blocking, members 1..
        get W detached: two ops (member 0, the rest), never one per member."""
        if not self.fast.gradient_blocking or self.num_members == 1:
            return op(*per_member, self.weight)
        first, rest = (op(*(t[:1] for t in per_member), self.weight), op(*(t[1:] for t in per_member), self.weight.detach()))
        return torch.cat([first, rest])

    def _add_bias(self, y: Tensor) -> Tensor:
        """``y`` (M, B, out, ...) plus member i's bias on its rows; cast to y's dtype (autocast)."""
        if self.bias is None:
            return y
        return y + self.bias.view(*self.bias.shape, *(1,) * (y.dim() - 3)).unsqueeze(1).to(y.dtype)

    def _broadcast(self, f: Tensor) -> Tensor:
        """(M, out, in_flat) perturbations -> (M, *weight.shape), broadcastable against W."""
        raise NotImplementedError

    def _weight_sq(self) -> Tensor:
        """W∘W in float64, summed over the positions where F_i is constant: (out, in_flat)."""
        raise NotImplementedError

    # ---- weight space: the layer says what its members are ---------------------------------------
    def member_gram(self) -> Tensor:
        """G_ij = ⟨θ_i, θ_j⟩ (M, M) float64 of the members' effective weights W ∘ F_i and own biases.

        Rank 1: factored, G_ij = (s_i∘s_j)ᵀ (W∘W) (r_i∘r_j), without M weight copies. Above rank 1
        the factored form costs k² times the materialised one, so the member weights are built.
        """
        with torch.no_grad():
            if self.fast.rank == 1:
                r, s = (t.detach().to(torch.float64)[:, 0] for t in self.fast_factors())  # (M, in_flat), (M, out)
                m = r.shape[0]
                rr = (r.unsqueeze(1) * r.unsqueeze(0)).reshape(m * m, -1)  # (M*M, in_flat): r_i ∘ r_j
                projected = (rr @ self._weight_sq().T).view(m, m, -1)  # (M, M, out): (W∘W)(r_i∘r_j)
                gram = (projected * (s.unsqueeze(1) * s.unsqueeze(0))).sum(-1)  # (M, M)
            else:
                gram = gram_of_rows(self.member_weights())
            return gram + gram_of_rows(self.bias) if self.bias is not None else gram

    def member_parameters(self) -> list[Tensor]:
        """The stored tensors whose row i is member i's own: r, s and the biases."""
        return [p for p in (self.r, self.s, self.bias) if p is not None]
