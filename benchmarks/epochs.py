"""Figure (j): one CIFAR-shaped training epoch of every method, through the real Trainer, in images/s.

Each method is built from its shipped ``configs/cifar10/<name>.yaml`` (its own options: M, α, γ,
ρ, dropout, ...; the ResNet-18 width is the mode's), and trained for a few epochs of random
CIFAR-shaped images by ``Trainer.fit`` with the real datamodule machinery (loader, on-device crop,
flip and normalisation). A callback times every Lightning epoch and, beside it, one epoch of a
hand-written loop training a plain ResNet-18 on the same images, alternating which runs first. The
figure is the ratio of the two (what the method costs per unique image against one plain network),
and its note the method's images/s and, on a GPU, the peak memory allocated during its epochs.
"""

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.callbacks import Callback

from benchmarks.pipeline import _RawLoop, datamodule, trainer
from benchmarks.settings import Settings
from benchmarks.steps import make_method
from benchmarks.timing import Figure, from_pairs
from ensemble_lab import methods
from ensemble_lab.methods.base import EnsembleModule

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "cifar10"
#: the methods in the order of the table; each is configs/cifar10/<name>.yaml
METHODS = ("single", "batch_ensemble", "deep_ensemble", "mc_dropout", "packed", "mimo", "masksembles", "low_rank")
#: options of a config that the benchmark sets itself (optimizer: the paper's SGD; no schedule)
SET_HERE = ("optimizer", "lr_scheduler", "width", "channels_last", "compile")


def method_of(name: str) -> tuple[type[EnsembleModule], dict[str, Any]]:
    """The method class and its own options, as ``configs/cifar10/<name>.yaml`` gives them."""
    model = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["model"]
    cls = getattr(methods, model["class_path"].rsplit(".", 1)[-1])
    options = {k: v for k, v in model.get("init_args", {}).items() if k not in SET_HERE and k != "backbone"}
    return cls, options


class _EpochTimer(Callback):
    """Times each Lightning epoch (and its peak CUDA memory) and one reference epoch beside it."""

    def __init__(self, reference: _RawLoop, warmup: int, settings: Settings) -> None:
        self.reference, self.warmup, self.sync = reference, warmup, settings.sync
        self.cuda = settings.device.type == "cuda"
        self.method_times: list[float] = []
        self.reference_times: list[float] = []
        self.peaks: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.reference_first = trainer.current_epoch % 2 == 1
        if self.reference_first:
            self.reference_time = self.reference.epoch()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.sync()
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.sync()
        method_time = time.perf_counter() - self.start
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None
        reference_time = self.reference_time if self.reference_first else self.reference.epoch()
        if trainer.current_epoch >= self.warmup:
            self.method_times.append(method_time)
            self.reference_times.append(reference_time)
            if peak is not None:
                self.peaks.append(peak)


def method_epoch(name: str, settings: Settings) -> Figure:
    """(j) for one method: its Lightning epoch against the plain ResNet-18's hand-written epoch."""
    s = settings.sizes
    cls, options = method_of(name)
    dm = datamodule(settings, s.train_images)
    module = make_method(cls, settings, "resnet18", compile=settings.compile, **options)
    reference = _RawLoop(make_method(methods.SingleModel, settings, "resnet18", compile=settings.compile), dm, settings)
    warmup = s.warmup if settings.compile else 1  # compiling takes the first epochs
    pairs = max(3, s.epoch_pairs // 2)
    timer = _EpochTimer(reference, warmup, settings)
    with tempfile.TemporaryDirectory() as root:
        trainer(settings, root, max_epochs=warmup + pairs, callbacks=[timer]).fit(module, datamodule=dm)
    seconds = sorted(timer.method_times)[len(timer.method_times) // 2]
    memory = f", peak {max(timer.peaks):.0f} MiB allocated" if timer.peaks else ""
    return from_pairs(
        f"(j) training epoch, {name}", f"{cls.__name__} M={module.num_members} fit", "plain ResNet-18 loop",
        timer.method_times, timer.reference_times,
        note=f"{s.train_images / seconds:.0f} images/s{memory}",
    )


def training_epochs(settings: Settings) -> list[Figure]:
    """(j) every shipped CIFAR-10 method's training epoch in images/s, against a plain ResNet-18's."""
    # Masksembles needs layers of at least 10 channels for distinct masks (micro mode's width is 2)
    settings = dataclasses.replace(settings, sizes=dataclasses.replace(settings.sizes, width=max(settings.sizes.width, 16)))
    return [method_epoch(name, settings) for name in settings.methods or METHODS]
