"""Pre-norm transformer encoder block on token tensors, built from a LayerFactory.

Every linear (attention's qkv and output projections, the MLP's two layers) and every LayerNorm
comes from the factory, so one definition is the single model's, BatchEnsemble's (rank-1 fast
weights on every projection), the Deep Ensemble's, LowRank's, Packed-Ensembles' block, ... Inputs
are member-major token tensors (M*B, T, D); each member layer treats a member's tokens as its
rows, and attention mixes tokens within a row only, so members never mix: all of it runs as a few
batched ops, with no loop over members, heads or tokens.
"""

from torch import Tensor, nn
from torch.nn import functional as F

from ensemble_lab.nn.dropout import AlwaysOnDropout
from ensemble_lab.nn.factories import LayerFactory
from ensemble_lab.nn.tokens import LAYER_NORM_EPS


class TokenMasks(nn.Module):
    """A row-wise member layer (Masksembles' MemberMasks over D features) applied to every token:
    (M*B, T, D) flattened to the member-major rows (M*B*T, D) and back."""

    def __init__(self, layer: nn.Module) -> None:
        """
        Args:
            layer: a module on member-major rows (N, D).
        """
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, T, D) -> (M*B, T, D)."""
        return self.layer(x.flatten(0, 1)).view_as(x)  # (M*B*T, D): member m's tokens are rows [m*B*T, (m+1)*B*T)


def token_masks(layers: LayerFactory, features: int, site: str) -> nn.Module:
    """The factory's member masks over the ``features`` of every token at ``site``; nn.Identity where it has none."""
    masks = layers.member_masks(features, site)
    return masks if isinstance(masks, nn.Identity) else TokenMasks(masks)


class SelfAttention(nn.Module):
    """Multi-head self-attention: qkv projection -> scaled dot-product attention per head -> output projection."""

    def __init__(self, layers: LayerFactory, dim: int, num_heads: int, dropout: float, attention_dropout: float) -> None:
        """
        Args:
            layers: the method's layer factory (qkv and output projections are its linears, with biases).
            dim: D, features per token; divides by ``num_heads``.
            num_heads: H, heads of D / H features each.
            dropout: dropout after the output projection (the factory's dropout); 0 builds none.
            attention_dropout: dropout on the attention weights (on at test time where the factory's dropout is); 0: none.
        """
        super().__init__()
        self.num_heads = num_heads
        self.qkv = layers.attention_linear(dim, 3 * dim, bias=True)
        self.proj = layers.attention_linear(dim, dim, bias=True)
        self.dropout = layers.dropout(dropout) if dropout > 0 else nn.Identity()
        # kept as a module so that MC Dropout's always-on dropout is told apart from the ordinary one
        self.attention_dropout = layers.dropout(attention_dropout) if attention_dropout > 0 else None

    def _attention_p(self) -> float:
        drop = self.attention_dropout
        if drop is None or not (self.training or isinstance(drop, AlwaysOnDropout)):
            return 0.0
        return float(getattr(drop, "p", 0.0))

    def forward(self, x: Tensor) -> Tensor:
        """(N, T, D) -> (N, T, D); rows (N = M*B) attend within themselves only."""
        n, t, d = x.shape
        qkv = self.qkv(x).view(n, t, 3, self.num_heads, d // self.num_heads)  # (N, T, 3, H, D/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, H, T, D/H)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self._attention_p())  # (N, H, T, D/H)
        out = out.transpose(1, 2).reshape(n, t, d)  # (N, T, H, D/H) -> (N, T, D): heads side by side
        return self.dropout(self.proj(out))


class FeedForward(nn.Module):
    """linear (D -> hidden) -> GELU -> [member masks] -> [dropout] -> linear (hidden -> D) -> [dropout]."""

    def __init__(self, layers: LayerFactory, dim: int, hidden: int, dropout: float) -> None:
        """
        Args:
            layers: the method's layer factory.
            dim: D, features per token.
            hidden: the hidden layer's features.
            dropout: dropout after the hidden activation and after the second linear; 0 builds none.
        """
        super().__init__()
        self.fc1 = layers.linear(dim, hidden, bias=True)
        self.masks = token_masks(layers, hidden, "hidden")  # Masksembles: the second linear's input, as the MLP's
        self.hidden_dropout = layers.dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc2 = layers.linear(hidden, dim, bias=True)
        self.dropout = layers.dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(N, T, D) -> (N, T, D)."""
        return self.dropout(self.fc2(self.hidden_dropout(self.masks(F.gelu(self.fc1(x))))))


class EncoderBlock(nn.Module):
    """Pre-norm encoder block: x + attention(norm1(x)), then x + MLP(norm2(x)) [then member masks].

    Member masks (Masksembles, site "block_output") may act on the block's output, the residual
    stream the next block reads; the MLP's hidden activation is site "hidden".
    """

    def __init__(
        self, layers: LayerFactory, dim: int, num_heads: int, hidden: int, dropout: float, attention_dropout: float
    ) -> None:
        """
        Args:
            layers: the method's layer factory.
            dim: D, features per token.
            num_heads: attention heads; divides D.
            hidden: features of the MLP's hidden layer.
            dropout: dropout after attention's projection and in the MLP; 0 builds none.
            attention_dropout: dropout on the attention weights; 0: none.
        """
        super().__init__()
        self.norm1 = layers.layer_norm(dim, eps=LAYER_NORM_EPS)
        self.attention = SelfAttention(layers, dim, num_heads, dropout, attention_dropout)
        self.norm2 = layers.layer_norm(dim, eps=LAYER_NORM_EPS)
        self.mlp = FeedForward(layers, dim, hidden, dropout)
        self.member_masks = token_masks(layers, dim, "block_output")

    def forward(self, x: Tensor) -> Tensor:
        """(N, T, D) -> (N, T, D)."""
        x = x + self.attention(self.norm1(x))
        return self.member_masks(x + self.mlp(self.norm2(x)))
