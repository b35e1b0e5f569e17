"""Low-rank ensemble (the LoRA-Ensemble family): members share W and each adds a rank-k update, W_i = W + c·A_i B_i.

The additive counterpart of BatchEnsemble's multiplicative W ∘ s_i r_iᵀ. Every linear and conv
layer of the backbone is a LowRankLinear / LowRankConv2d; BatchNorm is shared by the members.
"""

import warnings
from typing import Any

from ensemble_lab.errors import CheckpointMismatchError, ConfigError
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.nn import LayerFactory, low_rank_layers
from ensemble_lab.nn.factories import ADAPTERS
from ensemble_lab.nn.low_rank import LowRankLayer, check_low_rank_options


class LowRankEnsemble(EnsembleModule):
    """M members from one shared network, member i's weights W + c·A_i B_i in every layer.

    By default this is not LoRA-Ensemble (Mühlematter et al., 2024) as published: the shared W trains
    from scratch together with the factors, and the update is not scaled (c = 1). LoRA-Ensemble
    freezes a pretrained W and scales the update by α / k; ``freeze_shared`` and ``lora_alpha`` give
    both, on a W this library initialises at random (no pretrained weights are loaded).
    """

    def __init__(
        self,
        rank: int = 1,
        factor_init: str = "zero",
        lora_alpha: float | None = None,
        freeze_shared: bool = False,
        adapters: str = "all",
        **kwargs,
    ) -> None:
        """
        Args:
            rank: k >= 1: member i's weight in every layer is W + c·A_i B_i with A_i (out, k) and B_i
                (k, in) (a convolution's in: input channels × kernel positions). Above a layer's
                min(out, in) the extra rank adds parameters but no expressiveness (a warning says so).
            factor_init: LoRA's init, B_i drawn as a linear layer's weight and A_i (next to the
                output) "zero" (every member starts as the shared network; the random B_i make their
                updates differ from the first step) or "small" (A_i ~ N(0, 0.01²/k): A_i B_i starts at
                about 1% of W's scale, so the members differ slightly from the start).
            lora_alpha: LoRA's α > 0: every update is scaled by c = α / k (LoRA-Ensemble's scaling;
                with the same α, a larger rank does not make the update larger). null (the default):
                c = 1, no scaling.
            freeze_shared: train only what is each member's own, as LoRA-Ensemble does: the factors A_i,
                B_i and the members' biases. The shared weights W and the shared BatchNorm's scale and
                shift keep their initial values (BatchNorm's running statistics still follow the
                batches). No pretrained W is loaded here, so a frozen W is a random one: each member is
                a fixed random network plus its learned rank-k corrections, which fits far less than
                training W (an ablation of LoRA-Ensemble's recipe, not the recipe). The parameter count
                is the same; only fewer tensors are in the optimizer.
            adapters: where the factors go: "all" (every linear and convolution) or "attention"
                (LoRA-Ensemble: the qkv and output projections of every attention layer, and the
                classifier so that each member has its own head; every other layer is one plain layer
                shared by the members). "attention" needs a backbone with attention: vit or a timm
                transformer.
        """
        check_low_rank_options(rank, factor_init, lora_alpha)
        if adapters not in ADAPTERS:
            raise ConfigError(f"--model.adapters {adapters!r} is not known; allowed: {', '.join(ADAPTERS)}")
        if not isinstance(freeze_shared, bool):
            raise ConfigError(f"--model.freeze_shared must be true or false, got {freeze_shared!r}")
        self.rank, self.factor_init, self.lora_alpha, self.adapters = rank, factor_init, lora_alpha, adapters
        super().__init__(**kwargs)
        if adapters == "attention" and sum(isinstance(m, LowRankLayer) for m in self.network.modules()) < 2:
            raise ConfigError(
                f"--model.adapters attention puts the factors on attention's projections, and the {self.backbone.name} backbone "
                "has none; pass --model.adapters all, or a backbone with attention (vit, a timm transformer)"
            )
        self.freeze_shared = freeze_shared
        if freeze_shared:
            self._freeze_shared_parameters()
        self._warn_rank_above_layer_sizes()

    def layer_factory(self) -> LayerFactory:
        return low_rank_layers(
            self.num_members, rank=self.rank, factor_init=self.factor_init, lora_alpha=self.lora_alpha, adapters=self.adapters
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the tensors' shapes do not show the scaling: W + c·A_i B_i under another c is another network
        theirs = (checkpoint.get("hyper_parameters") or {}).get("lora_alpha")  # older checkpoints: None, no scaling
        if theirs != self.lora_alpha:
            raise CheckpointMismatchError(
                f"the checkpoint was trained with --model.lora_alpha {'null' if theirs is None else theirs}, this run has "
                f"{'null' if self.lora_alpha is None else self.lora_alpha}; pass the checkpoint's (its run's config.yaml has it)"
            )
        super().on_load_checkpoint(checkpoint)

    def _freeze_shared_parameters(self) -> None:
        """requires_grad False on every network parameter that is no member's own (W, the norms' affine)."""
        own = {id(p) for layer in self.network.modules() if isinstance(layer, LowRankLayer) for p in layer.member_parameters()}
        for parameter in self.network.parameters():
            if id(parameter) not in own:
                parameter.requires_grad_(False)

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
