"""Random uint8 images in CIFAR's layout, served by the real EnsembleDataModule machinery.

Speed does not depend on what the pixels show, so the benchmarks (and the hot-path tests) use
random images: no download, any size, and the same loaders, crop, flip and normalisation as
CIFAR10DataModule.
"""

import torch

from ensemble_lab.data.base import EnsembleDataModule, LabeledImages


def random_images(count: int, shape: tuple[int, int, int], num_classes: int, seed: int) -> LabeledImages:
    """``count`` uint8 images (N, C, H, W) and int64 labels (N,), reproducible from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, *shape), dtype=torch.uint8, generator=g)
    return LabeledImages(images, torch.randint(0, num_classes, (count,), generator=g))


class RandomImagesDataModule(EnsembleDataModule):
    """CIFAR-shaped random data: a training split, and one test set per role (id, shift, ood)."""

    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2023, 0.1994, 0.2010)

    def __init__(
        self,
        train_size: int = 1024,
        test_size: int = 512,
        image_size: int = 32,
        channels: int = 3,
        batch_size: int = 128,
        val_size: int = 128,
        **kwargs,
    ) -> None:
        """
        Args:
            train_size: images in the training split (validation included).
            test_size: images in each of the three test sets.
            image_size: height and width of every image.
            channels: channels of every image (3 like CIFAR-10).
            batch_size: training batch size in unique images.
            val_size: images held out of the training split for validation.
        """
        super().__init__(batch_size=batch_size, val_size=val_size, **kwargs)
        self.train_size, self.test_size = train_size, test_size
        self.input_shape = (channels, image_size, image_size)
        self.mean, self.std = self.mean[:channels], self.std[:channels]

    @property
    def test_set_roles(self) -> dict[str, str]:
        return {"random_id": "id", "random_shift": "shift", "random_ood": "ood"}

    def load_train(self) -> LabeledImages:
        return random_images(self.train_size, self.input_shape, self.num_classes, seed=0)

    def load_test_sets(self) -> dict[str, LabeledImages]:
        return {
            name: random_images(self.test_size, self.input_shape, self.num_classes, seed=1 + i)
            for i, name in enumerate(self.test_set_roles)
        }
