"""CIFAR-style ResNet-18 (the paper's CIFAR-10 recipe), built from a LayerFactory.

Every conv, norm, linear and dropout comes from the factory, so this one definition is the single
model, BatchEnsemble, Deep Ensemble and MC Dropout network. Input and output are member-major rows.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.backbone_options import BackboneOptions
from ensemble_lab.nn.factories import LayerFactory


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> ReLU [-> dropout2d] -> conv3x3 -> norm, plus shortcut, then ReLU.

    Member masks (``layers.member_masks``: Masksembles' channel masks; identity for the other methods)
    may act on each conv's input (site "conv_input": both convs and a projection shortcut's) and on
    the block's output (site "block_output", the residual stream the next block reads).
    """

    def __init__(self, layers: LayerFactory, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        """
        Args:
            layers: the method's layer factory.
            in_channels: channels entering the block.
            out_channels: channels leaving the block.
            stride: stride of the first conv (2 halves the resolution).
            dropout: Dropout2d probability after the first conv's norm; 0 builds none.
        """
        super().__init__()
        self.conv1_masks = layers.member_masks(in_channels, "conv_input")
        self.conv1 = layers.block_entry_conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = layers.norm2d(out_channels)
        self.dropout = layers.dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv2_masks = layers.member_masks(out_channels, "conv_input")
        self.conv2 = layers.conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = layers.norm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        self.shortcut_masks: nn.Module = nn.Identity()  # an identity shortcut is never masked
        if stride != 1 or in_channels != out_channels:  # identity no longer fits: project with 1x1 conv + norm
            self.shortcut_masks = layers.member_masks(in_channels, "conv_input")
            self.shortcut = nn.Sequential(
                layers.conv2d(in_channels, out_channels, 1, stride=stride, padding=0, bias=False),
                layers.norm2d(out_channels),
            )
        self.member_masks = layers.member_masks(out_channels, "block_output")

    def forward(self, x: Tensor) -> Tensor:
        out = self.dropout(F.relu(self.bn1(self.conv1(self.conv1_masks(x)))))
        out = self.bn2(self.conv2(self.conv2_masks(out)))
        return self.member_masks(F.relu(out + self.shortcut(self.shortcut_masks(x))))


class ResNet18(nn.Module):
    """Stem conv3x3 (stride 1, no max-pool) -> 4 stages of 2 BasicBlocks -> global avg pool -> linear.

    Masksembles (``layers.member_masks``) masks channels inside the blocks (see BasicBlock) and the
    pooled features before the linear (site "classifier_input"), except where the last block's
    output is masked already (the pool passes its masks on: a second layer would repeat them).
    The stem conv reads the image, never masked.
    """

    def __init__(self, layers: LayerFactory, in_channels: int, num_classes: int, width: int, dropout: float) -> None:
        """
        Args:
            layers: the method's layer factory.
            in_channels: channels of the input images.
            num_classes: number of output logits.
            width: channels of the first stage; stages use width * (1, 2, 4, 8).
            dropout: MC Dropout probability inside every block and before the linear; 0 builds none.
        """
        super().__init__()
        self.enter_maps = layers.enter_maps()  # the factory's feature-map layout (Deep Ensemble: channel-stacked)
        self.conv1 = layers.input_conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = layers.norm2d(width)
        blocks, channels = [], width
        for stage, mult in enumerate((1, 2, 4, 8)):
            stride = 1 if stage == 0 else 2
            for i in range(2):
                blocks.append(BasicBlock(layers, channels, width * mult, stride if i == 0 else 1, dropout))
                channels = width * mult
        self.blocks = nn.Sequential(*blocks)
        self.leave_maps = layers.leave_maps()  # back to member-major rows
        self.dropout = layers.dropout(dropout) if dropout > 0 else nn.Identity()
        masked = not isinstance(blocks[-1].member_masks, nn.Identity)
        self.head_masks = nn.Identity() if masked else layers.member_masks(channels, "classifier_input")
        self.linear = layers.linear(channels, num_classes, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, C, H, W) member-major rows -> (M*B, num_classes) logits."""
        out = self.blocks(F.relu(self.bn1(self.conv1(self.enter_maps(x)))))
        out = self.leave_maps(out)  # (M*B, 8*width, H/8, W/8)
        out = out.mean(dim=(2, 3))  # (M*B, 8*width): global average pool
        return self.linear(self.dropout(self.head_masks(out)))


def resnet18(
    layers: LayerFactory,
    input_shape: Sequence[int],
    num_classes: int,
    width: int = 64,
    dropout: float = 0.0,
) -> ResNet18:
    """CIFAR-style ResNet-18; 11,173,962 parameters with plain layers, width 64, 10 classes.

    Args:
        layers: the method's layer factory.
        input_shape: shape of one input (C, H, W); H and W are free thanks to the global pool.
        num_classes: number of output logits.
        width: channels of the first stage, >= 1 (64 in the paper).
        dropout: MC Dropout probability (Dropout2d in every block, Dropout before the linear); 0 builds none.
    """
    if len(input_shape) != 3:
        raise ConfigError(f"resnet18 needs input_shape (C, H, W), got {tuple(input_shape)}")
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ConfigError(f"width={width}: the first stage needs a positive integer number of channels")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    return ResNet18(layers, input_shape[0], num_classes, width, dropout)


def resnet18_resized(options: Mapping[str, Any], resize: Callable[[int, int], int], groups: int) -> dict[str, Any]:
    """``options`` with the first stage's width w replaced by resize(w, groups) (the stages have w, 2w, 4w, 8w)."""
    return {**options, "width": resize(options["width"], groups)}


class ResNet18Options(BackboneOptions):
    """The "resnet18" backbone: CIFAR-style ResNet-18 (stages of w, 2w, 4w, 8w channels)."""

    name = "resnet18"

    def __init__(self, width: int = 64) -> None:
        """
        Args:
            width: channels of the first stage, >= 1; 64 (the paper's).
        """
        self.width = width

    def build(self, layers: LayerFactory, input_shape: Sequence[int], num_classes: int, dropout: float = 0.0, **derived: Any) -> nn.Module:
        return resnet18(layers, input_shape, num_classes, width=self.width, dropout=dropout, **derived)

    def resized(self, resize: Callable[[int, int], int], groups: int) -> dict[str, Any]:
        return resnet18_resized(self.options(), resize, groups)

    def dimensions(self) -> dict[str, int]:
        return {"width": self.width}
