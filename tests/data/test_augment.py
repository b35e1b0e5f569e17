"""Per-batch augmentation against a reference written as explicit per-pixel Python loops."""

import pytest
import torch

from ensemble_lab.data import CIFAR10DataModule, MNISTDataModule
from ensemble_lab.data.augment import normalize, random_crop, random_hflip


def reference_crop(images: torch.Tensor, dy: list[int], dx: list[int], pad: int) -> torch.Tensor:
    """Image i's window starting at (dy[i], dx[i]) of its zero-padded copy, one pixel at a time."""
    b, c, h, w = images.shape
    out = torch.zeros_like(images)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                src_y, src_x = y + dy[i] - pad, x + dx[i] - pad
                if 0 <= src_y < h and 0 <= src_x < w:  # outside the image: the zero padding
                    for ch in range(c):
                        out[i, ch, y, x] = images[i, ch, src_y, src_x]
    return out


def reference_flip(images: torch.Tensor, flips: list[bool]) -> torch.Tensor:
    """Image i mirrored left-right where flips[i], one pixel at a time."""
    b, c, h, w = images.shape
    out = images.clone()
    for i in range(b):
        if flips[i]:
            for y in range(h):
                for x in range(w):
                    out[i, :, y, x] = images[i, :, y, w - 1 - x]
    return out


@pytest.mark.parametrize("size,pad", [(8, 2), (32, 4)])
def test_random_crop_matches_loops(size, pad):
    images = torch.rand(6, 3, size, size)
    out = random_crop(images, pad, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)  # the same draws: first the row offsets, then the column offsets
    dy = torch.randint(0, 2 * pad + 1, (6,), generator=g).tolist()
    dx = torch.randint(0, 2 * pad + 1, (6,), generator=g).tolist()
    assert len(set(zip(dy, dx))) > 1, "the offsets should vary between images"
    torch.testing.assert_close(out, reference_crop(images, dy, dx, pad), rtol=0, atol=0)


def test_random_hflip_matches_loops():
    images = torch.rand(8, 3, 5, 7)
    out = random_hflip(images, generator=torch.Generator().manual_seed(3))
    flips = (torch.rand(8, generator=torch.Generator().manual_seed(3)) < 0.5).tolist()
    assert 0 < sum(flips) < 8, "the seed should flip some images and keep others"
    torch.testing.assert_close(out, reference_flip(images, flips), rtol=0, atol=0)


def test_cifar10_training_batches_are_cropped_flipped_and_normalised():
    dm = CIFAR10DataModule(data_dir="unused")
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(11)
    out = dm.preprocess(images, train=True)
    torch.manual_seed(11)  # the draws preprocess makes, in its order: rows, columns, flips
    dy, dx = torch.randint(0, 9, (5,)).tolist(), torch.randint(0, 9, (5,)).tolist()
    flips = (torch.rand(5) < 0.5).tolist()
    expected = reference_flip(reference_crop(images.float() / 255, dy, dx, 4), flips)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    for ch in range(3):
        expected[:, ch] = (expected[:, ch] - mean[ch]) / std[ch]
    torch.testing.assert_close(out, expected)
    # evaluation batches: normalisation only
    torch.testing.assert_close(dm.preprocess(images, train=False), normalize(images.float() / 255, mean, std))


def test_mnist_is_never_augmented():
    dm = MNISTDataModule(data_dir="unused")
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    expected = (images.float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(dm.preprocess(images, train=True), expected)
    torch.testing.assert_close(dm.preprocess(images, train=False), expected)
