"""BatchEnsemble: members share W and differ by fast weights, W_i = W ∘ Σ_k s_ik r_ikᵀ (Wen et al., 2020)."""

import math
from typing import Any

import torch
from torch import Tensor

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.methods.training_batch import TrainingBatch
from ensemble_lab.nn import BatchConv2d, EnsembleBatchNorm2d, EnsembleLayerNorm, FastWeights, LayerFactory, batch_ensemble_layers

TRAIN_BATCHES = ("tile", "split")


class BatchEnsemble(EnsembleModule):
    """M members from one shared network. Every option's default is the paper's recipe.

    The training loss is the mean of the M members' losses (each the mean over its rows), as in the
    BatchEnsemble and TabM papers: a Deep Ensemble sums them instead. TabM (Gorishniy et al., ICLR 2025) is
    ``--model.fast_weight_init tabm --model.head independent`` on the MLP backbone with
    ``--data.train_batch independent`` (configs/tabular/tabm.yaml).
    """

    def __init__(
        self,
        rank: int = 1,
        perturbation: str = "channel",
        fast_weight_init: str = "normal",
        fast_weight_mean: float = 1.0,
        fast_weight_std: float = 0.5,
        unperturbed_first_member: bool = False,
        gradient_blocking: bool = False,
        train_batch: str = "tile",
        norm: str = "shared",
        fast_weight_lr_scale: float = 0.5,
        fast_weight_decay: bool = False,
        head: str = "fast_weights",
        **kwargs,
    ) -> None:
        """
        Args:
            rank: k >= 1: member i's weight is W ∘ (Σ_k s_ik r_ikᵀ); 1 is the paper's rank-1 s_i r_iᵀ.
            perturbation: convolutions' fast weights: "channel" (r over input channels, the paper's) or
                "kernel" (r over input channels × kernel positions). Linear layers are always channel-wise;
                "kernel" needs a backbone with convolutions.
            fast_weight_init: "normal" (r, s ~ N(fast_weight_mean, fast_weight_std), the paper's), "random_sign"
                (±1, the original BatchEnsemble paper's), "ones" (all members identical at the start: the
                degenerate control) or "tabm" (TabM's: only the first layer's r random, each entry ±1 with
                probability 1/2; that layer's s and every other r and s exactly 1; members' biases start
                equal). Above rank 1, s is divided by k.
            fast_weight_mean: mean of the "normal" init (1.0 in the authors' code; 0.0 as one summary of the paper says).
            fast_weight_std: standard deviation of the "normal" init.
            unperturbed_first_member: member 0 uses W itself (its r and s fixed at 1, never trained), as in the
                authors' MNIST code.
            gradient_blocking: members 1..M−1 see W detached, so the shared W learns from member 0 alone while
                the others train only their fast weights and biases (the authors' MNIST code). A shared
                BatchNorm still mixes the members' rows in its batch statistics.
            train_batch: "tile" (every member sees the whole batch, the paper's) or "split" (each member trains
                on its own B/M images of the batch, the original BatchEnsemble paper's way; --data.batch_size
                must divide by M, and a short last batch drops its last B mod M images). Test: always tiled.
            norm: "shared" (one BatchNorm for all members' rows, the paper's) or "per_member" (each member its
                own BatchNorm statistics and affine; a ViT: its own LayerNorm affine); "per_member" needs a backbone
                with norm layers.
            fast_weight_lr_scale: learning rate of r and s relative to the optimizer's (0.5 in the original BatchEnsemble
                recipe; 1.0 in the peer library's config, configs/cifar10/batch_ensemble_peer.yaml).
            fast_weight_decay: apply the optimizer's weight decay to r and s too (off in the original BatchEnsemble
                recipe; on in the peer library's config).
            head: the MLP's output layer: "fast_weights" (a BatchEnsemble layer like the others, the paper's) or
                "independent" (M independent linear heads, each member its own weight and bias: TabM's k
                prediction heads); "independent" needs the mlp backbone.
        """
        if train_batch not in TRAIN_BATCHES:
            raise ConfigError(f"--model.train_batch {train_batch!r} is not known; allowed: {', '.join(TRAIN_BATCHES)}")
        self.fast_weights = FastWeights(
            rank=rank,
            init=fast_weight_init,
            mean=fast_weight_mean,
            std=fast_weight_std,
            unperturbed_first_member=unperturbed_first_member,
            gradient_blocking=gradient_blocking,
        )
        self.perturbation, self.norm, self.train_batch, self.head = perturbation, norm, train_batch, head
        self.fast_weight_lr_scale, self.fast_weight_decay = fast_weight_lr_scale, fast_weight_decay
        super().__init__(**kwargs)
        self._refuse_options_without_layers()

    def layer_factory(self) -> LayerFactory:
        return batch_ensemble_layers(self.num_members, self.fast_weights, perturbation=self.perturbation, norm=self.norm, head=self.head)

    def _refuse_options_without_layers(self) -> None:
        backbone = self.backbone.name
        if self.head == "independent" and backbone != "mlp":
            raise ConfigError(f"--model.head independent applies to the mlp backbone's output layer, not {backbone}'s (drop it)")
        modules = list(self.network.modules())
        if self.perturbation == "kernel" and not any(isinstance(m, BatchConv2d) for m in modules):
            raise ConfigError(f"--model.perturbation kernel applies to convolutions; the {backbone} backbone has none (drop it)")
        if self.norm == "per_member" and not any(isinstance(m, EnsembleBatchNorm2d | EnsembleLayerNorm) for m in modules):
            raise ConfigError(f"--model.norm per_member applies to BatchNorm / LayerNorm layers; the {backbone} backbone has none (drop it)")

    # ---- training: tiled (the default) or split batches -------------------------------------------
    def _split_rows(self, batch: int) -> int:
        """Rows of a training batch that split evenly into M members' own images."""
        rows = batch - batch % self.num_members
        if rows == 0:
            raise ConfigError(
                f"--model.train_batch split: a training batch of {batch} images cannot give each of the "
                f"{self.num_members} members an image; pass a --data.batch_size divisible by {self.num_members}"
            )
        return rows

    def training_batch(self, x: Tensor, y: Tensor) -> TrainingBatch:
        """``train_batch tile``: every member on the whole batch. ``split``: member i on its own B/M images,
        the batch being member-major already (rows [i·B/M, (i+1)·B/M) are member i's)."""
        if self.train_batch == "tile":
            return super().training_batch(x, y)
        count = self._split_rows(x.shape[0])
        logits = self.network(x[:count]).view(self.num_members, count // self.num_members, -1)  # (B', C) -> (M, B'/M, C)
        rows = torch.arange(count, device=x.device).view(self.num_members, -1)  # (M, B'/M): member i's own images
        return TrainingBatch(logits, y[rows], rows)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        batch_size = getattr(getattr(self.trainer, "datamodule", None), "batch_size", None)
        if self.train_batch == "split" and isinstance(batch_size, int) and batch_size % self.num_members:
            raise ConfigError(
                f"--model.train_batch split gives each of the {self.num_members} members its own B/M images, but "
                f"--data.batch_size is {batch_size}; pass a batch size divisible by {self.num_members}"
            )

    # ---- optimisation: fast weights at their own learning rate ------------------------------------
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
