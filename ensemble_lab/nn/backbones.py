"""Registry of backbone builders: name -> builder(layers, input_shape, num_classes, **options)."""

from collections.abc import Callable, Sequence

from torch import nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.factories import LayerFactory
from ensemble_lab.nn.mlp import mlp
from ensemble_lab.nn.resnet import resnet18


def _resnet18(layers: LayerFactory, input_shape: Sequence[int], num_classes: int, width: int, dropout: float, **_) -> nn.Module:
    return resnet18(layers, tuple(input_shape), num_classes, width=width, dropout=dropout)


def _mlp(layers: LayerFactory, input_shape: Sequence[int], num_classes: int, hidden_sizes: Sequence[int], dropout: float, **_) -> nn.Module:
    return mlp(layers, input_shape, num_classes, hidden_sizes=hidden_sizes, dropout=dropout)


BACKBONES: dict[str, Callable[..., nn.Module]] = {"mlp": _mlp, "resnet18": _resnet18}


def build_backbone(name: str, layers: LayerFactory, input_shape: Sequence[int], num_classes: int, **options) -> nn.Module:
    """Build backbone ``name`` with the method's layers; unknown names list the allowed ones."""
    if name not in BACKBONES:
        raise ConfigError(f"backbone={name!r} is not known; allowed: {', '.join(BACKBONES)}")
    return BACKBONES[name](layers, input_shape, num_classes, **options)
