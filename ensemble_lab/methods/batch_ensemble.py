"""BatchEnsemble: members share W and differ by rank-1 fast weights r_i, s_i (Wen et al., 2020)."""

import math
from typing import Any

import torch

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.nn import LayerFactory, batch_ensemble_layers


class BatchEnsemble(EnsembleModule):
    """M members from one shared network; the batch is tiled M times in training and at test."""

    def __init__(
        self,
        fast_weight_init: str = "normal",
        fast_weight_std: float = 0.5,
        fast_weight_lr_scale: float = 0.5,
        fast_weight_decay: bool = False,
        **kwargs,
    ) -> None:
        """
        Args:
            fast_weight_init: "normal" (r, s ~ N(1, fast_weight_std), the paper's) or "random_sign" (±1, the original BatchEnsemble paper's).
            fast_weight_std: standard deviation of the "normal" fast-weight init.
            fast_weight_lr_scale: learning rate of r and s relative to the optimizer's (0.5 in the authors' code).
            fast_weight_decay: apply the optimizer's weight decay to r and s too (off in the authors' code).
        """
        self.fast_weight_init, self.fast_weight_std = fast_weight_init, fast_weight_std
        self.fast_weight_lr_scale, self.fast_weight_decay = fast_weight_lr_scale, fast_weight_decay
        super().__init__(**kwargs)

    def layer_factory(self) -> LayerFactory:
        return batch_ensemble_layers(self.num_members, self.fast_weight_init, self.fast_weight_std)

    def _is_fast_weight(self, name: str) -> bool:
        return name.endswith((".r", ".s"))

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Shared weights and per-member fast weights (r, s) as separate groups."""
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        fast = [p for n, p in named if self._is_fast_weight(n)]
        shared = [p for n, p in named if not self._is_fast_weight(n)]
        return [{"params": shared}, {"params": fast, "fast_weights": True}]

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        optimizer = config["optimizer"] if isinstance(config, dict) else config
        shared, fast = optimizer.param_groups  # the order of parameter_groups()
        # OneCycleLR, CyclicLR, ... set one absolute rate for every group when they are built
        if not math.isclose(fast["lr"], shared["lr"] * self.fast_weight_lr_scale, rel_tol=1e-6, abs_tol=1e-12):
            name = type(config["lr_scheduler"]["scheduler"]).__name__
            raise ConfigError(
                f"--model.lr_scheduler {name} sets the same learning rate for every parameter group, which undoes "
                f"--model.fast_weight_lr_scale {self.fast_weight_lr_scale} (r and s at a scaled rate). Pass "
                "--model.fast_weight_lr_scale 1.0, or use a scheduler that scales the optimizer's own rates "
                "(MultiStepLR, CosineAnnealingLR, LinearLR, ...)."
            )
        return config

    def adjust_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            if group.get("fast_weights"):
                group["lr"] = group["lr"] * self.fast_weight_lr_scale
                if not self.fast_weight_decay and "weight_decay" in group:
                    group["weight_decay"] = 0.0
