"""scikit-learn's bundled handwritten digits: real data, no download, for quick runs and tests."""

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ensemble_lab.data.augment import rotate
from ensemble_lab.data.base import EnsembleDataModule, LabeledImages
from ensemble_lab.errors import ConfigError

DIGITS = 1797  # images in scikit-learn's bundled digits
TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 1797  # fixed: the test split never depends on an option
TEST_SIZE = round(TEST_FRACTION * DIGITS)  # 359


def _load_digits() -> LabeledImages:
    from sklearn.datasets import load_digits  # scikit-learn only when the digits are read

    digits = load_digits()
    # values are 0..16 ink counts; stretch them to the 0..255 range of every other dataset
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    return LabeledImages(torch.from_numpy(images), torch.from_numpy(digits.target.astype(np.int64)))


def _rotate_and_noise(images: Tensor, max_degrees: float, noise_std: float, seed: int) -> Tensor:
    """Rotate each uint8 image by its own angle in ±max_degrees, add Gaussian noise (std in 0..1 units)."""
    g = torch.Generator().manual_seed(seed)
    degrees = (torch.rand(images.shape[0], generator=g) * 2 - 1) * max_degrees  # (N,)
    x = rotate(images.float() / 255.0, degrees)  # float: the noise is added before rounding
    x = x + noise_std * torch.randn(x.shape, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _photo_patches(count: int, size: int, seed: int) -> Tensor:
    """Grey size×size patches cut at random from scikit-learn's two bundled photographs, shrunk 8×."""
    from sklearn.datasets import load_sample_images  # scikit-learn only when the patches are made

    g = torch.Generator().manual_seed(seed)
    patches = []
    photos = load_sample_images().images
    for i, photo in enumerate(photos):
        grey = torch.from_numpy(photo.astype(np.float32).mean(axis=2))[None, None]  # (1, 1, H, W)
        small = F.avg_pool2d(grey, 8)[0, 0]  # shrink so a patch holds structure, not flat texture
        share = count // len(photos) + (1 if i < count % len(photos) else 0)
        ys = torch.randint(0, small.shape[0] - size + 1, (share,), generator=g)
        xs = torch.randint(0, small.shape[1] - size + 1, (share,), generator=g)
        patches += [small[y : y + size, x : x + size] for y, x in zip(ys.tolist(), xs.tolist())]
    return torch.stack(patches)[:, None].round().clamp(0, 255).to(torch.uint8)  # (N, 1, size, size)


class DigitsDataModule(EnsembleDataModule):
    """1,797 real 8×8 digits bundled with scikit-learn; runs anywhere, offline.

    Test sets: ``digits`` (id, 20% held out), ``digits_shifted`` (shift: the same test digits
    rotated and noised), ``photo_patches`` (ood: grey 8×8 patches of scikit-learn's sample photos).
    """

    num_classes = 10
    input_shape = (1, 8, 8)
    mean = (0.3053,)
    std = (0.3760,)
    crop_padding = None  # 8×8 digits: cropping would cut strokes away
    flip = False
    train_size = DIGITS - TEST_SIZE  # 1,438: known without loading, so __init__ checks val_size

    def __init__(
        self,
        batch_size: int = 64,
        val_size: int = 200,
        shift_degrees: float = 45.0,
        shift_noise: float = 0.2,
        **kwargs,
    ) -> None:
        """
        Args:
            batch_size: training batch size in unique images.
            val_size: images held out of the 1,438 training digits for validation (1 to 1,437).
            shift_degrees: the shift set rotates each test digit by an angle drawn from ±shift_degrees.
            shift_noise: standard deviation of the Gaussian noise added to the shift set (pixel range 0..1).
        """
        super().__init__(batch_size=batch_size, val_size=val_size, **kwargs)
        if shift_noise < 0:
            raise ConfigError(f"--data.shift_noise is a standard deviation: it must be >= 0, got {shift_noise}")
        self.shift_degrees, self.shift_noise = shift_degrees, shift_noise

    @property
    def test_set_roles(self) -> dict[str, str]:
        return {"digits": "id", "digits_shifted": "shift", "photo_patches": "ood"}

    def _train_test(self) -> tuple[LabeledImages, LabeledImages]:
        data = _load_digits()
        if len(data.labels) != DIGITS:  # train_size, checked against val_size in __init__, relies on it
            raise RuntimeError(f"scikit-learn's digits hold {len(data.labels)} images, expected {DIGITS}")
        order = torch.randperm(DIGITS, generator=torch.Generator().manual_seed(TEST_SPLIT_SEED))
        test, train = order[:TEST_SIZE], order[TEST_SIZE:]
        return LabeledImages(data.images[train], data.labels[train]), LabeledImages(data.images[test], data.labels[test])

    def load_train(self) -> LabeledImages:
        return self._train_test()[0]

    def load_test_sets(self) -> dict[str, LabeledImages]:
        test = self._train_test()[1]
        shifted = _rotate_and_noise(test.images, self.shift_degrees, self.shift_noise, seed=TEST_SPLIT_SEED)
        patches = _photo_patches(len(test.labels), size=8, seed=TEST_SPLIT_SEED)
        # OOD images have no class; label 0 keeps the batch layout uniform and is never scored as accuracy that matters
        return {
            "digits": test,
            "digits_shifted": LabeledImages(shifted, test.labels),
            "photo_patches": LabeledImages(patches, torch.zeros(len(patches), dtype=torch.long)),
        }
