"""Packed-Ensembles (Laurent et al., ICLR 2023): M independent narrow members packed into grouped layers.

PE-(α, M, γ) widens every layer of the backbone by α, splits its channels into M members and each
member into γ groups: one grouped convolution / linear computes all members at once, and member m
only ever reads its own channels, so the members are independent networks by construction (as in a
Deep Ensemble, with no weight shared). Built as the authors' ResNet is (torch-uncertainty's
``packed_resnet``; see ``packed_layers``): the first layer is one dense conv (linear) that reads the
untiled batch once, α·w filters in all, member m taking its own slice; the classifier writes
M·classes logits, member m's from member m's features; in between, γ groups per member, lowered where a
group would read fewer than ``min_channels_per_group`` (64) channels, and none in a ResNet block's
first conv. Member m is thus the backbone at width α·w/M with those convs grouped: PE is built here
as the Deep Ensemble's layers on the backbone with its width options scaled by α/M.
"""

import math
from typing import Any

from torch import Tensor, nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.nn import (
    EnsembleLinear,
    LayerFactory,
    build_backbone,
    packed_layers,
    packed_member_layers,
    resized_options,
)
from ensemble_lab.nn.factories import MIN_CHANNELS_PER_GROUP


def check_alpha(alpha: float) -> None:
    """Raise a ConfigError unless ``alpha`` is a positive number."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0 or math.isinf(alpha):
        raise ConfigError(f"--model.alpha must be a positive number (the width factor α), got {alpha!r}")


def check_gamma(gamma: int) -> None:
    """Raise a ConfigError unless ``gamma`` is an integer >= 1."""
    if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
        raise ConfigError(f"--model.gamma must be an integer >= 1 (groups per member γ), got {gamma!r}")


def check_min_channels(min_channels_per_group: int) -> None:
    """Raise a ConfigError unless ``min_channels_per_group`` is an integer >= 0."""
    value = min_channels_per_group
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"--model.min_channels_per_group must be an integer >= 0 (64: the authors' floor; 0: never lower γ), got {value!r}"
        )


def member_width(width: int, alpha: float, num_members: int, multiple: int = 1) -> int:
    """α·width/M rounded half up to a multiple of ``multiple``, at least ``multiple``: one member's width."""
    return max(multiple, multiple * math.floor(alpha * width / (num_members * multiple) + 0.5))


def member_options(backbone: str, options: dict[str, Any], alpha: float, num_members: int, gamma: int) -> dict[str, Any]:
    """The backbone options of one member: every width scaled by α/M (see :func:`member_width`), as the
    backbone says where its widths are; with γ > 1 every channel count a grouped layer reads or writes
    divides by γ."""
    resize = lambda width, multiple: member_width(width, alpha, num_members, multiple)
    try:
        return resized_options(backbone, options, resize, gamma)
    except ConfigError as error:
        raise ConfigError(f"--model.gamma {gamma}: {error}") from error


class PackedEnsemble(EnsembleModule):
    """Packed-Ensembles: M independent members of width α·w/M in grouped layers, built as the authors' network.

    With α = 2 and M = 4 (γ = 1) the ensemble has about the single model's parameters (α²/M = 1 per
    hidden layer). The first layer runs once on the untiled batch (every member reads the same images),
    so ``network`` takes the batch as it comes, (B, ...), and returns member-major rows (M*B, C). The
    training loss is the mean cross-entropy over members and rows, as in the authors' code
    (torch-uncertainty). Weight cosine comes from the ensemble layers' ``member_gram`` (independent
    members: about 0).
    """

    tiles_training_batch = False  # its first layer reads the batch once, untiled: no member has rows of its own

    def __init__(
        self,
        alpha: float = 2.0,
        gamma: int = 1,
        min_channels_per_group: int = MIN_CHANNELS_PER_GROUP,
        group_block_entry: bool = False,
        **kwargs,
    ) -> None:
        """The other options are EnsembleModule's; ``num_members`` is M.

        Args:
            alpha: width factor α > 0: the packed network is α times as wide as the backbone, so each
                of the M members has α·w/M channels / units per layer (rounded to an integer >= 1);
                2 (with M = 4: members of half the width, about the single model's parameter count at γ = 1).
            gamma: groups per member γ >= 1 of the layers between the first and the classifier (M·γ
                groups in all), each cutting its parameters by the groups it gets; member widths are
                rounded to multiples of γ. Where a conv gets fewer, see min_channels_per_group and
                group_block_entry. 1: dense members (the default here, and the digits / MNIST MLPs'
                setting); configs/cifar10/packed.yaml builds PE-(2, 4, 2), the authors' ResNet-18 (8,175,784
                parameters at width 64).
            min_channels_per_group: a conv's γ is lowered, one at a time, while a group would read fewer
                than this many of the member's channels (or they do not split evenly): 64, the authors'
                default; 0 never lowers it. Linear layers keep γ.
            group_block_entry: also split the first conv of every ResNet-18 block into γ groups. False:
                one group per member there, as the authors' ResNet (a WRN's blocks are grouped
                throughout, as theirs). True with min_channels_per_group 0 is γ in every layer between
                the first and the classifier (5,611,688 parameters for PE-(2, 4, 2) at width 64).
        """
        check_alpha(alpha)
        check_gamma(gamma)
        check_min_channels(min_channels_per_group)
        if not isinstance(group_block_entry, bool):
            raise ConfigError(f"--model.group_block_entry must be true or false, got {group_block_entry!r}")
        self.alpha, self.gamma = float(alpha), gamma
        self.min_channels_per_group, self.group_block_entry = min_channels_per_group, group_block_entry
        super().__init__(**kwargs)

    def _grouping(self) -> dict[str, Any]:
        """What tells packed_layers how to group: the classes (the classifier keeps one group) and the options."""
        return dict(
            num_classes=self.hparams["num_classes"],
            min_channels_per_group=self.min_channels_per_group,
            group_block_entry=self.group_block_entry,
        )

    def layer_factory(self) -> LayerFactory:
        """Up to M·γ groups per layer; a dense first layer on the shared batch, one group per member in the classifier."""
        return packed_layers(self.num_members, self.gamma, **self._grouping())

    def member_layer_factory(self) -> LayerFactory:
        """One member's plain layers: nn.Conv2d(groups=...) and block-diagonal GroupedLinear where the ensemble groups."""
        return packed_member_layers(self.gamma, **self._grouping())

    def member_backbone_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Every width scaled by α/M: member m is the backbone at α·w/M (wide_resnet: its widening factor
        and its 16-channel stem, α·16 channels in all), its grouped convs as in the ensemble."""
        return member_options(self.backbone.name, options, self.alpha, self.num_members, self.gamma)

    def build_network(
        self, backbone: str, input_shape: tuple[int, ...], num_classes: int, dropout: float, options: dict[str, Any]
    ) -> nn.Module:
        """The backbone with widths scaled by α/M, from packed_layers: M members of width α·w/M."""
        options = self.member_backbone_options(options)
        network = build_backbone(backbone, self.layer_factory(), input_shape, num_classes, dropout=dropout, **options)
        if self.gamma > 1:
            check_grouping(network)
        return network

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, ...) -> member logits (M, B, C); the network's first layer reads the batch once, untiled."""
        logits = self.network(x)  # (M*B, C): member-major rows
        return logits.view(self.num_members, x.shape[0], -1)  # (M, B, C)


def check_grouping(network: nn.Module) -> None:
    """With γ > 1 every hidden linear must be grouped: only the first layer and the classifier keep one group per member.

    packed_layers tells the classifier by its size (writing num_classes); a hidden linear of that
    width would be left ungrouped, so it is refused. (Convs are told by their place in the backbone.)
    """
    linears = [(name, m) for name, m in network.named_modules() if isinstance(m, EnsembleLinear)]
    for name, module in linears[:-1]:  # the last is the classifier
        if module.groups == 1 and not module.shared_input:
            raise ConfigError(
                f"PackedEnsemble layer {name} ({module.in_features}->{module.out_features} per member) has the size of "
                "num_classes, so --model.gamma cannot group it; choose another width or alpha"
            )
