"""Image transforms on whole batches, wherever the batch is (GPU when there is one).

Training augmentation and normalisation run on every batch after it reached the device; ``rotate``
makes rotated shift sets (digits, MNIST) from a test set, once, in one batched op.
"""

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


def rotate(images: Tensor, degrees: float | Tensor) -> Tensor:
    """Rotate images (N, C, H, W) counter-clockwise (as displayed) about their centre; bilinear, zero fill.

    ``degrees`` is one angle for every image or a tensor of one angle per image (N,). uint8 images
    come back as uint8 (rounded); float images stay float, so noise can be added before rounding.
    """
    n = images.shape[0]
    # float64 trigonometry: cos 90° is 6e-17 there (float32: -4e-8), so a quarter turn moves pixels exactly
    angles = torch.deg2rad(torch.as_tensor(degrees, dtype=torch.float64).cpu().expand(n))  # (N,)
    cos, sin, zero = angles.cos(), angles.sin(), torch.zeros_like(angles)
    # affine_grid maps each output pixel to the input point it samples, in (x right, y down) coordinates;
    # with y pointing down, this matrix turns the content counter-clockwise as displayed
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (N, 2, 3)
    x = images if images.is_floating_point() else images.float()
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (N, H, W, 2)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if images.is_floating_point():
        return x
    return x.round().clamp(0, 255).to(images.dtype)
