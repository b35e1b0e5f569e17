"""Packed-Ensembles (Laurent et al., ICLR 2023): M independent narrow members packed into grouped layers.

PE-(α, M, γ) widens every layer of the backbone by α, splits its channels into M members and each
member into γ groups: one grouped convolution / linear with M·γ groups computes all members at
once, and member m only ever reads its own channels, so the members are independent networks by
construction (as in a Deep Ensemble, with no weight shared). The first layer reads the full input
(one group per member) and the last writes M·classes logits, member m's classes from member m's
features. Member m of a layer is thus the single model's layer at width α·w/M (γ = 1), or that
layer grouped by γ: PE is built here as the Deep Ensemble layers (``packed_layers``) on the
backbone with its width options scaled by α/M.
"""

import math
from typing import Any

from torch import nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.nn import (
    EnsembleConv2d,
    EnsembleLinear,
    LayerFactory,
    build_backbone,
    packed_layers,
    packed_member_layers,
    resized_options,
)


def check_alpha(alpha: float) -> None:
    """Raise a ConfigError unless ``alpha`` is a positive number."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0 or math.isinf(alpha):
        raise ConfigError(f"--model.alpha must be a positive number (the width factor α), got {alpha!r}")


def check_gamma(gamma: int) -> None:
    """Raise a ConfigError unless ``gamma`` is an integer >= 1."""
    if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
        raise ConfigError(f"--model.gamma must be an integer >= 1 (groups per member γ), got {gamma!r}")


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
    """Packed-Ensembles: M independent members of width α·w/M in grouped layers (M·γ groups).

    Member m is the backbone at α/M of its width (γ = 1), or with γ groups in every layer between
    the first and the last; members share no weight. With α = 2 and M = 4 (γ = 1) the ensemble has
    about the single model's parameters (α²/M = 1 per hidden layer). The training loss is the mean
    cross-entropy over members and rows, as in the authors' code (torch-uncertainty). Weight cosine
    comes from the ensemble layers' ``member_gram`` (independent members: about 0).
    """

    def __init__(self, alpha: float = 2.0, gamma: int = 1, **kwargs) -> None:
        """The other options are EnsembleModule's; ``num_members`` is M.

        Args:
            alpha: width factor α > 0: the packed network is α times as wide as the backbone, so each
                of the M members has α·w/M channels / units per layer (rounded to an integer >= 1);
                2 (the paper's CIFAR setting, with M = 4: members of half the width, about the single
                model's parameter count at γ = 1).
            gamma: groups per member γ >= 1: every layer but the first (full input) and the
                classifier is a grouped conv / block-diagonal linear with γ groups inside each member
                (M·γ in all), cutting its parameters by γ; member widths are rounded to multiples
                of γ. 1: dense members (the default here, and the digits / MNIST MLPs' setting); the
                paper's common CIFAR-10 ResNet-18 setting is PE-(2, 4, 2), as configs/cifar10/packed.yaml.
        """
        check_alpha(alpha)
        check_gamma(gamma)
        self.alpha, self.gamma = float(alpha), gamma
        super().__init__(**kwargs)

    def layer_factory(self) -> LayerFactory:
        """M·γ groups per layer; one group per member in the first layer and the classifier (told by their sizes)."""
        return packed_layers(self.num_members, self.gamma, **edges(tuple(self.hparams["input_shape"]), self.hparams["num_classes"]))

    def member_layer_factory(self) -> LayerFactory:
        """One member's plain layers: nn.Conv2d(groups=γ) and block-diagonal GroupedLinear where the ensemble groups."""
        return packed_member_layers(self.gamma, **edges(tuple(self.hparams["input_shape"]), self.hparams["num_classes"]))

    def member_backbone_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Every width scaled by α/M: member m is the backbone at α·w/M (γ = 1), or that grouped by γ
        (wide_resnet scales its widening factor; its 16-channel stem stays 16 per member)."""
        return member_options(self.hparams["backbone"], options, self.alpha, self.num_members, self.gamma)

    def build_network(
        self, backbone: str, input_shape: tuple[int, ...], num_classes: int, dropout: float, options: dict[str, Any]
    ) -> nn.Module:
        """The backbone with widths scaled by α/M, from packed_layers: M members of width α·w/M."""
        options = self.member_backbone_options(options)
        network = build_backbone(backbone, self.layer_factory(), input_shape, num_classes, dropout=dropout, **options)
        if self.gamma > 1:
            check_grouping(network)
        return network


def edges(input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """What tells packed_layers which layers keep one group per member: the input's channels and features, the classes."""
    return dict(input_channels=input_shape[0], input_features=math.prod(input_shape), num_classes=num_classes)


def check_grouping(network: nn.Module) -> None:
    """With γ > 1 only the first layer and the classifier may have one group per member.

    packed_layers tells them apart by their sizes (reading the input, writing num_classes); a
    hidden width equal to one of those would be left ungrouped, so it is refused.
    """
    layers = [(name, m) for name, m in network.named_modules() if isinstance(m, (EnsembleConv2d, EnsembleLinear))]
    linears = [name for name, m in layers if isinstance(m, EnsembleLinear)]
    edges = {layers[0][0], linears[-1]}  # the first layer and the classifier
    for name, module in layers:
        if module.groups == 1 and name not in edges:
            sizes = (
                f"{module.in_channels}->{module.out_channels}"
                if isinstance(module, EnsembleConv2d)
                else f"{module.in_features}->{module.out_features}"
            )
            raise ConfigError(
                f"PackedEnsemble layer {name} ({sizes} per member) has the size of the input or of num_classes, so "
                "--model.gamma cannot group it; choose another width or alpha"
            )
