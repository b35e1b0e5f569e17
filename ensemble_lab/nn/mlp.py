"""Multi-layer perceptron backbone, built from a LayerFactory."""

import math
from collections.abc import Sequence

from torch import nn

from ensemble_lab.nn.factories import LayerFactory


def mlp(
    layers: LayerFactory,
    input_shape: Sequence[int],
    num_classes: int,
    hidden_sizes: Sequence[int] = (64, 32, 16),
    dropout: float = 0.0,
) -> nn.Sequential:
    """Flatten -> [linear -> ReLU -> dropout] per hidden size -> linear to ``num_classes``.

    Args:
        layers: the method's layer factory.
        input_shape: shape of one input, e.g. (1, 28, 28).
        num_classes: number of output logits.
        hidden_sizes: width of each hidden layer (PAPER.md's MNIST study: 64, 32, 16).
        dropout: dropout probability after each hidden activation; 0 builds no dropout layers.
    """
    blocks: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for hidden in hidden_sizes:
        blocks += [layers.linear(width, hidden), nn.ReLU()]
        if dropout > 0:
            blocks.append(layers.dropout(dropout))
        width = hidden
    blocks.append(layers.linear(width, num_classes))
    return nn.Sequential(*blocks)
