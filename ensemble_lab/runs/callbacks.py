"""Callbacks the CLI registers by default (``--checkpoint.*``, ``--nan_guard.*``, ``--early_stopping.*``)."""

import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from ensemble_lab.compat import last_checkpoint_save_step, save_last_checkpoint_now, set_last_checkpoint_save_step
from ensemble_lab.errors import ConfigError, NonFiniteLossError

#: the name a parent run gives its checkpoint after epoch t (``--checkpoint.keep_epochs``)
SPAWN_CHECKPOINT = "spawn-epoch={epoch}.ckpt"


class NonFiniteLossGuard(Callback):
    """Stops training at the first NaN or infinite training loss; no checkpoint gets the bad weights.

    Each step only appends a device-side flag (no GPU-host sync); the flags are read every
    ``check_every_n_steps`` steps and always before a checkpoint is written. This callback's
    hooks run before ModelCheckpoint's, so a bad step raises before it could be saved, and
    ``last.ckpt`` keeps the weights of the last good save.
    """

    #: steps between two reads of the flags on an accelerator when ``check_every_n_steps`` is not set
    ACCELERATOR_CHECK_EVERY = 50

    def __init__(self, enabled: bool = True, check_every_n_steps: int | None = None) -> None:
        """
        Args:
            enabled: stop training on a NaN / inf loss (false: let it run on).
            check_every_n_steps: read the loss flags every N training steps; 1 stops at once, larger values avoid a GPU-host sync per step (checkpoints are always checked first). Default: every step when the loss is on the CPU (reading it costs nothing there), every 50 steps on a GPU.
        """
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ConfigError(f"--nan_guard.check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.enabled, self.check_every_n_steps = enabled, check_every_n_steps
        self._flags: list[Tensor] = []  # one 0-d bool per step since the last check: loss not finite
        self._losses: list[Tensor] = []
        self._where: list[tuple[int, int, int]] = []  # (epoch, batch, global step) of those steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not self.enabled or not isinstance(loss, Tensor):
            return
        loss = loss.detach()
        self._flags.append(~torch.isfinite(loss).all())
        self._losses.append(loss.float().sum())
        self._where.append((trainer.current_epoch, batch_idx, trainer.global_step))
        if len(self._flags) >= self.steps_between_checks(loss.device):
            self.check(trainer)

    def steps_between_checks(self, device: torch.device) -> int:
        """How many steps' flags are collected before they are read, for a loss on ``device``."""
        if self.check_every_n_steps is not None:
            return self.check_every_n_steps
        return 1 if device.type == "cpu" else self.ACCELERATOR_CHECK_EVERY

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # runs while the checkpoint is assembled, before anything is written: raising here keeps the old file
        if self.enabled and trainer.state.fn == TrainerFn.FITTING:
            self.check(trainer)
            finite = torch.stack([p.detach().isfinite().all() for p in pl_module.parameters()]).all()
            if not bool(finite):
                raise NonFiniteLossError(self._message(trainer, "the weights became NaN or infinite", *self._last_where(trainer)))

    def check(self, trainer: L.Trainer) -> None:
        """Raise NonFiniteLossError if any loss since the last check was NaN or infinite."""
        if not self._flags:
            return
        flags, losses, where = torch.stack(self._flags), self._losses, self._where
        self._flags, self._losses, self._where = [], [], []
        bad = flags.nonzero().flatten().tolist()  # the only host sync
        # under DDP every process must stop together, or the others wait forever in the next all-reduce
        if not trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            return
        if not bad:
            raise NonFiniteLossError(self._message(trainer, "the training loss was NaN or infinite in another process", *where[-1]))
        value = float(losses[bad[0]])
        kind = "NaN" if math.isnan(value) else f"{value}"
        raise NonFiniteLossError(self._message(trainer, f"the training loss was {kind}", *where[bad[0]]))

    def _last_where(self, trainer: L.Trainer) -> tuple[int, int, int]:
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_idx, trainer.global_step

    @staticmethod
    def _message(trainer: L.Trainer, what: str, epoch: int, batch: int, step: int) -> str:
        callback = trainer.checkpoint_callback
        last = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        # resuming would replay the same steps exactly (and the optimizer state keeps the old lr): start again
        kept = f"the last good checkpoint, {last}, keeps the weights from before it" if last else "no checkpoint had been written yet"
        return (
            f"training stopped: {what} at epoch {epoch}, batch {batch} (global step {step}); {kept}. "
            "Lower the learning rate (--model.optimizer.lr) or check the data, and start again."
        )


class FinalLastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt always holds the final weights of a finished fit.

    With ``every_n_train_steps`` Lightning saves only every N steps (it refuses epoch-end saves as
    well), so a fit ending between two saves would leave last.ckpt behind the weights that were
    evaluated. This writes last.ckpt once more at the end of training when needed, with the 0-based epoch
    of its weights (Lightning would record the epoch after them there).
    With ``monitor`` set, last.ckpt is still written at every save point (every epoch, or every N
    steps), not only when the monitored value improved.
    """

    def __init__(self, *args: Any, keep_epochs: list[int] | None = None, **kwargs: Any) -> None:
        """
        Args:
            keep_epochs: after each of these epochs (counted from 1: 5 is the end of the fifth), keep a copy of
                last.ckpt as ``spawn-epoch=<t>.ckpt`` beside it: the parent checkpoints spawned ensembles start
                from (``--model.spawn_from``). The other options are Lightning's ModelCheckpoint's.
        """
        super().__init__(*args, **kwargs)
        if keep_epochs is not None and any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in keep_epochs):
            raise ConfigError(f"--checkpoint.keep_epochs takes epochs counted from 1 (the end of the first epoch), got {keep_epochs}")
        self.keep_epochs = sorted(set(keep_epochs or []))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._keep_epoch(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._keep_epoch(trainer)

    def _keep_epoch(self, trainer: L.Trainer) -> None:
        """Copy last.ckpt to spawn-epoch=<t>.ckpt when it was just written at the end of epoch t, one of keep_epochs."""
        finished = trainer.current_epoch + 1
        if finished not in self.keep_epochs or trainer.sanity_checking or not self.last_model_path:
            return
        at_epoch_end = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch  # not a validation within the epoch
        if not at_epoch_end or last_checkpoint_save_step(self) != trainer.global_step or not trainer.is_global_zero:
            return
        last = Path(self.last_model_path)
        shutil.copyfile(last, last.with_name(SPAWN_CHECKPOINT.format(epoch=finished)))

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        super()._save_topk_checkpoint(trainer, monitor_candidates)
        if self.save_last is True and self.monitor is not None:
            # Lightning writes last.ckpt only where it wrote a top-k file: with a monitor, only when the score
            # improved, so an interruption would lose every epoch since. Taking this save point as done makes
            # its caller write last.ckpt now, as it does without a monitor.
            set_last_checkpoint_save_step(self, trainer.global_step)

    #: True while the saves at the end of training are written (see on_save_checkpoint)
    _saving_at_train_end = False

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A run that was moved or copied resumes with its checkpoints in their new folder, but its state names
        # the old one, and Lightning then drops last / top-k (a last-v1.ckpt beside last.ckpt, a stale top-k
        # file kept, an old best score forgotten). Where every file it names is in the new folder, it is the same run.
        super().load_state_dict(_moved_to(state_dict, self.dirpath))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saving_at_train_end = True
        try:
            super().on_train_end(trainer, pl_module)
            if self.save_last and trainer.global_step != last_checkpoint_save_step(self):
                save_last_checkpoint_now(self, trainer)
        finally:
            self._saving_at_train_end = False

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_end(trainer, pl_module)
        # a fit with nothing left to train (spawned at its last epoch) skips on_train_end: last.ckpt still gets its weights
        if self.save_last and not self.last_model_path and trainer.state.fn == TrainerFn.FITTING and not trainer.interrupted:
            self._saving_at_train_end = True
            try:
                save_last_checkpoint_now(self, trainer)
            finally:
                self._saving_at_train_end = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._saving_at_train_end:
            # By now the fit loop has counted its last epoch as done, so trainer.current_epoch is one past the
            # epoch these weights were trained in; the checkpoint's 0-based "epoch" must match the one an
            # epoch-end or step save of the same weights records. The loops' own state is left as it is.
            checkpoint["epoch"] = max(trainer.current_epoch - 1, 0)


def _moved_to(state: dict[str, Any], dirpath: str | Path | None) -> dict[str, Any]:
    """``state`` (a ModelCheckpoint's) with the checkpoint files it names under ``dirpath`` where its run's
    folder has moved there (every such file is in ``dirpath``); else ``state`` as it is."""
    recorded = state.get("dirpath")
    if not dirpath or not recorded or Path(recorded) == Path(dirpath):
        return state
    new = Path(dirpath)
    moved = lambda path: str(new / Path(path).name) if path else path
    named = [p for p in (state.get("best_model_path"), state.get("kth_best_model_path"), state.get("last_model_path"), *(state.get("best_k_models") or {})) if p]
    if not named or not all((new / Path(p).name).is_file() for p in named):
        return state
    best_k = {moved(p): score for p, score in (state.get("best_k_models") or {}).items()}
    paths = {k: moved(state.get(k)) for k in ("best_model_path", "kth_best_model_path", "last_model_path")}
    return {**state, **paths, "best_k_models": best_k, "dirpath": dirpath}


class OptionalEarlyStopping(EarlyStopping):
    """Lightning's EarlyStopping, off unless ``enabled``: ends a fit once the monitored validation metric
    has not improved for ``patience`` validations in a row. Disabled, it does nothing and adds nothing to
    checkpoints. The CLI checks ``monitor`` against the model's validation metrics before anything runs."""

    def __init__(
        self,
        enabled: bool = False,
        monitor: str = "val/acc",
        mode: Literal["min", "max"] = "max",
        patience: int = 10,
        min_delta: float = 0.0,
    ) -> None:
        """
        Args:
            enabled: stop training early when the monitored metric stops improving (false: train for --trainer.max_epochs). Without --checkpoint.monitor, the checkpoint then keeps the best epoch of the same metric (for --test_checkpoint best, test --ckpt_path best).
            monitor: the validation metric to watch: val/acc, val/nll, val/ece, val/mi or val/disagreement.
            mode: max: higher is better (val/acc); min: lower is better (val/nll, val/ece).
            patience: stop after this many validations in a row without an improvement (the authors' MNIST recipe: 10).
            min_delta: an improvement must be larger than this (the authors' MNIST recipe: 0.001).
        """
        if patience < 0:
            raise ConfigError(f"--early_stopping.patience must be >= 0, got {patience}")
        if min_delta < 0:
            raise ConfigError(f"--early_stopping.min_delta must be >= 0, got {min_delta}")
        super().__init__(monitor=monitor, mode=mode, patience=patience, min_delta=min_delta)
        self.enabled = enabled

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and self.stopping_reason_message:
            reason = self.stopping_reason_message.replace(" Signaling Trainer to stop.", "")
            rank_zero_info(f"ensemble-lab: early stopping after epoch {self.stopped_epoch} (0-based): {reason}")

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() if self.enabled else {}  # Lightning stores no empty state

    def _validate_condition_metric(self, logs: dict[str, Tensor]) -> bool:
        if self.monitor not in logs:  # e.g. no validation ran (--trainer.limit_val_batches 0)
            logged = ", ".join(sorted(logs)) or "nothing"
            raise ConfigError(f"--early_stopping.monitor {self.monitor}: no such metric was logged (logged: {logged})")
        return super()._validate_condition_metric(logs)
