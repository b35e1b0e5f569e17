"""CIFAR-style Wide ResNet WRN-depth-k (Zagoruyko & Komodakis, 2016), built from a LayerFactory.

WRN-28-10 (the default) is a common CIFAR network of efficient-ensemble benchmarks. Every conv,
norm, linear and dropout comes from the factory, so this one definition is the single model,
BatchEnsemble, Deep Ensemble and MC Dropout network. Input and output are member-major rows.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.backbone_options import BackboneOptions
from ensemble_lab.nn.factories import LayerFactory

#: channels of the stem convolution, whatever the widening factor (the stages have 16k, 32k, 64k); a
#: narrower member (Packed-Ensembles) scales it with the stages (``stem_width``)
STEM = 16


class WideBasicBlock(nn.Module):
    """Pre-activation block: norm -> ReLU -> conv3x3 -> norm -> ReLU [-> dropout2d] -> conv3x3, plus shortcut.

    The shortcut is the identity when the shape is kept; otherwise a 1x1 conv (with the block's
    stride) of the pre-activated input, which the first conv also reads. Member masks
    (``layers.member_masks``: Masksembles' channel masks; identity for the other methods) may act on
    each conv's input (site "conv_input": both convs and a projection shortcut's, each its own masks)
    and on the block's output (site "block_output", the residual stream the next block reads).
    """

    def __init__(self, layers: LayerFactory, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        """
        Args:
            layers: the method's layer factory.
            in_channels: channels entering the block.
            out_channels: channels leaving the block.
            stride: stride of the first conv and of the shortcut (2 halves the resolution).
            dropout: Dropout2d probability between the two convs; 0 builds none.
        """
        super().__init__()
        self.bn1 = layers.norm2d(in_channels)
        self.conv1_masks = layers.member_masks(in_channels, "conv_input")
        self.conv1 = layers.conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = layers.norm2d(out_channels)
        self.dropout = layers.dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv2_masks = layers.member_masks(out_channels, "conv_input")
        self.conv2 = layers.conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None  # None: identity of the block's input
        self.shortcut_masks: nn.Module = nn.Identity()  # an identity shortcut is never masked
        if stride != 1 or in_channels != out_channels:  # identity no longer fits: project with a 1x1 conv
            self.shortcut_masks = layers.member_masks(in_channels, "conv_input")
            self.shortcut = layers.conv2d(in_channels, out_channels, 1, stride=stride, padding=0, bias=False)
        self.member_masks = layers.member_masks(out_channels, "block_output")

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(self.conv1_masks(pre))
        out = self.conv2(self.conv2_masks(self.dropout(F.relu(self.bn2(out)))))
        return self.member_masks(out + (x if self.shortcut is None else self.shortcut(self.shortcut_masks(pre))))


class WideResNet(nn.Module):
    """Stem conv3x3 (16 channels unless resized) -> 3 stages of n WideBasicBlocks -> norm -> ReLU -> global avg pool -> linear.

    Masksembles (``layers.member_masks``) masks channels inside the blocks (see WideBasicBlock) and
    the pooled features before the linear (site "classifier_input"), where MC Dropout's last layer
    goes (the final norm's shift would refill channels the last block's masks zeroed). The stem conv
    reads the image, never masked.
    """

    def __init__(
        self,
        layers: LayerFactory,
        in_channels: int,
        num_classes: int,
        depth: int,
        widen_factor: int,
        dropout: float,
        stem_width: int = STEM,
    ) -> None:
        """
        Args:
            layers: the method's layer factory.
            in_channels: channels of the input images.
            num_classes: number of output logits.
            depth: total number of weighted layers; each stage holds n = (depth - 4) / 6 blocks.
            widen_factor: k; the stages use 16k, 32k and 64k channels.
            dropout: MC Dropout probability inside every block and before the linear; 0 builds none.
            stem_width: channels of the stem convolution (16).
        """
        super().__init__()
        blocks_per_stage = (depth - 4) // 6
        self.enter_maps = layers.enter_maps()  # the factory's feature-map layout (Deep Ensemble: channel-stacked)
        self.conv1 = layers.input_conv2d(in_channels, stem_width, 3, stride=1, padding=1, bias=False)
        blocks, channels = [], stem_width
        for width, stride in zip((STEM * widen_factor, 2 * STEM * widen_factor, 4 * STEM * widen_factor), (1, 2, 2)):
            for i in range(blocks_per_stage):
                blocks.append(WideBasicBlock(layers, channels, width, stride if i == 0 else 1, dropout))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = layers.norm2d(channels)
        self.leave_maps = layers.leave_maps()  # back to member-major rows
        self.dropout = layers.dropout(dropout) if dropout > 0 else nn.Identity()
        self.head_masks = layers.member_masks(channels, "classifier_input")
        self.linear = layers.linear(channels, num_classes, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, C, H, W) member-major rows -> (M*B, num_classes) logits."""
        out = self.blocks(self.conv1(self.enter_maps(x)))
        out = self.leave_maps(F.relu(self.bn(out)))  # (M*B, 64*widen_factor, H/4, W/4)
        out = out.mean(dim=(2, 3))  # (M*B, 64*widen_factor): global average pool
        return self.linear(self.dropout(self.head_masks(out)))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def wide_resnet(
    layers: LayerFactory,
    input_shape: Sequence[int],
    num_classes: int,
    depth: int = 28,
    widen_factor: int = 10,
    dropout: float = 0.0,
    stem_width: int = STEM,
) -> WideResNet:
    """CIFAR-style WRN-depth-k; WRN-28-10 has 36,479,194 parameters with plain layers and 10 classes.

    Args:
        layers: the method's layer factory.
        input_shape: shape of one input (C, H, W); H and W are free thanks to the global pool.
        num_classes: number of output logits.
        depth: number of weighted layers, >= 10 with (depth - 4) divisible by 6 (10, 16, 22, 28, ...);
            each of the 3 stages holds (depth - 4) / 6 blocks (28: WRN-28-10).
        widen_factor: k, a positive integer: the stages use 16k, 32k and 64k channels (10: WRN-28-10).
        dropout: MC Dropout probability (Dropout2d between the convs of every block, Dropout before the
            linear); 0 builds none.
        stem_width: channels of the stem convolution: 16, the backbone's; no command-line option, only a
            narrower member's resize (``wide_resnet_resized``) sets it.
    """
    if len(input_shape) != 3:
        raise ConfigError(f"wide_resnet needs input_shape (C, H, W), got {tuple(input_shape)}")
    if not _is_int(depth) or depth < 10 or (depth - 4) % 6 != 0:
        raise ConfigError(f"depth={depth}: wide_resnet needs an integer depth >= 10 with (depth - 4) divisible by 6, e.g. 16, 22 or 28")
    if not _is_int(widen_factor) or widen_factor < 1:
        raise ConfigError(f"widen_factor={widen_factor}: wide_resnet needs a positive integer widening factor, e.g. 10")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    if not _is_int(stem_width) or stem_width < 1:
        raise ConfigError(f"stem_width={stem_width}: wide_resnet's stem needs a positive integer number of channels")
    return WideResNet(layers, input_shape[0], num_classes, depth, widen_factor, dropout, stem_width)


def wide_resnet_resized(options: Mapping[str, Any], resize: Callable[[int, int], int], groups: int) -> dict[str, Any]:
    """``options`` with the widening factor k replaced by resize(k, multiple), every stage's channels
    (16k, 32k, 64k) then dividing by ``groups``, and the stem's 16 channels by resize(16, groups): a member
    of α/M the width has α/M of every layer, the stem included."""
    multiple = groups // math.gcd(STEM, groups)  # 16k divides by groups once k divides by this
    return {**options, "widen_factor": resize(options["widen_factor"], multiple), "stem_width": resize(STEM, groups)}


class WideResNetOptions(BackboneOptions):
    """The "wide_resnet" backbone: CIFAR-style WRN-depth-k (stages of 16k, 32k, 64k channels)."""

    name = "wide_resnet"

    def __init__(self, depth: int = 28, widen_factor: int = 10) -> None:
        """
        Args:
            depth: number of weighted layers, 6n + 4 >= 10; 28 (WRN-28-10).
            widen_factor: widening factor k >= 1 (stages of 16k, 32k, 64k channels); 10 (WRN-28-10).
        """
        self.depth, self.widen_factor = depth, widen_factor

    def build(self, layers: LayerFactory, input_shape: Sequence[int], num_classes: int, dropout: float = 0.0, **derived: Any) -> nn.Module:
        return wide_resnet(layers, input_shape, num_classes, depth=self.depth, widen_factor=self.widen_factor, dropout=dropout, **derived)

    def resized(self, resize: Callable[[int, int], int], groups: int) -> dict[str, Any]:
        return wide_resnet_resized(self.options(), resize, groups)

    def dimensions(self) -> dict[str, int]:
        return {"depth": self.depth, "width": self.widen_factor}
