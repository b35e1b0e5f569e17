"""The training hot path never makes the host wait for the device.

On CPU nothing ever waits, so the CPU test catches the Python-level causes instead: every aten op
that reads a value back to Python (``.item()``, ``bool(t)``, ``float(t)``, printing), that has a
data-dependent output size (``nonzero``, boolean masks, ``unique``), that builds a tensor from
Python data (``torch.tensor([...])``: a host-to-device copy), plus ``tolist`` / ``numpy``. Any of
these on a CUDA tensor is a synchronisation. The guard covers every training batch but the first
(one-time setup may sync), from the datamodule's ``on_after_batch_transfer`` to the end of
``on_train_batch_end``: training_step, logging, backward, optimizer step, progress bar. The
periodic logger flush every ``log_every_n_steps`` lies outside it on purpose. Where CUDA exists the
same window also runs under ``torch.cuda.set_sync_debug_mode("error")``.
"""

import contextlib

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.synthetic import RandomImagesDataModule
from ensemble_lab.data import DigitsDataModule
from ensemble_lab.methods import BatchEnsemble, DeepEnsemble, MCDropout, SingleModel

aten = torch.ops.aten
#: ops whose result the host must wait for (a value read back, or an output size known only after the kernel)
SYNCING_OPS = {
    aten._local_scalar_dense,  # .item(), bool(t), float(t), int(t), printing
    aten.nonzero,
    aten.masked_select,
    aten._unique,
    aten._unique2,
    aten.unique_dim,
    aten.unique_consecutive,
    aten.equal,
    aten.lift_fresh,  # torch.tensor / as_tensor of Python data: a blocking host-to-device copy on a GPU
}


class HostSync(AssertionError):
    """Raised by the guard where the training hot path would synchronise with the device."""


class HostSyncGuard(TorchDispatchMode):
    """Fail on any op in SYNCING_OPS while active."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in SYNCING_OPS or _boolean_mask_index(func, args):
            raise HostSync(f"{func} would make the host wait for the device in the training hot path")
        return func(*args, **(kwargs or {}))


def _boolean_mask_index(func, args) -> bool:
    """x[mask] and x[mask] = v: the number of selected elements is known only after the kernel ran."""
    if func.overloadpacket not in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_):
        return False
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


@contextlib.contextmanager
def no_host_sync(monkeypatch):
    """The dispatch guard, ``tolist`` / ``numpy`` / printing refused, and CUDA's sync debug mode where it exists."""

    def refuse(name):
        def method(*args, **kwargs):
            raise HostSync(f"Tensor.{name} would copy to the host in the training hot path")

        return method

    with monkeypatch.context() as patch:
        # printing a tensor reads its values, but runs with dispatch modes disabled
        for name in ("tolist", "numpy", "__repr__", "__str__", "__format__"):
            patch.setattr(torch.Tensor, name, refuse(name))
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_sync_debug_mode("error")
        try:
            with HostSyncGuard():
                yield
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")


class GuardTrainBatches(Callback):
    """Enter the guard in on_train_batch_start (first callback); the module's hook leaves it.

    Lightning calls every callback's on_train_batch_end before the module's, so the progress bar's
    update lies inside the window. The first batch is left unguarded: one-time work (constants
    moved to the device, optimizer state created) may happen there.
    """

    def __init__(self, monkeypatch) -> None:
        self.monkeypatch, self.guard, self.batches, self.guarded = monkeypatch, None, 0, 0

    def enter(self) -> None:
        self.guard = no_host_sync(self.monkeypatch)
        self.guard.__enter__()

    def leave(self) -> None:
        if self.guard is not None:
            self.guard.__exit__(None, None, None)
            self.guard = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx > 0:
            self.enter()
            self.guarded += 1

    def install(self, model: L.LightningModule, datamodule: L.LightningDataModule) -> None:
        module_batch_end = model.on_train_batch_end
        transfer = datamodule.on_after_batch_transfer

        def on_train_batch_end(*args, **kwargs):
            module_batch_end(*args, **kwargs)
            self.leave()
            self.batches += 1

        def on_after_batch_transfer(batch, dataloader_idx):
            if not datamodule.trainer.training or self.batches == 0:
                return transfer(batch, dataloader_idx)
            with no_host_sync(self.monkeypatch):
                return transfer(batch, dataloader_idx)

        model.on_train_batch_end = on_train_batch_end
        datamodule.on_after_batch_transfer = on_after_batch_transfer


def test_the_guard_catches_syncs(monkeypatch):
    x = torch.randn(4)
    for sync in (lambda: x.sum().item(), lambda: bool(x.sum() > 0), lambda: float(x[0]), lambda: print(x), lambda: f"{x.sum():.3f}",
                 lambda: x[x > 0], lambda: x.tolist(), lambda: torch.unique(x),
                 lambda: x + torch.as_tensor([1.0, 2.0, 3.0, 4.0])):
        with pytest.raises(HostSync), no_host_sync(monkeypatch):
            sync()
    with no_host_sync(monkeypatch):  # shapes and device-side arithmetic are fine
        (x * 2).softmax(0).argmax().view(1) + x.shape[0]


CASES = [
    (SingleModel, dict(backbone="mlp", hidden_sizes=(16,)), "digits"),
    (BatchEnsemble, dict(num_members=3, backbone="mlp", hidden_sizes=(16,)), "digits"),
    (BatchEnsemble, dict(num_members=2, backbone="resnet18", width=4), "random"),
    (DeepEnsemble, dict(num_members=2, backbone="resnet18", width=4), "random"),
    (MCDropout, dict(num_members=2, backbone="resnet18", width=4, dropout=0.1), "random"),
]


@pytest.mark.parametrize("method,options,data", CASES, ids=lambda c: getattr(c, "__name__", None))
def test_training_steps_never_sync(monkeypatch, tmp_path, method, options, data):
    torch.manual_seed(0)
    if data == "digits":
        datamodule = DigitsDataModule(batch_size=16)
    else:  # CIFAR-shaped, so crop and flip run in on_after_batch_transfer
        datamodule = RandomImagesDataModule(train_size=160, test_size=16, image_size=8, batch_size=8, val_size=32)
    # SGD as in the paper's CIFAR recipe; Adam's step counter lives on the host (a CPU tensor),
    # which costs no device sync on a GPU but would trip the CPU-side guard.
    model = method(
        num_classes=10, input_shape=datamodule.input_shape, optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), **options
    )
    guard = GuardTrainBatches(monkeypatch)
    guard.install(model, datamodule)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=0,
        log_every_n_steps=2,  # the logger flush between guarded steps must not matter
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=True,
        default_root_dir=tmp_path,
        accelerator="cuda" if torch.cuda.is_available() else "cpu",
        devices=1,
        callbacks=[guard],
    )
    try:
        trainer.fit(model, datamodule=datamodule)
    finally:
        guard.leave()
    assert guard.batches == 4 and guard.guarded == 3
