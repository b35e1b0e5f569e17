"""Tiny copies of the paper's benchmarks in their native formats, for datamodule and CLI tests.

``write_cifar_benchmark(root)`` writes CIFAR-10, CIFAR-10-C (all 19 corruptions; as in the real
files, each severity block is the CIFAR-10 test set: ``CIFAR10C_BLOCK == CIFAR_TEST`` rows) and
SVHN's test split; ``write_mnist_benchmark(root)`` writes MNIST, FashionMNIST and MNIST-C (all 15
corruptions). ``cifar_args`` / ``mnist_args`` point a datamodule at them.
"""

from pathlib import Path

import numpy as np

from tests.data.native_formats import (
    random_images,
    random_labels,
    write_cifar10,
    write_cifar10c,
    write_cifar100,
    write_fashion_mnist,
    write_mnist,
    write_mnist_c,
    write_svhn_test,
)

CIFAR_TRAIN, CIFAR_TEST, SVHN_TEST = 40, 2, 10
CIFAR10C_BLOCK = CIFAR_TEST  # CIFAR-10-C renders the test set once per severity; the datamodule derives its block from it
MNIST_TRAIN, MNIST_TEST, MNIST_C_PER, FASHION_TEST = 40, 12, 3, 10
VAL_SIZE, BATCH_SIZE = 8, 8


def write_cifar_benchmark(root: Path) -> Path:
    """CIFAR-10 (40 train, 2 test), CIFAR-10-C (19 × 5 × 2 rows: the test set per severity) and SVHN test (10) under ``root``."""
    x, y = random_images(CIFAR_TRAIN + CIFAR_TEST, 3, 32, seed=1), random_labels(CIFAR_TRAIN + CIFAR_TEST, seed=1)
    write_cifar10(root, x[:CIFAR_TRAIN], y[:CIFAR_TRAIN], x[CIFAR_TRAIN:], y[CIFAR_TRAIN:])
    write_cifar10c(root, labels=y[CIFAR_TRAIN:])  # the test labels, as in the real labels.npy
    write_svhn_test(root, random_images(SVHN_TEST, 3, 32, seed=2), np.arange(SVHN_TEST) % 10)
    return root


def write_cifar100_benchmark(root: Path, corruptions: tuple[str, ...] | None = None) -> Path:
    """CIFAR-100 (40 train, 2 test; labels 0..99), CIFAR-100-C (the given corruptions, default all 19, × 5 × 2 rows),
    CIFAR-10 and SVHN (its near and far OOD sets) under ``root``."""
    write_cifar_benchmark(root)
    x, y = random_images(CIFAR_TRAIN + CIFAR_TEST, 3, 32, seed=5), random_labels(CIFAR_TRAIN + CIFAR_TEST, 100, seed=5)
    write_cifar100(root, x[:CIFAR_TRAIN], y[:CIFAR_TRAIN], x[CIFAR_TRAIN:], y[CIFAR_TRAIN:])
    kwargs = {} if corruptions is None else {"corruptions": corruptions}
    write_cifar10c(root, labels=y[CIFAR_TRAIN:], folder_name="CIFAR-100-C", **kwargs)
    return root


def write_mnist_benchmark(root: Path, gz: bool = True) -> Path:
    """MNIST (40 train, 12 test), FashionMNIST (10 test) and MNIST-C (15 × 3) under ``root``."""
    x, y = random_images(MNIST_TRAIN + MNIST_TEST, 1, 28, seed=3), random_labels(MNIST_TRAIN + MNIST_TEST, seed=3)
    write_mnist(root, x[:MNIST_TRAIN], y[:MNIST_TRAIN], x[MNIST_TRAIN:], y[MNIST_TRAIN:], gz=gz)
    f = random_images(FASHION_TEST, 1, 28, seed=4)
    write_fashion_mnist(root, f, np.arange(FASHION_TEST) % 10, f, np.arange(FASHION_TEST) % 10, gz=gz)
    write_mnist_c(root, n=MNIST_C_PER)
    return root


def cifar_args(root: Path) -> list[str]:
    """CLI options that point CIFAR10DataModule at ``write_cifar_benchmark(root)``."""
    return [f"--data.data_dir={root}", f"--data.val_size={VAL_SIZE}", f"--data.batch_size={BATCH_SIZE}",
            "--data.eval_batch_size=64"]


def mnist_args(root: Path) -> list[str]:
    """CLI options that point MNISTDataModule at ``write_mnist_benchmark(root)``."""
    return [f"--data.data_dir={root}", f"--data.val_size={VAL_SIZE}", f"--data.batch_size={BATCH_SIZE}",
            "--data.eval_batch_size=64"]
