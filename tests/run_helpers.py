"""Test-only callbacks and datamodules that the real CLI loads by class path."""

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from ensemble_lab.data.digits import DigitsDataModule


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Run the block with ``path`` as the current directory (where lightning_logs/ goes)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


class PauseAtStep(Callback):
    """After optimizer step ``step``, create ``flag_file`` and sleep, so a test can SIGKILL the process there."""

    def __init__(self, step: int, flag_file: str) -> None:
        """
        Args:
            step: global step after which to pause.
            flag_file: created when the pause begins.
        """
        self.step, self.flag_file = step, flag_file

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            Path(self.flag_file).write_text(str(os.getpid()))
            time.sleep(300)


class FiveClassDigits(DigitsDataModule):
    """Digits that claim five classes: a datamodule whose num_classes differs from a checkpoint's."""

    num_classes = 5


class AugmentedDigits(DigitsDataModule):
    """Digits with random crops and flips, so training draws from the global torch RNG."""

    crop_padding = 1
    flip = True


class NaNAtStep(Callback):
    """Turns the training batch of global step ``step`` into NaNs: an injected non-finite loss."""

    def __init__(self, step: int) -> None:
        """
        Args:
            step: global step (optimizer steps done so far) whose batch becomes NaN.
        """
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            batch[0].fill_(float("nan"))  # training_step receives this very tensor


class SigintOnce(Callback):
    """Sends this process SIGINT, as Ctrl-C does, once (while ``flag_file`` does not exist yet):
    after optimizer step ``step`` (``phase="fit"``) or after the first batch of the post-fit test (``"test"``)."""

    def __init__(self, phase: str, flag_file: str, step: int = 1, signal_name: str = "SIGINT") -> None:
        """
        Args:
            phase: "fit" or "test".
            flag_file: created when the signal is sent; while it exists, nothing is sent.
            step: the optimizer step after which a "fit" signal is sent.
            signal_name: the signal, SIGINT (Ctrl-C) or SIGTERM (a scheduler's stop).
        """
        self.phase, self.flag_file, self.step = phase, Path(flag_file), step
        self.signal = getattr(signal, signal_name)

    def _send(self) -> None:
        if not self.flag_file.exists():
            self.flag_file.write_text("sent")
            os.kill(os.getpid(), self.signal)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if self.phase == "fit" and trainer.global_step == self.step:
            self._send()

    def on_test_batch_end(self, trainer: L.Trainer, *args) -> None:
        if self.phase == "test":
            self._send()


def sigint_once(phase: str, flag_file: Path, step: int = 1, signal_name: str = "SIGINT") -> str:
    """The --trainer.callbacks option that adds SigintOnce to a run."""
    init = {"phase": phase, "flag_file": str(flag_file), "step": step, "signal_name": signal_name}
    callback = {"class_path": "tests.run_helpers.SigintOnce", "init_args": init}
    return f"--trainer.callbacks={json.dumps([callback])}"
