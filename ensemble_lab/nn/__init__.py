"""Layers and backbones. Every layer consumes member-major rows (M*B, ...): BatchEnsemble (``batch_linear``,
``batch_conv``, ``fast_weights``), Deep / Packed ensemble (``ensemble_linear``, ``ensemble_conv``,
``grouped_linear``), ``low_rank``, Masksembles ``masks``, MC ``dropout``, transformer ``tokens`` and
``attention``; backbones (``mlp``, ``resnet``, ``wide_resnet``, ``vit``, ``timm_backbone`` with ``timm_surgery`` and ``stacked``, ``backbones``; each with its options object,
``backbone_options``) are built once from the layer ``factories``, so one definition serves every
method; ``members`` holds the member-row helpers."""

from ensemble_lab.nn.backbone_options import BackboneOptions
from ensemble_lab.nn.backbones import BACKBONES, backbone_from, build_backbone, resized_options
from ensemble_lab.nn.batch_conv import BatchConv2d
from ensemble_lab.nn.batch_linear import BatchLinear
from ensemble_lab.nn.dropout import AlwaysOnDropout, AlwaysOnDropout2d
from ensemble_lab.nn.ensemble_conv import EnsembleBatchNorm2d, EnsembleConv2d
from ensemble_lab.nn.ensemble_linear import EnsembleLinear
from ensemble_lab.nn.factories import (
    LayerFactory,
    batch_ensemble_layers,
    deep_ensemble_layers,
    low_rank_layers,
    masksembles_layers,
    packed_layers,
    packed_member_layers,
    plain_layers,
)
from ensemble_lab.nn.fast_weights import FastWeights
from ensemble_lab.nn.grouped_linear import GroupedLinear
from ensemble_lab.nn.low_rank import LowRankConv2d, LowRankLinear
from ensemble_lab.nn.masks import MemberMasks
from ensemble_lab.nn.members import rows_per_member, tile_members
from ensemble_lab.nn.mlp import MLPOptions, mlp
from ensemble_lab.nn.resnet import ResNet18Options
from ensemble_lab.nn.stacked import StackedMembers
from ensemble_lab.nn.timm_backbone import TimmOptions, weights_from_checkpoint
from ensemble_lab.nn.tokens import EnsembleLayerNorm, EnsembleTokenEmbedding, TokenEmbedding
from ensemble_lab.nn.vit import ViT, ViTOptions, vit
from ensemble_lab.nn.wide_resnet import WideResNetOptions

__all__ = [
    "BACKBONES",
    "BackboneOptions",
    "MLPOptions",
    "ResNet18Options",
    "StackedMembers",
    "TimmOptions",
    "ViTOptions",
    "WideResNetOptions",
    "backbone_from",
    "weights_from_checkpoint",
    "AlwaysOnDropout",
    "AlwaysOnDropout2d",
    "BatchConv2d",
    "BatchLinear",
    "EnsembleBatchNorm2d",
    "EnsembleConv2d",
    "EnsembleLayerNorm",
    "EnsembleLinear",
    "EnsembleTokenEmbedding",
    "FastWeights",
    "GroupedLinear",
    "LayerFactory",
    "LowRankConv2d",
    "LowRankLinear",
    "MemberMasks",
    "TokenEmbedding",
    "ViT",
    "batch_ensemble_layers",
    "build_backbone",
    "deep_ensemble_layers",
    "low_rank_layers",
    "masksembles_layers",
    "mlp",
    "packed_layers",
    "packed_member_layers",
    "plain_layers",
    "resized_options",
    "rows_per_member",
    "tile_members",
    "vit",
]
