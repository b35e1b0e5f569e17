"""Per-batch image preprocessing that runs wherever the batch is (GPU when there is one)."""

import functools
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


def to_float(images: Tensor) -> Tensor:
    """uint8 images (B, C, H, W) in 0..255 -> float32 in [0, 1]."""
    return images.float().div_(255.0)


@functools.lru_cache(maxsize=64)
def _channel_constants(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """(1, C, 1, 1) constants, made once per device: building them from Python floats on every
    batch would be a blocking host-to-device copy per training step on a GPU."""
    with torch.inference_mode(False), torch.no_grad():  # usable in training even if first made at test
        return torch.tensor(values, dtype=dtype, device=device).view(1, -1, 1, 1)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel (x - mean) / std on a float batch (B, C, H, W)."""
    mean_t = _channel_constants(tuple(mean), images.dtype, images.device)
    std_t = _channel_constants(tuple(std), images.dtype, images.device)
    return (images - mean_t) / std_t


def random_crop(images: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad every side by ``padding`` and cut a random H×W window per image, in one gather."""
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * padding + 1, (b,), device=images.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=images.device, generator=generator)
    rows = (dy.view(b, 1) + torch.arange(h, device=images.device)).view(b, 1, h, 1)  # (B, 1, H, 1)
    cols = (dx.view(b, 1) + torch.arange(w, device=images.device)).view(b, 1, 1, w)  # (B, 1, 1, W)
    batch_idx = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    channel_idx = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return padded[batch_idx, channel_idx, rows, cols]  # (B, C, H, W)


def random_hflip(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
