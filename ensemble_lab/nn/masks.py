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

Where the masks go (``MaskSites``, the ``member_masks(features, site)`` of a LayerFactory): a
backbone names every place it could mask (``SITES``) and the placement (``MASK_PLACEMENTS``) picks:

- ``"inputs"``, the authors' ResNet: the input of every convolution inside a residual block (both
  convs and a projection shortcut's), the pooled features before the classifier, and an MLP's
  hidden activations (the input of every linear after the first). Every mask layer draws its own
  masks, one after the other from one generator, as the authors' layers each draw theirs.
- ``"block_outputs"``, this library's earlier placement: each residual block's output (the residual
  stream), the MLP's hidden activations, and the classifier's input where a norm comes between it
  and the last block (Wide ResNet). Layers of the same width share their masks (each draw starts
  from the seed again), so a member keeps the same channels of the residual stream.

The draws come from a ``torch.Generator`` seeded from ``seed`` (a run's seed: Masksembles passes
``torch.initial_seed()``, which ``seed_everything`` sets), so the masks are a function of the
network, M, s and the seed: a study's seeds draw different masks, the same seed the same. The seed
is offset (``MASK_STREAM``) so the masks do not reuse the random numbers of the weights' init,
drawn from the global generator seeded with the same seed. The masks are a buffer, saved in
checkpoints. The kept features are not rescaled (no dropout-like 1/keep factor), as in the
authors' code: the masks are the same in training and at test.
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
#: added to the seed of the masks' generator: a stream apart from the weights' init (same run seed)
MASK_STREAM = 0x6D61736B
#: every place a backbone offers for masks: an MLP's hidden activation, the input of a conv inside a
#: residual block, a residual block's output, the pooled features before the classifier
SITES = ("hidden", "conv_input", "block_output", "classifier_input")
#: the sites each placement masks (see the module docstring)
MASK_PLACEMENTS = {
    "inputs": frozenset({"hidden", "conv_input", "classifier_input"}),
    "block_outputs": frozenset({"hidden", "block_output", "classifier_input"}),
}


def check_mask_placement(placement: str, option: str = "mask_placement") -> None:
    """Raise a ConfigError unless ``placement`` is one of MASK_PLACEMENTS."""
    if placement not in MASK_PLACEMENTS:
        raise ConfigError(f"{option} {placement!r} is not known; allowed: {', '.join(MASK_PLACEMENTS)}")


def check_mask_seed(seed: int | None, option: str = "mask_seed") -> None:
    """Raise a ConfigError unless ``seed`` is None or an integer >= 0."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"{option} must be an integer >= 0, or null for the run's seed, got {seed!r}")


def mask_generator(seed: int) -> torch.Generator:
    """The generator masks are drawn from for ``seed``: seeded with seed + MASK_STREAM (mod 2^64)."""
    return torch.Generator().manual_seed((seed + MASK_STREAM) % 2**64)


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


def generate_masks(
    num_features: int, num_members: int, scale: float, seed: int = 0, generator: torch.Generator | None = None
) -> Tensor:
    """The M masks (M, F) bool over F features, drawn from ``generator`` (by default a fresh
    ``mask_generator(seed)``); see the module docstring.

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
    generator = mask_generator(seed) if generator is None else generator
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

    def __init__(
        self, num_features: int, num_members: int, scale: float, seed: int = 0, generator: torch.Generator | None = None
    ) -> None:
        """
        Args:
            num_features: F, features of a row (channels of a (C, H, W) map), >= 10.
            num_members: number of members M (and masks).
            scale: the paper's s in [1, 6]: masks keep about F / (s (1 - (1 - 1/s)^M)) features each
                and overlap in about 1/s of them; 1 makes every mask all ones.
            seed: the masks are drawn from ``mask_generator(seed)`` (when no ``generator`` is given).
            generator: draw the masks from this generator instead (it advances: the next layer drawing
                from it gets other masks).
        """
        super().__init__()
        self.num_features, self.num_members, self.scale = num_features, num_members, scale
        masks = generate_masks(num_features, num_members, scale, seed, generator)  # (M, F) bool
        self.register_buffer("masks", masks)

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


class MaskSites:
    """A LayerFactory's ``member_masks(features, site)`` for Masksembles: MemberMasks where the
    placement masks ``site``, nn.Identity elsewhere (no module in the state_dict); see the module docstring."""

    def __init__(self, num_members: int, scale: float, placement: str = "inputs", seed: int = 0) -> None:
        """
        Args:
            num_members: number of members M (and masks per layer).
            scale: the paper's s in [1, 6].
            placement: a key of MASK_PLACEMENTS: "inputs" (the authors') or "block_outputs".
            seed: the masks' seed (a run's: ``torch.initial_seed()`` after ``seed_everything``).
        """
        check_num_members(num_members)
        check_scale(scale)
        check_mask_placement(placement)
        check_mask_seed(seed, "seed")
        self.num_members, self.scale, self.placement, self.seed = num_members, scale, placement, seed
        # "inputs": one generator for the whole network, so every mask layer gets its own draw
        self._generator = mask_generator(seed) if placement == "inputs" else None

    def __call__(self, num_features: int, site: str) -> nn.Module:
        """Masks over ``num_features`` features at ``site`` (one of SITES), or nn.Identity."""
        if site not in SITES:
            raise ValueError(f"unknown mask site {site!r}; allowed: {', '.join(SITES)}")
        if site not in MASK_PLACEMENTS[self.placement]:
            return nn.Identity()
        return MemberMasks(num_features, self.num_members, self.scale, self.seed, self._generator)
