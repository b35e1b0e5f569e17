"""Vision transformer (ViT, Dosovitskiy et al. 2021) built from a LayerFactory.

patches -> patch embedding (the factory's input linear on flattened p x p patches: a conv with
kernel = stride = p) -> class token and position embedding -> ``depth`` pre-norm encoder blocks
(nn.attention) -> final LayerNorm -> class token or mean of the tokens -> head (the factory's linear).
Activations between are member-major token tensors (M*B, T, D). With the defaults at CIFAR-10's
(3, 32, 32) and 10 classes the plain network has timm's ``vit_tiny_patch16_224`` layout at
img_size 32, patch_size 4: 5,362,762 parameters. Its options are ``ViTOptions`` (``--model.backbone vit``).
"""

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.attention import EncoderBlock
from ensemble_lab.nn.backbone_options import BackboneOptions
from ensemble_lab.nn.dropout import check_dropout_p
from ensemble_lab.nn.factories import LayerFactory
from ensemble_lab.nn.tokens import LAYER_NORM_EPS, patches

#: how the tokens become one feature vector for the head: the class token's, or the mean of the patch tokens'
POOLINGS = ("cls", "mean")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"--model.backbone.{name} must be an integer >= 1, got {value!r}")


class ViTOptions(BackboneOptions):
    """The "vit" backbone: a vision transformer on square patches of the image (its size comes from the data).

    Its options are ``--model.backbone vit --model.backbone.<option>``; values no ViT could build are refused
    here, in one line naming the option.
    """

    name = "vit"

    def __init__(
        self,
        patch_size: int = 4,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        pooling: str = "cls",
        attention_dropout: float = 0.0,
    ) -> None:
        """
        Args:
            patch_size: p, side of the square patches (non-overlapping); divides the image's height and width.
            embed_dim: D, features per token; divides by ``num_heads``.
            depth: number of encoder blocks.
            num_heads: attention heads per block (D / num_heads features each).
            mlp_ratio: the MLP's hidden features per token feature: int(D · mlp_ratio) hidden units.
            pooling: "cls" (a learned class token, its final features feed the head) or "mean" (no class
                token; the mean of the patch tokens' final features).
            attention_dropout: dropout on the attention weights, in [0, 1); 0: none.
        """
        for option, value in (("patch_size", patch_size), ("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)):
            _positive_int(option, value)
        if embed_dim % num_heads:
            raise ConfigError(
                f"--model.backbone.embed_dim {embed_dim} does not split into --model.backbone.num_heads {num_heads} heads; choose a multiple"
            )
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, int | float) or not mlp_ratio > 0:
            raise ConfigError(f"--model.backbone.mlp_ratio must be a number > 0, got {mlp_ratio!r}")
        if int(embed_dim * mlp_ratio) < 1:
            raise ConfigError(f"--model.backbone.mlp_ratio {mlp_ratio} leaves the MLP no hidden unit at embed_dim {embed_dim}")
        if pooling not in POOLINGS:
            raise ConfigError(f"--model.backbone.pooling {pooling!r} is not known; allowed: {', '.join(POOLINGS)}")
        check_dropout_p(attention_dropout, "--model.backbone.attention_dropout")
        self.patch_size, self.embed_dim, self.depth, self.num_heads = patch_size, embed_dim, depth, num_heads
        # floats as recorded (a config's 4 and 4.0 are one network)
        self.mlp_ratio, self.pooling, self.attention_dropout = float(mlp_ratio), pooling, float(attention_dropout)

    @property
    def mlp_hidden(self) -> int:
        """The MLP's hidden features: int(embed_dim · mlp_ratio), as timm."""
        return int(self.embed_dim * self.mlp_ratio)

    def build(self, layers: LayerFactory, input_shape: Sequence[int], num_classes: int, dropout: float = 0.0, **derived: Any) -> nn.Module:
        return vit(layers, input_shape, num_classes, **self.options(), dropout=dropout, **derived)

    def resized(self, resize: Callable[[int, int], int], groups: int) -> dict[str, Any]:
        return vit_resized(self.options(), resize, groups)

    def dimensions(self) -> dict[str, int]:
        return vit_dimensions(self.options())


class ViT(nn.Module):
    """Patch embedding -> tokens -> encoder blocks -> norm -> pooling -> head, on member-major rows.

    Masksembles (``layers.member_masks``) masks token features in the blocks (the MLP's hidden
    activation, site "hidden"; a block's output, site "block_output") and the pooled features before
    the head (site "classifier_input": the final norm comes between them and the last block). The
    patch embedding reads the images, never masked. The class token and position embedding are the
    factory's ``token_embedding``: shared by the members, or the members' own where they share nothing.
    """

    def __init__(self, layers: LayerFactory, input_shape: Sequence[int], num_classes: int, options: ViTOptions, dropout: float) -> None:
        """
        Args:
            layers: the method's layer factory.
            input_shape: shape of one image (C, H, W), H and W multiples of the patch size.
            num_classes: number of output logits.
            options: the ViT's options.
            dropout: the factory's dropout after each attention projection, in each MLP and before the head; 0: none.
        """
        super().__init__()
        channels, height, width = input_shape
        p, d = options.patch_size, options.embed_dim
        if height % p or width % p:
            raise ConfigError(f"--model.backbone.patch_size {p} does not divide the {height}x{width} images; choose a divisor of both")
        self.patch_size, self.pooling = p, options.pooling
        num_patches = (height // p) * (width // p)
        self.patch_embed = layers.input_linear(channels * p * p, d, bias=True)  # a p x p conv of stride p, with bias
        self.tokens = layers.token_embedding(num_patches, d, options.pooling == "cls")
        hidden = options.mlp_hidden
        self.blocks = nn.Sequential(
            *(EncoderBlock(layers, d, options.num_heads, hidden, dropout, options.attention_dropout) for _ in range(options.depth))
        )
        self.norm = layers.layer_norm(d, eps=LAYER_NORM_EPS)
        self.head_masks = layers.member_masks(d, "classifier_input")
        self.dropout = layers.dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = layers.head_linear(d, num_classes, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, C, H, W) member-major images -> (M*B, num_classes) logits (a Packed network: (B, C, H, W) in)."""
        tokens = self.patch_embed(patches(x, self.patch_size))  # (M*B, T, D)
        tokens = self.norm(self.blocks(self.tokens(tokens)))  # (M*B, T', D), T' = T + 1 with a class token
        pooled = tokens[:, 0] if self.pooling == "cls" else tokens.mean(dim=1)  # (M*B, D)
        return self.head(self.dropout(self.head_masks(pooled)))


def vit(
    layers: LayerFactory,
    input_shape: Sequence[int],
    num_classes: int,
    patch_size: int = 4,
    embed_dim: int = 192,
    depth: int = 12,
    num_heads: int = 3,
    mlp_ratio: float = 4.0,
    pooling: str = "cls",
    attention_dropout: float = 0.0,
    dropout: float = 0.0,
) -> ViT:
    """A ViT on images of ``input_shape``; 5,362,762 parameters with plain layers and the defaults at (3, 32, 32), 10 classes.

    Args:
        layers: the method's layer factory.
        input_shape: shape of one image (C, H, W); the image size the patches and position embedding are built for.
        num_classes: number of output logits.
        patch_size: side p of the square patches; divides H and W (CIFAR: 4, 64 tokens).
        embed_dim: D, features per token; a multiple of ``num_heads`` (ViT-Tiny: 192).
        depth: number of encoder blocks (ViT-Tiny: 12).
        num_heads: attention heads per block (ViT-Tiny: 3).
        mlp_ratio: the MLP's hidden units per token feature (4: 4·D hidden units).
        pooling: "cls" (class token) or "mean" (mean of the patch tokens, no class token).
        attention_dropout: dropout on the attention weights, in [0, 1); 0: none.
        dropout: dropout after attention's projections, in the MLPs and before the head, in [0, 1); 0: none.
    """
    if len(input_shape) != 3:
        raise ConfigError(f"vit needs input_shape (C, H, W), got {tuple(input_shape)}")
    check_dropout_p(dropout, "--model.dropout")
    options = ViTOptions(patch_size, embed_dim, depth, num_heads, mlp_ratio, pooling, attention_dropout)
    return ViT(layers, input_shape, num_classes, options, dropout)


def vit_resized(options: Mapping[str, Any], resize: Callable[[int, int], int], groups: int) -> dict[str, Any]:
    """``options`` with the token features D replaced by resize(D, multiple): ``multiple`` keeps D divisible by the
    heads and by ``groups`` (the MLP's hidden width int(D · mlp_ratio) too, where mlp_ratio is a whole number)."""
    heads = options["num_heads"]
    multiple = heads * groups // math.gcd(heads, groups)  # lcm: whole heads, whole groups
    return {**options, "embed_dim": resize(options["embed_dim"], multiple)}


def vit_dimensions(options: Mapping[str, Any]) -> dict[str, int]:
    """A ViT's depth (encoder blocks) and width (token features D)."""
    return {"depth": options["depth"], "width": options["embed_dim"]}
