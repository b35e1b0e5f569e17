"""Figures (e)-(g): ensemble-lab's real Trainer, evaluation and data pipeline against bare PyTorch.

(e) runs one Lightning fit of many epochs; a callback times each Lightning epoch and, between
epochs, one epoch of a hand-written loop over a copy of the same network and the same uint8 data,
alternating which of the two runs first. So both sides share the process, the warm caches and the
machine's load at that moment.
"""

import copy
import io
import tempfile
import time
from contextlib import redirect_stdout

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.nn import functional as F

from benchmarks.settings import Settings
from benchmarks.steps import SGD, make_method, training_step
from benchmarks.synthetic import RandomImagesDataModule
from benchmarks.timing import Figure, compare, from_pairs
from ensemble_lab.evaluation.outputs import EvaluationOptions, EvaluationOutputs, RunRecord
from ensemble_lab.methods import BatchEnsemble, SingleModel
from ensemble_lab.nn import tile_members


def datamodule(settings: Settings, train_images: int, test_images: int = 16) -> RandomImagesDataModule:
    s = settings.sizes
    dm = RandomImagesDataModule(
        train_size=train_images + 8, val_size=8, test_size=test_images, image_size=s.image,
        batch_size=s.batch, eval_batch_size=2 * s.batch,
    )
    dm.setup("fit")
    dm.setup("test")
    return dm


def trainer(settings: Settings, root: str, **options) -> L.Trainer:
    base = dict(
        logger=L.pytorch.loggers.TensorBoardLogger(root), enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=root,
    )
    return L.Trainer(**{**base, **settings.trainer_options(), **options})


class _RawLoop:
    """A minimal PyTorch training loop: shuffled indices, uint8 batches to the device, the same
    on-device preprocessing, forward on tiled rows, cross-entropy, backward, SGD step."""

    def __init__(self, module: BatchEnsemble, dm: RandomImagesDataModule, settings: Settings) -> None:
        self.network = copy.deepcopy(module.network).to(settings.device)
        self.optimizer = SGD(self.network.parameters())
        self.members, self.dm, self.settings = module.num_members, dm, settings
        self.images, self.labels = dm.train_set.images, dm.train_set.labels

    def epoch(self) -> float:
        sync, dev, m, bsz = self.settings.sync, self.settings.device, self.members, self.dm.batch_size
        sync()
        start = time.perf_counter()
        order = torch.randperm(len(self.labels))
        for i in range(0, len(order), bsz):
            idx = order[i : i + bsz]
            x = self.dm.preprocess(self.images[idx].to(dev, non_blocking=True), train=True)
            y = self.labels[idx].to(dev, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with self.settings.autocast():
                logits = self.network(tile_members(x, m))  # (M*B, C)
                loss = F.cross_entropy(logits, y.repeat(m))
            loss.backward()
            self.optimizer.step()
        sync()
        return time.perf_counter() - start


class _InterleaveEpochs(Callback):
    """Times each Lightning epoch (and, on CUDA, its peak memory) and one raw-loop epoch beside it, alternating the order."""

    def __init__(self, raw: _RawLoop, warmup: int, settings: Settings) -> None:
        self.raw, self.warmup, self.sync = raw, warmup, settings.sync
        self.cuda = settings.device.type == "cuda"
        self.lightning_times: list[float] = []
        self.raw_times: list[float] = []
        self.peaks_mib: list[float] = []  # peak CUDA allocation during each timed Lightning epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.raw_first = trainer.current_epoch % 2 == 1
        if self.raw_first:
            self.raw_time = self.raw.epoch()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.sync()
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.sync()
        lightning_time = time.perf_counter() - self.start
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None
        raw_time = self.raw_time if self.raw_first else self.raw.epoch()
        if trainer.current_epoch >= self.warmup:
            self.lightning_times.append(lightning_time)
            self.raw_times.append(raw_time)
            if peak is not None:
                self.peaks_mib.append(peak)


def training_epoch(settings: Settings) -> list[Figure]:
    """(e) one ensemble-lab training epoch (Trainer + BatchEnsemble + datamodule) vs the raw loop."""
    s = settings.sizes
    dm = datamodule(settings, s.train_images)
    module = make_method(BatchEnsemble, settings, "resnet18", num_members=s.members)
    timer = _InterleaveEpochs(_RawLoop(module, dm, settings), s.warmup, settings)
    with tempfile.TemporaryDirectory() as root:
        trainer(settings, root, max_epochs=s.warmup + s.epoch_pairs, callbacks=[timer]).fit(module, datamodule=dm)
    steps = -(-s.train_images // s.batch)
    figure = from_pairs(
        "(e) training epoch, BE resnet18", f"ensemble-lab fit ({steps} steps)", "raw PyTorch loop",
        timer.lightning_times, timer.raw_times, target="<= 1.05",
    )
    extra = sorted((a - b) / steps for a, b in zip(timer.lightning_times, timer.raw_times))
    figure.note = f"ensemble-lab's extra time per step: median {1e3 * extra[len(extra) // 2]:.2f} ms"
    return [figure]


def evaluation(settings: Settings) -> list[Figure]:
    """(f) the full test evaluation (3 sets, all metrics, result files) vs the forward passes alone."""
    s = settings.sizes
    dm = datamodule(settings, 16, s.test_images)
    module = make_method(BatchEnsemble, settings, "resnet18", num_members=s.members)
    figures = []
    with tempfile.TemporaryDirectory() as root:
        outputs = EvaluationOutputs(record=RunRecord(results_dir=root))  # results.json and the files into root
        test_trainer = trainer(settings, root, callbacks=[outputs])
        # the forward passes alone: the same preprocessed batches, already on the device
        batches = [
            dm.preprocess(images.to(settings.device), train=False)
            for name in dm.test_set_roles
            for images in dm.test_sets[name].images.split(dm.eval_batch_size)
        ]

        def forward_only() -> None:
            module.eval()
            with torch.inference_mode(), settings.autocast():
                for x in batches:
                    torch.softmax(module(x).float(), dim=-1)  # (M, B, C)

        for figures_on in (False, True) if s.figures_row else (False,):
            outputs.options = EvaluationOptions(save_predictions=True, figures=figures_on, overwrite=True)

            def suite() -> None:
                with redirect_stdout(io.StringIO()):  # the results table
                    test_trainer.test(module, datamodule=dm, verbose=False)

            label = "with figures" if figures_on else "metrics + files"
            # drawing the figures costs seconds whatever the set size: fewer pairs for that row
            pairs = max(3, s.epoch_pairs // 3) if figures_on else None
            figures.append(compare(
                f"(f) evaluation, {label}", (f"ensemble-lab test, {label}", suite), ("forward passes alone", forward_only),
                target=None if figures_on else "<= 1.10", **settings.timing(epoch=True, pairs=pairs),
            ))
    return figures


def data_pipeline(settings: Settings) -> list[Figure]:
    """(g) images/s of the data pipeline vs images/s of the cheapest model's training step.

    Reported as data images/s / model images/s = (model time per image) / (data time per image).
    """
    s = settings.sizes
    dm = datamodule(settings, s.train_images)
    loader = dm.train_dataloader()
    x, y = next(iter(loader))[:2]
    x, y = dm.preprocess(x.to(settings.device), train=True), y.to(settings.device)
    single = make_method(SingleModel, settings, "resnet18")
    step = training_step(single, x, y, settings)
    batches = len(loader)

    def model_epoch() -> None:  # as many steps as the loader has batches: the same images per call
        for _ in range(batches):
            step()

    def data_epoch() -> None:  # what Lightning does per batch before training_step
        for images, labels, _ in loader:
            dm.preprocess(images.to(settings.device, non_blocking=True), train=True)
            labels.to(settings.device, non_blocking=True)

    return [compare(
        "(g) data vs model img/s", ("single resnet18 steps", model_epoch), ("loader + preprocess", data_epoch),
        target=">= 10", note="ratio = model time / data time for the same images", **settings.timing(epoch=True),
    )]
