"""Sizes of each benchmark mode and the shared run settings (device, precision, memory format)."""

import contextlib
from dataclasses import dataclass, replace

import torch

from benchmarks.timing import device_sync


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one mode. Rows of an ensemble layer are M·B (members × batch)."""

    members: int  # M
    batch: int  # B, unique images per step
    features: int  # BatchLinear / Linear width (a)
    channels: int  # BatchConv2d / Conv2d channels (a)
    conv_size: int  # spatial size of the conv benchmark's input (a)
    width: int  # ResNet-18 first-stage channels (64 in the paper)
    image: int  # CIFAR-shaped images: 3 × image × image
    mlp_batch: int  # batch of the MNIST-shaped MLP step (b)
    train_images: int  # images in one training epoch (e, g)
    test_images: int  # images in each of the 3 test sets (f)
    pairs: int  # interleaved A/B pairs per figure
    epoch_pairs: int  # pairs for the epoch-sized figures (e, f), which cost more per pair
    warmup: int  # thrown-away calls of A and B before timing
    min_time: float  # seconds each timing should last at least (short calls are repeated)
    figures_row: bool = True  # also time (f) with figures drawn: a fixed ~1 s per test run on CPU
    # the ViTs of figure (l), on the mode's images: ViT-Tiny at CIFAR scale unless a mode says otherwise
    vit_patch: int = 4
    vit_dim: int = 192
    vit_depth: int = 12
    vit_heads: int = 3
    tabular_features: int = 16  # input width of the tabular MLP (m)
    tabular_width: int = 128  # its hidden width, 3 hidden layers as TabM's default depth (m)
    tabular_batch: int = 64  # rows per member of a tabular step (m)
    tabm_members: int = 32  # TabM's k (m)


MODES = {
    # Seconds, to keep the suite from rotting in the tests; the figures mean nothing.
    "micro": Sizes(members=2, batch=4, features=16, channels=4, conv_size=8, width=2, image=8, mlp_batch=8,
                   train_images=24, test_images=12, pairs=2, epoch_pairs=2, warmup=1, min_time=0.0,
                   vit_dim=8, vit_depth=1, vit_heads=2, tabular_features=5, tabular_width=8, tabular_batch=4, tabm_members=4),
    # Under 3 minutes on 2 CPU cores: ResNet-18 at width 16 on 32×32 random images.
    "quick": Sizes(members=4, batch=16, features=256, channels=32, conv_size=16, width=16, image=32, mlp_batch=128,
                   train_images=128, test_images=96, pairs=21, epoch_pairs=7, warmup=2, min_time=0.05, figures_row=False,
                   vit_dim=96, vit_depth=2, vit_heads=3),
    # The paper's shapes: ResNet-18 width 64, CIFAR-10 batches of 128, M = 4 (meant for a GPU).
    "full": Sizes(members=4, batch=128, features=512, channels=64, conv_size=32, width=64, image=32, mlp_batch=128,
                  train_images=5120, test_images=2048, pairs=31, epoch_pairs=11, warmup=3, min_time=0.2,
                  tabular_width=512, tabular_batch=256),  # TabM's published width and batch
}


@dataclass(frozen=True)
class Settings:
    """Where and how the benchmarks run."""

    sizes: Sizes
    device: torch.device
    precision: str = "32-true"  # or "bf16-mixed"
    channels_last: bool = False
    compile: bool = False  # torch.compile every method's network (figure j)
    methods: tuple[str, ...] | None = None  # the methods of figure (j); None: every configs/cifar10 file

    def with_pairs(self, pairs: int | None) -> "Settings":
        if pairs is None:
            return self
        return replace(self, sizes=replace(self.sizes, pairs=pairs, epoch_pairs=max(3, pairs // 2)))

    @property
    def sync(self):
        return device_sync(self.device)

    def autocast(self):
        """bf16 autocast for hand-written steps, as Lightning's bf16-mixed does for its own."""
        if self.precision == "bf16-mixed":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def timing(self, epoch: bool = False, pairs: int | None = None) -> dict:
        s = self.sizes
        pairs = pairs or (s.epoch_pairs if epoch else s.pairs)
        return dict(pairs=pairs, warmup=s.warmup, min_time=s.min_time, sync=self.sync)

    def trainer_options(self) -> dict:
        accelerator = "gpu" if self.device.type == "cuda" else "cpu"
        return dict(accelerator=accelerator, devices=1, precision=self.precision)
