"""Token layers of a vision transformer, shared by the members or one per member.

A transformer's activations are token tensors: member-major rows of tokens, (M*B, T, D), rows
[m*B, (m+1)*B) belonging to member m as everywhere else. Flattening the tokens into rows,
(M*B*T, D), keeps that order (member m owns rows [m*B*T, (m+1)*B*T)), so every row-wise member layer
(linears, Masksembles' masks) treats a member's tokens as more of its rows.

- :func:`patches`: images (N, C, H, W) -> flattened non-overlapping patches (N, T, C*p*p), the
  input of the patch embedding (a linear on them is a conv with kernel = stride = p).
- :class:`TokenEmbedding` / :class:`EnsembleTokenEmbedding`: the learned class token and position
  embedding, one for all members or one per member (methods whose members share nothing).
- :class:`EnsembleLayerNorm`: a LayerNorm per member (its own affine scale and shift).
"""

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.members import check_num_members, gram_of_rows, rows_per_member

#: the LayerNorm epsilon of the ViT (as the original ViT and timm's)
LAYER_NORM_EPS = 1e-6
#: standard deviation of the truncated normal that draws the position embedding and class token
EMBEDDING_STD = 0.02


@torch.no_grad()
def draw_embeddings(*tensors: Tensor | None) -> None:
    """Fill position embeddings and class tokens from a normal (std 0.02) truncated at two standard deviations."""
    for t in tensors:
        if t is not None:
            nn.init.trunc_normal_(t, std=EMBEDDING_STD, a=-2 * EMBEDDING_STD, b=2 * EMBEDDING_STD)


def patches(images: Tensor, patch_size: int) -> Tensor:
    """(N, C, H, W) -> (N, T, C*p*p): the non-overlapping p x p patches in row-major order, each flattened
    channel-first (the layout of a conv kernel (D, C, p, p) flattened, so a linear on them is that conv)."""
    n, c, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ConfigError(f"images of {h}x{w} do not split into {patch_size}x{patch_size} patches; choose a patch_size dividing both")
    cols = F.unfold(images, kernel_size=patch_size, stride=patch_size)  # (N, C*p*p, T)
    return cols.transpose(1, 2)  # (N, T, C*p*p)


class TokenEmbedding(nn.Module):
    """Prepends a learned class token (optional) and adds a learned position embedding, shared by every row."""

    def __init__(self, num_patches: int, dim: int, class_token: bool = True) -> None:
        """
        Args:
            num_patches: T, the patch tokens of an image.
            dim: D, features per token.
            class_token: prepend a learned class token (T + 1 tokens leave); False: mean pooling, T tokens.
        """
        super().__init__()
        tokens = num_patches + int(class_token)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Position embedding and class token drawn as :func:`draw_embeddings` says."""
        draw_embeddings(self.pos_embed, self.cls_token)

    def forward(self, x: Tensor) -> Tensor:
        """(N, T, D) patch tokens -> (N, T + 1, D) with the class token first (or (N, T, D)), positions added."""
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (N, 1 + T, D)
        return x + self.pos_embed


class EnsembleTokenEmbedding(nn.Module):
    """M independent class tokens and position embeddings over member-major rows: member i uses row i.

    Stored as (M, 1, D) and (M, T', D); ``member_state(i)`` is what a plain :class:`TokenEmbedding` holds.
    """

    def __init__(self, num_patches: int, dim: int, class_token: bool = True, *, num_members: int) -> None:
        """
        Args:
            num_patches: T, the patch tokens of an image.
            dim: D, features per token.
            class_token: prepend a learned class token per member; False: T tokens (mean pooling).
            num_members: number of independent members M.
        """
        super().__init__()
        check_num_members(num_members)
        self.num_members = num_members
        tokens = num_patches + int(class_token)
        self.cls_token = nn.Parameter(torch.zeros(num_members, 1, dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(num_members, tokens, dim))
        draw_embeddings(self.pos_embed, self.cls_token)  # every member its own draw

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, T, D) member-major patch tokens -> (M*B, T', D), member i's class token and positions on its rows."""
        m, b = self.num_members, rows_per_member(x.shape[0], self.num_members)
        x = x.view(m, b, *x.shape[1:])  # (M, B, T, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.unsqueeze(1).expand(m, b, 1, -1), x], dim=2)  # (M, B, 1 + T, D)
        return (x + self.pos_embed.unsqueeze(1)).flatten(0, 1)  # (M*B, T', D)

    def member_state(self, i: int) -> dict[str, Tensor]:
        """Member i as a plain TokenEmbedding holds it: ``cls_token`` (1, 1, D) and ``pos_embed`` (1, T', D), detached."""
        rows = (("cls_token", self.cls_token), ("pos_embed", self.pos_embed))
        return {name: t[i : i + 1].detach() for name, t in rows if t is not None}

    def member_gram(self) -> Tensor:
        """G_ij = ⟨θ_i, θ_j⟩ (M, M) float64 of the members' class tokens and position embeddings."""
        return gram_of_rows(self.cls_token, self.pos_embed)

    def member_parameters(self) -> list[Tensor]:
        """The stored tensors whose row i is member i's own: class token and position embedding."""
        return [p for p in (self.cls_token, self.pos_embed) if p is not None]


class EnsembleLayerNorm(nn.Module):
    """M LayerNorms over member-major rows: every token normalised over its D features, then member i's
    own scale and shift. ``weight`` and ``bias`` are (M, D); row i is what member i's nn.LayerNorm holds."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, *, num_members: int) -> None:
        """
        Args:
            normalized_shape: D, the features each token (row) is normalised over.
            eps: added to the variance for numerical stability (as nn.LayerNorm's).
            num_members: number of members M, each with its own affine scale and shift.
        """
        super().__init__()
        check_num_members(num_members)
        self.normalized_shape, self.eps, self.num_members = normalized_shape, eps, num_members
        self.weight = nn.Parameter(torch.ones(num_members, normalized_shape))
        self.bias = nn.Parameter(torch.zeros(num_members, normalized_shape))

    def reset_parameters(self) -> None:
        """Scale 1, shift 0, as nn.LayerNorm."""
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, ..., D) member-major rows (tokens: (M*B, T, D)) -> the same shape."""
        shape, m = x.shape, self.num_members
        rows_per_member(shape[0], m)  # a ConfigError unless the rows are member-major
        y = F.layer_norm(x, (self.normalized_shape,), None, None, self.eps).reshape(m, -1, self.normalized_shape)  # (M, B·T, D)
        y = y * self.weight.unsqueeze(1).to(y.dtype) + self.bias.unsqueeze(1).to(y.dtype)  # member i's affine on its rows
        return y.reshape(shape)

    def member_state(self, i: int) -> dict[str, Tensor]:
        """Member i as a plain nn.LayerNorm holds it: ``weight`` and ``bias`` row i (detached)."""
        return {"weight": self.weight[i].detach(), "bias": self.bias[i].detach()}

    def member_parameters(self) -> list[Tensor]:
        """The stored tensors whose row i is member i's own: the affine scale and shift (no ``member_gram``:
        norm layers are left out of the effective weight cosine, as the BatchNorms)."""
        return [self.weight, self.bias]

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, num_members={self.num_members}"
