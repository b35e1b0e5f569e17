"""Masksembles' fixed binary member masks (Durasov, Bagautdinov, Baque & Fua, CVPR 2021).

Each of the M members keeps its own fixed subset of a layer's F features (channels of a conv map);
member m's rows (member-major, rows [m*B, (m+1)*B)) are multiplied by mask m. The masks are drawn
once, when the layer is built, and never change: training and test use the same masks, so a
Masksembles network is deterministic at test time (unlike MC Dropout).

How the masks are built (the paper's procedure and its supplementary's size formula, as in the
authors' reference code):

1. Each mask keeps ``m = floor(F / (s * (1 - (1 - 1/s)**M)))`` features (``kept_features``).
2. Draw M masks over ``T ≈ m*s`` positions, each with m ones at distinct positions chosen
   uniformly at random, independently per mask; drop the positions no mask uses. The expected
   number of positions left is ``T * (1 - (1 - m/T)**M)`` (``m*s*(1 - (1 - 1/s)**M)``); T is the
   integer that brings this expectation closest to F (the authors search s itself instead).
3. Repeat step 2 until exactly F positions are left (every feature is used by some mask) and the
   masks are pairwise distinct (when T > m).

Two masks overlap in ``m²/T ≈ m/s`` features on average (intersection over union about
``1/(2s - 1)``): s = 1 gives M identical all-ones masks (the single model), a larger s less
overlap and smaller members (towards an ensemble of disjoint, narrower networks).

The draws come from a ``torch.Generator`` seeded with ``seed`` (0 by default), so the masks are a
function of (F, M, s, seed) only: two builds, and every layer of the same width in one network,
get the same masks (in a residual stage, a member keeps the same channels of the residual stream).
The masks are a buffer, saved in checkpoints. The kept features are not rescaled (no dropout-like
1/keep factor), as in the authors' code: the masks are the same in training and at test.
"""

import math

import torch
from torch import Tensor, nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.members import check_num_members, rows_per_member

#: the scale range of the paper's reference code: 1 (identical masks) to 6
MIN_SCALE, MAX_SCALE = 1.0, 6.0
#: fewest features a mask layer accepts (the authors' code refuses narrower layers)
MIN_FEATURES = 10
#: draws of step 2 tried before giving up
MAX_DRAWS = 20_000


def check_scale(scale: float, option: str = "scale") -> None:
    """Raise a ConfigError unless ``scale`` is a number in [1, 6]."""
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not MIN_SCALE <= scale <= MAX_SCALE:
        raise ConfigError(f"{option} must be a number in [{MIN_SCALE:g}, {MAX_SCALE:g}] (1: identical masks), got {scale!r}")


def kept_features(num_features: int, num_members: int, scale: float) -> int:
    """Features each mask keeps: floor(F / (s (1 - (1 - 1/s)^M))), the paper's formula inverted."""
    return int(num_features / (scale * (1 - (1 - 1 / scale) ** num_members)))


def expected_used(positions: int, kept: int, num_members: int) -> float:
    """Expected number of the ``positions`` used by at least one of M masks of ``kept`` random ones."""
    return positions * (1 - (1 - kept / positions) ** num_members)


def _positions(num_features: int, num_members: int, kept: int) -> int:
    """T >= max(F, m) whose expected number of used positions is closest to F (it grows with T)."""
    low = max(num_features, kept)
    if expected_used(low, kept, num_members) >= num_features:
        return low
    high = low
    while expected_used(high, kept, num_members) < num_features:
        if high > 1000 * num_features:  # M masks of m features cannot cover F positions
            return high
        high *= 2
    while high - low > 1:  # expected_used(low) < F <= expected_used(high)
        mid = (low + high) // 2
        low, high = (mid, high) if expected_used(mid, kept, num_members) < num_features else (low, mid)
    below, above = expected_used(low, kept, num_members), expected_used(high, kept, num_members)
    return low if num_features - below < above - num_features else high


def generate_masks(num_features: int, num_members: int, scale: float, seed: int = 0) -> Tensor:
    """The M masks (M, F) bool over F features; see the module docstring.

    Raises a ConfigError for a scale outside [1, 6], fewer than 10 features, or (F, M, s) that
    admit no M distinct masks covering F features.
    """
    check_num_members(num_members)
    check_scale(scale)
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < MIN_FEATURES:
        raise ConfigError(f"Masksembles needs layers of at least {MIN_FEATURES} features to build distinct masks, got a layer of {num_features}; widen it")
    kept = kept_features(num_features, num_members, scale)
    positions = _positions(num_features, num_members, kept)
    distinct = positions > kept  # s = 1: every mask keeps every feature
    impossible = (
        kept < 1 or kept * num_members < num_features or (distinct and num_members > math.comb(positions, kept))
    )
    generator = torch.Generator().manual_seed(seed)
    for _ in range(0 if impossible else MAX_DRAWS):
        chosen = torch.rand(num_members, positions, generator=generator).argsort(dim=1)[:, :kept]  # (M, m)
        masks = torch.zeros(num_members, positions, dtype=torch.bool).scatter_(1, chosen, True)  # (M, T)
        used = masks.any(dim=0)  # (T,)
        if int(used.sum()) == num_features and (not distinct or torch.unique(masks, dim=0).shape[0] == num_members):
            return masks[:, used]  # (M, F)
    raise ConfigError(
        f"Masksembles cannot build {num_members} distinct masks over {num_features} features with scale {scale:g}; widen the layer or change the scale"
    )


class MemberMasks(nn.Module):
    """Multiplies member m's rows by its fixed binary mask m over features (channels of a conv map).

    No parameters: the members share every weight (``weight_cosine`` is null, as for MC Dropout).
    """

    masks: Tensor

    def __init__(self, num_features: int, num_members: int, scale: float, seed: int = 0) -> None:
        """
        Args:
            num_features: F, features of a row (channels of a (C, H, W) map), >= 10.
            num_members: number of members M (and masks).
            scale: the paper's s in [1, 6]: masks keep about F / (s (1 - (1 - 1/s)^M)) features each
                and overlap in about 1/s of them; 1 makes every mask all ones.
            seed: seed of the torch.Generator the masks are drawn from.
        """
        super().__init__()
        self.num_features, self.num_members, self.scale = num_features, num_members, scale
        self.register_buffer("masks", generate_masks(num_features, num_members, scale, seed))  # (M, F) bool

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, F) or (M*B, F, H, W) member-major rows -> the same shape, row block m times mask m."""
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"MemberMasks expects (M*B, {self.num_features}, ...) rows, got {tuple(x.shape)}")
        rows = rows_per_member(x.shape[0], self.num_members)
        masks = self.masks.to(x.dtype).view(self.num_members, 1, self.num_features, *(1,) * (x.dim() - 2))
        return (x.unflatten(0, (self.num_members, rows)) * masks).flatten(0, 1)  # (M, B, F, ...) -> (M*B, F, ...)

    def extra_repr(self) -> str:
        kept = int(self.masks[0].sum()) if self.masks.numel() else 0
        return f"num_features={self.num_features}, num_members={self.num_members}, scale={self.scale:g}, kept={kept}"
