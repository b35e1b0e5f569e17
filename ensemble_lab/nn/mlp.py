"""Multi-layer perceptron backbone, built from a LayerFactory."""

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.backbone_options import BackboneOptions
from ensemble_lab.nn.factories import LayerFactory


def mlp(
    layers: LayerFactory,
    input_shape: Sequence[int],
    num_classes: int,
    hidden_sizes: Sequence[int] = (64, 32, 16),
    dropout: float = 0.0,
) -> nn.Sequential:
    """Flatten -> [linear -> ReLU -> member masks -> dropout] per hidden size -> linear to ``num_classes``.

    The output layer is ``layers.head_linear`` (``layers.linear`` unless the method gives its own, e.g.
    TabM's independent heads). Member masks (``layers.member_masks``, site "hidden": Masksembles) follow each hidden activation,
    where dropout goes: the input of every linear but the first, which reads the raw input (the
    authors' MNIST example masks there too, and both placements do). The default factory's identity
    adds no module, so other methods' layer indices (state_dict keys) stay as they were.

    Args:
        layers: the method's layer factory.
        input_shape: shape of one input, e.g. (1, 28, 28).
        num_classes: number of output logits.
        hidden_sizes: width of each hidden layer, each >= 1 (the paper's MNIST study: 64, 32, 16);
            none builds a linear model, with a warning.
        dropout: dropout probability after each hidden activation; 0 builds no dropout layers.
    """
    sizes = list(hidden_sizes)
    if not all(isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in sizes):
        raise ConfigError(f"hidden_sizes={sizes}: every hidden layer needs a positive integer number of units")
    if not sizes:
        warnings.warn("hidden_sizes=[] builds a linear model (no hidden layer)", stacklevel=2)
    blocks: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for i, hidden in enumerate(sizes):
        linear = layers.linear if i else layers.input_linear  # the first reads the (flattened) input
        blocks += [linear(width, hidden), nn.ReLU()]
        masks = layers.member_masks(hidden, "hidden")
        if not isinstance(masks, nn.Identity):
            blocks.append(masks)
        if dropout > 0:
            blocks.append(layers.dropout(dropout))
        width = hidden
    blocks.append((layers.head_linear if sizes else layers.input_linear)(width, num_classes))
    return nn.Sequential(*blocks)


def mlp_resized(options: Mapping[str, Any], resize: Callable[[int, int], int], groups: int) -> dict[str, Any]:
    """``options`` with every hidden size h replaced by resize(h, groups)."""
    return {**options, "hidden_sizes": [resize(h, groups) for h in options["hidden_sizes"]]}


class MLPOptions(BackboneOptions):
    """The "mlp" backbone: flatten, then fully connected hidden layers (images and tabular rows alike)."""

    name = "mlp"

    def __init__(self, hidden_sizes: Sequence[int] = (64, 32, 16)) -> None:
        """
        Args:
            hidden_sizes: width of each hidden layer, each >= 1 (the paper's MNIST study: 64, 32, 16); []
                builds a linear model (with a warning).
        """
        self.hidden_sizes = hidden_sizes

    def build(self, layers: LayerFactory, input_shape: Sequence[int], num_classes: int, dropout: float = 0.0, **derived: Any) -> nn.Module:
        return mlp(layers, input_shape, num_classes, hidden_sizes=self.hidden_sizes, dropout=dropout, **derived)

    def resized(self, resize: Callable[[int, int], int], groups: int) -> dict[str, Any]:
        return mlp_resized(self.options(), resize, groups)

    def dimensions(self) -> dict[str, int]:
        """depth: the hidden layers; width: the first one's size (a width sweep scales them all)."""
        return {"depth": len(self.hidden_sizes), "width": self.hidden_sizes[0]}
