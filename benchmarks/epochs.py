"""Figure (j): one CIFAR-shaped training epoch of every method, through the real Trainer, in images/s.

Each method is built from its shipped ``configs/cifar10/<name>.yaml`` (its own options: M, α, γ,
ρ, dropout, ...; the ResNet-18 width is the mode's), and trained for a few epochs of random
CIFAR-shaped images by ``Trainer.fit`` with the real datamodule machinery (loader, on-device crop,
flip and normalisation). A callback times every Lightning epoch and, beside it, one epoch of a
hand-written loop training a plain ResNet-18 on the same images, alternating which runs first. The
figure is the ratio of the two (what the method costs per unique image against one plain network),
and its note the method's images/s, the peak memory of live tensors in one of its training steps on B
images (also as a multiple of the plain ResNet-18's step) and, on a GPU, the peak allocated during its epochs.
"""

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks.pipeline import _InterleaveEpochs, _RawLoop, datamodule, trainer
from benchmarks.settings import Settings
from benchmarks.steps import batch, make_method, training_memory_mib
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


def method_epoch(name: str, settings: Settings) -> Figure:
    """(j) for one method: its Lightning epoch against the plain ResNet-18's hand-written epoch."""
    s = settings.sizes
    cls, options = method_of(name)
    dm = datamodule(settings, s.train_images)
    module = make_method(cls, settings, "resnet18", compile=settings.compile, **options)
    reference = _RawLoop(make_method(methods.SingleModel, settings, "resnet18", compile=settings.compile), dm, settings)
    warmup = s.warmup if settings.compile else 1  # compiling takes the first epochs
    pairs = max(3, s.epoch_pairs // 2)
    timer = _InterleaveEpochs(reference, warmup, settings)
    with tempfile.TemporaryDirectory() as root:
        trainer(settings, root, max_epochs=warmup + pairs, callbacks=[timer]).fit(module, datamodule=dm)
    seconds = sorted(timer.lightning_times)[len(timer.lightning_times) // 2]
    memory = f", peak {max(timer.peaks_mib):.0f} MiB allocated" if timer.peaks_mib else ""
    if not settings.compile:  # a dispatch mode and compiled graphs do not mix
        x, y = batch(settings, "resnet18", s.batch)
        plain = make_method(methods.SingleModel, settings, "resnet18")
        tensors = [training_memory_mib(m, x, y, settings) for m in (module, plain)]
        memory += f", step peak tensors {tensors[0]:.1f} MiB ({tensors[0] / tensors[1]:.2f}x plain)"
    return from_pairs(
        f"(j) training epoch, {name}", f"{cls.__name__} M={module.num_members} fit", "plain ResNet-18 loop",
        timer.lightning_times, timer.raw_times,
        note=f"{s.train_images / seconds:.0f} images/s{memory}",
    )


def training_epochs(settings: Settings) -> list[Figure]:
    """(j) every shipped CIFAR-10 method's training epoch in images/s, against a plain ResNet-18's."""
    # Masksembles needs layers of at least 10 channels for distinct masks (micro mode's width is 2)
    settings = dataclasses.replace(settings, sizes=dataclasses.replace(settings.sizes, width=max(settings.sizes.width, 16)))
    return [method_epoch(name, settings) for name in settings.methods or METHODS]
