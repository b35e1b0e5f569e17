"""Low-rank ensemble (the LoRA-Ensemble family): members share W and each adds a rank-k update, W_i = W + A_i B_i.

The additive counterpart of BatchEnsemble's multiplicative W ∘ s_i r_iᵀ. Every linear and conv
layer of the backbone is a LowRankLinear / LowRankConv2d; BatchNorm is shared by the members.
"""

import warnings

from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.nn import LayerFactory, low_rank_layers
from ensemble_lab.nn.low_rank import LowRankLayer, check_low_rank_options


class LowRankEnsemble(EnsembleModule):
    """M members from one shared network, member i's weights W + A_i B_i in every layer."""

    def __init__(self, rank: int = 1, factor_init: str = "zero", **kwargs) -> None:
        """
        Args:
            rank: k >= 1: member i's weight in every layer is W + A_i B_i with A_i (out, k) and B_i
                (k, in) (a convolution's in: input channels × kernel positions). Above a layer's
                min(out, in) the extra rank adds parameters but no expressiveness (a warning says so).
            factor_init: LoRA's init, B_i drawn as a linear layer's weight and A_i (next to the
                output) "zero" (every member starts as the shared network; the random B_i make their
                updates differ from the first step) or "small" (A_i ~ N(0, 0.01²/k): A_i B_i starts at
                about 1% of W's scale, so the members differ slightly from the start).
        """
        check_low_rank_options(rank, factor_init)
        self.rank, self.factor_init = rank, factor_init
        super().__init__(**kwargs)
        self._warn_rank_above_layer_sizes()

    def layer_factory(self) -> LayerFactory:
        return low_rank_layers(self.num_members, rank=self.rank, factor_init=self.factor_init)

    def _warn_rank_above_layer_sizes(self) -> None:
        """One warning when the rank exceeds min(out, in) of any layer: A_i B_i cannot use it there."""
        capped = [
            f"{name} ({min(layer.weight.shape[0], layer.in_flat)})"
            for name, layer in self.network.named_modules()
            if isinstance(layer, LowRankLayer) and self.rank > min(layer.weight.shape[0], layer.in_flat)
        ]
        if capped:
            warnings.warn(
                f"--model.rank {self.rank} is above min(out, in) of {len(capped)} layer(s), where the update has "
                f"at most that rank: {', '.join(capped[:3])}{', ...' if len(capped) > 3 else ''}",
                stacklevel=2,
            )
