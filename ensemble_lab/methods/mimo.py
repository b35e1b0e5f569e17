"""MIMO: M subnetworks in one plain network, M inputs in and M outputs out (Havasi et al., ICLR 2021)."""

import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.methods.training_batch import TrainingBatch
from ensemble_lab.nn import LayerFactory, build_backbone, plain_layers


def check_input_repetition(value: float) -> None:
    """Raise a ConfigError unless ``value`` is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"--model.input_repetition must be a number in [0, 1], got {value!r}")


def check_batch_repetition(value: int) -> None:
    """Raise a ConfigError unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"--model.batch_repetition must be an integer >= 1, got {value!r}")


def mimo_indices(batch: int, num_members: int, input_repetition: float = 0.0, batch_repetition: int = 1, device: Any = None) -> Tensor:
    """Which image of a batch of ``batch`` each member sees in each training row: (M, N), N = batch·r.

    The authors' scheme (edward2 / uncertainty-baselines MIMO training step), drawn from torch's
    global RNG:

    1. the indices 0..B−1 are repeated r = ``batch_repetition`` times and shuffled: member 0's rows;
    2. the first K = ⌊N·(1 − ρ)⌋ rows are shuffled again, independently for every other member;
       the remaining N − K rows (a fraction ≈ ρ = ``input_repetition``) keep member 0's image, so in
       those rows every member sees the same image.

    Every member therefore sees each image exactly r times (a permutation of the repeated batch),
    and each row is shared by all members with probability (N − K) / N ≈ ρ. ρ = 0: every member's
    rows are an independent shuffle (a row may still match member 0's by chance, about r/N of them);
    ρ = 1: every row is shared, all members train on the same images in the same order.
    """
    rows = batch * batch_repetition
    member_0 = torch.arange(batch, device=device).repeat(batch_repetition)[torch.randperm(rows, device=device)]  # (N,)
    shuffled = math.floor(rows * (1.0 - input_repetition) + 1e-9)  # K; the epsilon absorbs 0.1 + 0.9 != 1.0
    order = torch.rand(num_members - 1, shuffled, device=device).argsort(dim=1)  # (M-1, K): a shuffle per member
    own = member_0[:shuffled][order]  # (M-1, K)
    shared = member_0[shuffled:].expand(num_members - 1, -1)  # (M-1, N-K): member 0's images
    return torch.cat([member_0.unsqueeze(0), torch.cat([own, shared], dim=1)])  # (M, N)


class MIMO(EnsembleModule):
    """M subnetworks in one ordinary network: member m reads input channels m·C..(m+1)·C − 1 and
    writes logits m·K..(m+1)·K − 1 (Havasi et al., "Training independent subnetworks for robust
    prediction", ICLR 2021).

    The backbone (any: "mlp" flattens the M stacked images, "resnet18" / "wide_resnet" take M·C input
    channels) is built from plain layers with input (M·C, H, W) and M·K outputs. In training every
    member gets its own images (see :func:`mimo_indices`) and is trained on their labels; at test
    the image is repeated M times along the channels and the M heads are the members (one forward
    pass for the whole ensemble). Members share every weight except the input channels of the
    first layer and the output rows (and biases) of the last; the independence of the subnetworks
    is learned, not built in: every head reads all M inputs. The weight cosine is null (None): plain
    layers report no per-member parameters to compare.
    """

    tiles_training_batch = False  # its own training rows: --data.train_batch independent does not apply

    def __init__(self, input_repetition: float = 0.0, batch_repetition: int = 1, **kwargs) -> None:
        """The other options are EnsembleModule's; ``num_members`` is M, the number of subnetworks.

        Args:
            input_repetition: ρ in [0, 1]: the fraction of training rows in which every member sees
                member 0's image instead of its own; 0: independent inputs (the MIMO authors' CIFAR code;
                their ImageNet code uses 0.6); 1: every member sees the same images, so the members are
                the heads of one network (the peer library's shipped configs). Test rows always share the image.
            batch_repetition: r >= 1: each training batch of B images is repeated r times before the
                members' shuffles, so every member trains on B·r rows, each image r times; 1: none
                (the authors' code: 4 on CIFAR, 2 on ImageNet). Lower-variance gradients, r× the compute.
        """
        check_input_repetition(input_repetition)
        check_batch_repetition(batch_repetition)
        self.input_repetition, self.batch_repetition = float(input_repetition), batch_repetition
        super().__init__(**kwargs)

    def layer_factory(self) -> LayerFactory:
        return replace(plain_layers(), conversion=None)  # its first and last layers are reshaped: no timm model

    def build_network(
        self, backbone: str, input_shape: tuple[int, ...], num_classes: int, dropout: float, options: dict[str, Any]
    ) -> nn.Module:
        """The backbone on M images stacked along channels, (B, M·C, H, W) -> (B, M·K) logits."""
        m = self.num_members
        stacked = (m * input_shape[0], *input_shape[1:])  # (M·C, H, W)
        return build_backbone(backbone, self.layer_factory(), stacked, m * num_classes, dropout=dropout, **options)

    def _members_out(self, logits: Tensor) -> Tensor:
        """Network output (N, M·K) -> member logits (M, N, K)."""
        rows = logits.shape[0]
        return logits.view(rows, self.num_members, -1).permute(1, 0, 2)  # (N, M, K) -> (M, N, K)

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> member logits (M, B, K): every member sees the same image."""
        repeats = (1, self.num_members, *([1] * (x.dim() - 2)))
        stacked = x.repeat(*repeats)  # (B, M·C, H, W): channels m·C..(m+1)·C − 1 are member m's input
        return self._members_out(self.network(stacked))  # (B, M·K) -> (M, B, K)

    # ---- training: each member its own images ------------------------------------------------------
    def training_batch(self, x: Tensor, y: Tensor) -> TrainingBatch:
        """Images (B, C, H, W) -> member logits (M, N, K), N = B·r: member m's row j is image ``rows[m, j]``,
        drawn with input and batch repetition; labels (M, N) of the same images."""
        rows = mimo_indices(x.shape[0], self.num_members, self.input_repetition, self.batch_repetition, x.device)  # (M, N)
        per_member = x[rows]  # (M, N, C, H, W)
        count = per_member.shape[1]
        stacked = per_member.movedim(0, 1).reshape(count, -1, *x.shape[2:])  # (N, M, C, H, W) -> (N, M·C, H, W)
        return TrainingBatch(self._members_out(self.network(stacked)), y[rows], rows)  # (N, M·K) -> (M, N, K)
