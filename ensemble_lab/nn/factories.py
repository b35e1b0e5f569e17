"""Layer factories: how each method builds the layers of a backbone.

A backbone is written once against a LayerFactory; the factory decides whether a "linear" is a
plain nn.Linear (single model, MC Dropout), a rank-1 BatchLinear (BatchEnsemble) or M independent
EnsembleLinear weights (Deep Ensemble). Every layer consumes member-major rows (M*B, ...).
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from torch import nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.batch_conv import BatchConv2d
from ensemble_lab.nn.batch_linear import BatchLinear
from ensemble_lab.nn.dropout import AlwaysOnDropout, AlwaysOnDropout2d
from ensemble_lab.nn.ensemble_conv import (
    ChannelsToMembers,
    EnsembleBatchNorm2d,
    EnsembleConv2d,
    MembersToChannels,
)
from ensemble_lab.nn.ensemble_linear import EnsembleLinear
from ensemble_lab.nn.fast_weights import FastWeights
from ensemble_lab.nn.grouped_linear import GroupedLinear
from ensemble_lab.nn.low_rank import LowRankConv2d, LowRankLinear, check_low_rank_options
from ensemble_lab.nn.masks import MaskSites
from ensemble_lab.nn.members import check_num_members
from ensemble_lab.nn.tokens import EnsembleLayerNorm, EnsembleTokenEmbedding, TokenEmbedding

#: BatchEnsemble's norm layers: one for all members, or one per member
NORMS = ("shared", "per_member")
#: BatchEnsemble's output layer: fast weights like every other layer, or M independent heads (TabM's)
HEADS = ("fast_weights", "independent")


@dataclass(frozen=True)
class LayerFactory:
    """The layer constructors one method uses; see the module docstring."""

    num_members: int
    linear: Callable[..., nn.Module]  # linear(in_features, out_features, bias=True)
    conv2d: Callable[..., nn.Module]  # conv2d(in_ch, out_ch, kernel_size, stride=1, padding=0, bias=False)
    norm2d: Callable[[int], nn.Module]  # norm2d(channels)
    dropout: Callable[[float], nn.Module] = nn.Dropout
    dropout2d: Callable[[float], nn.Module] = nn.Dropout2d
    #: conv backbones put enter_maps() before their first conv and leave_maps() after their last norm:
    #: the layout conv2d / norm2d layers pass between them (identity: member-major rows throughout)
    enter_maps: Callable[[], nn.Module] = nn.Identity
    leave_maps: Callable[[], nn.Module] = nn.Identity
    #: member_masks(features, site): Masksembles' fixed member masks over a layer's features (channels),
    #: on member-major rows, at one of the places a backbone offers (nn.masks.SITES); identity by default
    #: (backbones add no module for it: state_dict keys unchanged)
    member_masks: Callable[[int, str], nn.Module] = nn.Identity
    #: the layer that reads the network's input (a conv backbone's stem, right after enter_maps; the MLP's
    #: first linear), as conv2d / linear take them; left out: conv2d / linear. Packed-Ensembles' runs once on
    #: the untiled batch (B, ...), so its network takes the images as they come.
    input_conv2d: Callable[..., nn.Module] = None  # type: ignore[assignment]  # None: set in __post_init__
    input_linear: Callable[..., nn.Module] = None  # type: ignore[assignment]
    #: the network's output layer (the MLP's after its hidden layers, a ViT's head, a timm model's classifier), as
    #: linear takes it; left out: linear
    head_linear: Callable[..., nn.Module] = None  # type: ignore[assignment]
    #: the first conv of a ResNet-18 basic block; left out: conv2d (Packed-Ensembles keeps its members dense there)
    block_entry_conv2d: Callable[..., nn.Module] = None  # type: ignore[assignment]
    #: layer_norm(features, eps=...): a transformer's LayerNorm over the last dim of (M*B, T, D) tokens; one for
    #: every member by default, EnsembleLayerNorm (each member its own affine) where members own their norms
    layer_norm: Callable[..., nn.Module] = nn.LayerNorm
    #: token_embedding(num_patches, dim, class_token): a ViT's class token and position embedding; shared by
    #: default, EnsembleTokenEmbedding (one per member) for methods whose members share no parameter
    token_embedding: Callable[..., nn.Module] = TokenEmbedding
    #: a transformer's attention projections (qkv and output), as ``linear`` takes them; left out: ``linear``
    #: (LowRank's ``adapters attention`` puts its factors on this role and ``head_linear`` only)
    attention_linear: Callable[..., nn.Module] = None  # type: ignore[assignment]
    #: how a network built elsewhere (a timm model) becomes this method's: "layers" (each nn.Linear, nn.Conv2d,
    #: norm and dropout replaced by this factory's, weights copied), "stacked" (M independent copies, their
    #: parameters stacked and run as one vectorised call), None (the method shapes the network itself: refused)
    conversion: str | None = None

    def __post_init__(self) -> None:
        roles = (
            ("input_conv2d", self.conv2d),
            ("input_linear", self.linear),
            ("head_linear", self.linear),
            ("block_entry_conv2d", self.conv2d),
            ("attention_linear", self.linear),
        )
        for role, default in roles:
            if getattr(self, role) is None:
                object.__setattr__(self, role, default)  # frozen: the roles a method leaves out are its plain layers


def plain_layers(num_members: int = 1, mc_dropout: bool = False) -> LayerFactory:
    """Ordinary torch layers; with ``mc_dropout`` the dropout layers stay on at test time."""
    check_num_members(num_members)
    return LayerFactory(
        num_members=num_members,
        linear=nn.Linear,
        conv2d=nn.Conv2d,
        norm2d=nn.BatchNorm2d,
        dropout=AlwaysOnDropout if mc_dropout else nn.Dropout,
        dropout2d=AlwaysOnDropout2d if mc_dropout else nn.Dropout2d,
        conversion="layers",
    )


def batch_ensemble_layers(
    num_members: int,
    fast_weights: FastWeights | None = None,
    perturbation: str = "channel",
    norm: str = "shared",
    head: str = "fast_weights",
    **fast_weight_options: Any,
) -> LayerFactory:
    """BatchLinear / BatchConv2d with a shared weight; the layer reading the input gets ``first_layer`` fast weights.

    Args:
        num_members: number of members M.
        fast_weights: the fast weights' rank, init and training; or give FastWeights' fields by
            keyword (``fast_weight_init=...``, ``fast_weight_std=...``, ``rank=...``).
        perturbation: BatchConv2d's "channel" or "kernel" fast weights (linear layers are channel-wise).
        norm: "shared" (one BatchNorm2d / LayerNorm for all members' rows) or "per_member" (each member its own
            statistics and affine: EnsembleBatchNorm2d; a ViT's LayerNorms: EnsembleLayerNorm, its own affine).
        head: the MLP's output layer: "fast_weights" (a BatchLinear like the others) or "independent" (M
            independent weights and biases, EnsembleLinear: TabM's k prediction heads).
    """
    if fast_weights is None:
        renamed = {key.removeprefix("fast_weight_"): value for key, value in fast_weight_options.items()}
        fast_weights = FastWeights(**renamed)
    elif fast_weight_options:
        raise TypeError(f"give fast_weights or its fields by keyword, not both: {sorted(fast_weight_options)}")
    if norm not in NORMS:
        raise ConfigError(f"--model.norm {norm!r} is not known; allowed: {', '.join(NORMS)}")
    if head not in HEADS:
        raise ConfigError(f"--model.head {head!r} is not known; allowed: {', '.join(HEADS)}")
    first = replace(fast_weights, first_layer=True)
    linear = partial(BatchLinear, num_members=num_members, fast_weights=fast_weights)
    conv2d = partial(BatchConv2d, num_members=num_members, perturbation=perturbation)
    return LayerFactory(
        num_members=num_members,
        linear=linear,
        conv2d=partial(conv2d, fast_weights=fast_weights),
        norm2d=nn.BatchNorm2d if norm == "shared" else partial(EnsembleBatchNorm2d, num_members=num_members),
        input_conv2d=partial(conv2d, fast_weights=first),
        input_linear=partial(BatchLinear, num_members=num_members, fast_weights=first),
        head_linear=linear if head == "fast_weights" else partial(EnsembleLinear, num_members=num_members),
        layer_norm=nn.LayerNorm if norm == "shared" else partial(EnsembleLayerNorm, num_members=num_members),
        conversion="layers",
    )


def deep_ensemble_layers(num_members: int) -> LayerFactory:
    """M independent weights (and BatchNorm statistics) per layer, evaluated in one op.

    Between a conv backbone's enter_maps and leave_maps, feature maps stay channel-stacked,
    (B, M*C, H, W), the layout the grouped convolution and the batch norm work in: two copies per
    network instead of two per conv and two per norm. Linear layers take member-major rows. A ViT's
    LayerNorms, class tokens and position embeddings are the members' own too.
    """
    return LayerFactory(
        num_members=num_members,
        linear=partial(EnsembleLinear, num_members=num_members),
        conv2d=partial(EnsembleConv2d, num_members=num_members, channel_stacked=True),
        norm2d=partial(EnsembleBatchNorm2d, num_members=num_members, channel_stacked=True),
        enter_maps=partial(MembersToChannels, num_members),
        leave_maps=partial(ChannelsToMembers, num_members),
        layer_norm=partial(EnsembleLayerNorm, num_members=num_members),
        token_embedding=partial(EnsembleTokenEmbedding, num_members=num_members),
        conversion="stacked",
    )


#: where LowRank puts its factors: every linear and conv, or a transformer's attention projections (and classifier)
ADAPTERS = ("all", "attention")


def low_rank_layers(
    num_members: int, rank: int = 1, factor_init: str = "zero", lora_alpha: float | None = None, adapters: str = "all"
) -> LayerFactory:
    """LowRankLinear / LowRankConv2d: a shared weight plus a rank-``rank`` update c·A_i B_i per member.

    Args:
        num_members: number of members M.
        rank: k >= 1, the rank of every member's update.
        factor_init: "zero" (A = 0, members identical at the start, as LoRA) or "small" (A slightly random).
        lora_alpha: LoRA's α: the update is scaled by c = α / k; None: c = 1.
        adapters: "all" (every linear and conv) or "attention" (LoRA-Ensemble: attention's qkv and output
            projections and the classifier; every other layer a plain one shared by the members).

    BatchNorm and a ViT's LayerNorms, class token and position embedding are shared by the members' rows,
    like batch_ensemble_layers' default.
    """
    check_num_members(num_members)
    check_low_rank_options(rank, factor_init, lora_alpha)
    if adapters not in ADAPTERS:
        raise ConfigError(f"--model.adapters {adapters!r} is not known; allowed: {', '.join(ADAPTERS)}")
    options: dict[str, Any] = dict(num_members=num_members, rank=rank, factor_init=factor_init, lora_alpha=lora_alpha)
    member_linear = partial(LowRankLinear, **options)
    everywhere = adapters == "all"
    return LayerFactory(
        num_members=num_members,
        linear=member_linear if everywhere else nn.Linear,
        conv2d=partial(LowRankConv2d, **options) if everywhere else nn.Conv2d,
        norm2d=nn.BatchNorm2d,
        attention_linear=member_linear,
        head_linear=member_linear,
        conversion="layers",
    )


#: the authors' floor on the channels a group of a Packed-Ensembles conv reads (γ is lowered below it)
MIN_CHANNELS_PER_GROUP = 64


def packed_conv_groups(in_channels: int, out_channels: int, gamma: int, min_channels_per_group: int) -> int:
    """Groups inside a member of a Packed-Ensembles conv: γ, lowered one at a time (as the authors' layers do)
    while the member's channels do not split into that many groups or a group would read fewer than
    ``min_channels_per_group`` of them; 1 at least."""
    groups = gamma
    while groups > 1 and (in_channels % groups or out_channels % groups or in_channels // groups < min_channels_per_group):
        groups -= 1
    return groups


def _linear_groups(out_features: int, gamma: int, num_classes: int | None) -> int:
    """Packed-Ensembles' groups per member of a hidden linear: γ, but one for the classifier (it writes num_classes)."""
    return 1 if out_features == num_classes else gamma


def _packed_conv2d(
    in_channels: int, out_channels: int, kernel_size: Any, *, num_members: int, gamma: int, min_channels: int, **options: Any
) -> EnsembleConv2d:
    groups = packed_conv_groups(in_channels, out_channels, gamma, min_channels)
    return EnsembleConv2d(in_channels, out_channels, kernel_size, num_members, channel_stacked=True, groups=groups, **options)


def _packed_linear(
    in_features: int, out_features: int, bias: bool = True, *, num_members: int, gamma: int, num_classes: int | None
) -> EnsembleLinear:
    groups = _linear_groups(out_features, gamma, num_classes)
    return EnsembleLinear(in_features, out_features, num_members, bias=bias, groups=groups)


def _member_conv2d(in_channels: int, out_channels: int, kernel_size: Any, *, gamma: int, min_channels: int, **options: Any) -> nn.Conv2d:
    groups = packed_conv_groups(in_channels, out_channels, gamma, min_channels)
    return nn.Conv2d(in_channels, out_channels, kernel_size, groups=groups, **options)


def _member_linear(in_features: int, out_features: int, bias: bool = True, *, gamma: int, num_classes: int | None) -> nn.Module:
    groups = _linear_groups(out_features, gamma, num_classes)
    return nn.Linear(in_features, out_features, bias=bias) if groups == 1 else GroupedLinear(in_features, out_features, groups, bias=bias)


def _check_packed_options(gamma: int, min_channels_per_group: int) -> None:
    if not isinstance(gamma, int) or isinstance(gamma, bool) or gamma < 1:
        raise ConfigError(f"gamma must be an integer >= 1, got {gamma!r}")
    if not isinstance(min_channels_per_group, int) or isinstance(min_channels_per_group, bool) or min_channels_per_group < 0:
        raise ConfigError(f"min_channels_per_group must be an integer >= 0, got {min_channels_per_group!r}")


def packed_member_layers(
    gamma: int,
    *,
    num_classes: int | None = None,
    min_channels_per_group: int = MIN_CHANNELS_PER_GROUP,
    group_block_entry: bool = False,
) -> LayerFactory:
    """One member of ``packed_layers(M, gamma, ...)`` as plain layers: nn.Conv2d(groups=...) and a block-diagonal
    GroupedLinear where the ensemble's layers group a member, nn.Linear / nn.Conv2d where they keep it dense."""
    _check_packed_options(gamma, min_channels_per_group)
    conv2d = partial(_member_conv2d, gamma=gamma, min_channels=min_channels_per_group)
    return LayerFactory(
        num_members=1,
        linear=partial(_member_linear, gamma=gamma, num_classes=num_classes),
        conv2d=conv2d,
        norm2d=nn.BatchNorm2d,
        input_conv2d=nn.Conv2d,
        input_linear=nn.Linear,
        block_entry_conv2d=conv2d if group_block_entry else nn.Conv2d,
    )


def packed_layers(
    num_members: int,
    gamma: int = 1,
    *,
    num_classes: int | None = None,
    min_channels_per_group: int = MIN_CHANNELS_PER_GROUP,
    group_block_entry: bool = False,
) -> LayerFactory:
    """Packed-Ensembles layers (Laurent et al., 2023) as the authors build them: the Deep Ensemble's grouped
    layers (M members, channel-stacked maps) with γ groups inside each member.

    * The layer reading the input (a conv stem, the MLP's first linear) is one dense layer on the untiled
      batch: M·w filters over the same images, member m's w in their own slice of the output.
    * Every other conv splits each member into :func:`packed_conv_groups` groups: γ, lowered where a group
      would read fewer than ``min_channels_per_group`` channels (64: the authors' floor; 0: never
      lowered); ResNet-18's block-entry convs keep their members dense unless ``group_block_entry``.
    * Hidden linears split each member into γ blocks; the classifier (writing ``num_classes``) keeps one.
    * A ViT's LayerNorms (over a member's whole D features), class token and position embedding are each
      member's own: members stay independent networks.

    The member width α·w/M is the backbone's (PackedEnsemble scales its options). Members stay
    independent: with γ = 1 every layer is the Deep Ensemble's, the first one run on the shared batch.
    """
    _check_packed_options(gamma, min_channels_per_group)
    check_num_members(num_members)
    conv2d = partial(_packed_conv2d, num_members=num_members, gamma=gamma, min_channels=min_channels_per_group)
    dense = partial(EnsembleConv2d, num_members=num_members, channel_stacked=True)
    return LayerFactory(
        num_members=num_members,
        linear=partial(_packed_linear, num_members=num_members, gamma=gamma, num_classes=num_classes),
        conv2d=conv2d,
        norm2d=partial(EnsembleBatchNorm2d, num_members=num_members, channel_stacked=True),
        enter_maps=nn.Identity,  # the stem reads the untiled batch and writes channel-stacked maps itself
        leave_maps=partial(ChannelsToMembers, num_members),
        input_conv2d=partial(dense, shared_input=True),
        input_linear=partial(EnsembleLinear, num_members=num_members, shared_input=True),
        block_entry_conv2d=conv2d if group_block_entry else dense,
        layer_norm=partial(EnsembleLayerNorm, num_members=num_members),
        token_embedding=partial(EnsembleTokenEmbedding, num_members=num_members),
    )


def masksembles_layers(num_members: int, scale: float = 2.0, placement: str = "inputs", seed: int = 0) -> LayerFactory:
    """Plain layers shared by every member, plus MemberMasks (M fixed binary masks of scale s) where
    ``placement`` puts them (Masksembles, Durasov et al. 2021; see nn.masks), drawn from ``seed``;
    dropout stays ordinary dropout. A ViT masks its tokens' features (each token a row), its LayerNorms shared."""
    return LayerFactory(
        num_members=num_members,
        linear=nn.Linear,
        conv2d=nn.Conv2d,
        norm2d=nn.BatchNorm2d,
        member_masks=MaskSites(num_members, scale, placement, seed),
    )
