"""Resuming a run in its own directory: ``--ckpt_path last``, the logger's version, config files.

Lightning resolves ``ckpt_path="last"`` inside the *new* run's checkpoint folder
(``lightning_logs/version_<N+1>/checkpoints``), which is empty, so a plain resume silently starts
from scratch. Here "last" means the newest ``last.ckpt`` below the logger's root
(``lightning_logs/version_*/checkpoints``), and a resumed ``fit`` keeps writing into the run
directory it resumes (TensorBoard events, checkpoints, results.json), and so does a ``test`` of one
of the run's checkpoints. The run directory is always the one the checkpoint is in
(``<run>/checkpoints/x.ckpt``), wherever the run has been moved or copied to. Its config.yaml is kept; the resume's or test's own config goes beside it
as ``config.resume-<N>.yaml`` or ``config.test-<N>.yaml``.
"""

import re
from pathlib import Path
from typing import cast

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from ensemble_lab.compat import place_logger_run, set_default_root_dir
from ensemble_lab.errors import ConfigError
from ensemble_lab.io import first_free_number
from ensemble_lab.runs.callbacks import FinalLastCheckpoint
from ensemble_lab.runs.checkpoint_files import check_checkpoint_file
from ensemble_lab.runs.checkpoints import best_checkpoint_of
from ensemble_lab.runs.layout import run_dir_of_checkpoint

SPECIAL = ("best", "hpc", "registry")  # Lightning's other ckpt_path keywords ("best" is made a file first: _best_checkpoint)
_LAST = re.compile(r"^last(-v\d+)?\.ckpt$")  # Lightning names a second last checkpoint last-v1.ckpt


def _versioned_logger(trainer: L.Trainer) -> TensorBoardLogger | CSVLogger | None:
    logger = trainer.logger
    return logger if isinstance(logger, (TensorBoardLogger, CSVLogger)) else None


def _own_dirpath(trainer: L.Trainer) -> bool:
    """True if some ModelCheckpoint was given an explicit dirpath (then Lightning's "last" is right)."""
    callbacks = cast(list[Callback], getattr(trainer, "callbacks"))  # set by Lightning's callback connector, not declared on Trainer
    return any(isinstance(cb, ModelCheckpoint) and cb.dirpath for cb in callbacks)


def find_last_checkpoint(root: Path) -> Path | None:
    """The most recently written last.ckpt in ``root/<run>/checkpoints/``, or None."""
    found = [p for p in Path(root).glob("*/checkpoints/last*.ckpt") if _LAST.match(p.name)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def weights_replaced(ckpt_path: str | None, spawn_from: str | None, fitting: bool) -> bool:
    """Whether a subcommand loads a checkpoint over every weight of the model it builds first: any ``--ckpt_path``
    but fit's "last" (which, finding no run, trains from scratch), or ``--model.spawn_from``."""
    return bool(spawn_from) or (bool(ckpt_path) and not (fitting and ckpt_path == "last"))


def resolve_ckpt_path(trainer: L.Trainer, ckpt_path: str | None, fitting: bool) -> str | None:
    """A concrete checkpoint file for ``ckpt_path`` ("last" and "best" included), or None to start fresh.

    Raises CheckpointFileError for a path that is no usable file, ConfigError for "last" with nothing to resume
    outside ``fit`` (``fit`` then starts a new run, so one command both starts and resumes).
    "best" is the best-validation checkpoint of the newest run (the one "last" would pick).
    """
    if ckpt_path == "best":
        return str(_best_checkpoint(trainer, fitting))
    if not ckpt_path or ckpt_path in SPECIAL:
        return ckpt_path
    if ckpt_path != "last":
        check_checkpoint_file(ckpt_path, "--ckpt_path")  # missing, a directory, empty: one line naming it
        return ckpt_path
    logger = _versioned_logger(trainer)
    if logger is None or _own_dirpath(trainer):
        return ckpt_path  # a custom layout: leave "last" to Lightning
    root = Path(logger.root_dir)
    last = find_last_checkpoint(root)
    if last is not None:
        return str(last)
    if not fitting:
        raise ConfigError(f"--ckpt_path last: no run with a checkpoints/last.ckpt below {root}; give the checkpoint's path")
    rank_zero_info(f"ensemble-lab: --ckpt_path last: no checkpoints/last.ckpt below {root} yet, starting a new run")
    return None


def _best_checkpoint(trainer: L.Trainer, fitting: bool) -> Path:
    """``--ckpt_path best``: the checkpoint the newest run's ModelCheckpoint kept for its best monitored value
    (Lightning's own "best" means this process's checkpoint callback, empty in a new command)."""
    if fitting:
        raise ConfigError(
            "fit --ckpt_path best: a fit continues from its final state (--ckpt_path last); test, validate "
            "and predict take --ckpt_path best"
        )
    callbacks = cast(list[Callback], getattr(trainer, "callbacks"))
    own = [Path(cb.dirpath) for cb in callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    logger = _versioned_logger(trainer)
    if own:
        where = own[0]
        found = [p for p in where.glob("last*.ckpt") if _LAST.match(p.name)]
        last = max(found, key=lambda p: p.stat().st_mtime) if found else None
    elif logger is not None:
        where = Path(logger.root_dir)
        last = find_last_checkpoint(where)
    else:
        raise ConfigError("--ckpt_path best needs the runs' logger (lightning_logs/) to find them; give the checkpoint's path")
    if last is None:
        raise ConfigError(f"--ckpt_path best: no run with a checkpoints/last.ckpt below {where}; give the checkpoint's path")
    return best_checkpoint_of(last)


def continue_run(trainer: L.Trainer, ckpt_path: str) -> Path | None:
    """Make every output of this command go into the run directory of ``<run>/checkpoints/x.ckpt``.

    The run is where its checkpoint is: a run that was moved, renamed or copied (a study's run included)
    is continued where it is now, whatever root, logger name or version its config.yaml recorded (those
    name where the run was first made). The trainer's logger is pointed at the run (TensorBoard and CSV
    loggers; with no logger, the trainer's root), and a ``--checkpoint.dirpath`` at its checkpoints/.
    Returns that run directory, or None when the checkpoint is not in a ``checkpoints/`` folder (another
    layout: Lightning's placement is kept) or the logger is of another kind.
    """
    run_dir = run_dir_of_checkpoint(Path(ckpt_path).expanduser().resolve())
    if run_dir is None:
        return None
    logger = _versioned_logger(trainer)
    if logger is not None:
        # log_dir = <save_dir>/<name>/<version>: nothing has been logged yet, so no directory exists elsewhere
        save_dir, name = str(run_dir.parent.parent), run_dir.parent.name
        place_logger_run(logger, save_dir, name, run_dir.name)  # events beside the run's checkpoints, not in a subfolder
    elif trainer.loggers:
        return None  # a logger that places runs its own way (W&B, MLflow, ...)
    else:
        set_default_root_dir(trainer, str(run_dir))  # no logger: checkpoints/ goes below the trainer root
    callbacks = cast(list[Callback], getattr(trainer, "callbacks"))  # set by Lightning's callback connector, not declared on Trainer
    for callback in callbacks:  # the --checkpoint callback; a user's own ModelCheckpoint keeps its folder
        if isinstance(callback, FinalLastCheckpoint) and callback.dirpath:
            callback.dirpath = str(run_dir / "checkpoints")
    return run_dir


class RunConfigSaver(SaveConfigCallback):
    """Saves the run's config.yaml; never overwrites it.

    A command that continues in an existing run directory (a resumed fit, a test of the run's
    checkpoint) writes ``config.<kind>-<N>.yaml`` instead (N = 1, 2, ...), so the original
    options and those of every later command stay on record.
    """

    #: set by the CLI to the run directory a resumed fit or a test continues in
    resumed_run_dir: Path | None = None
    #: what continues there: "resume" or "test"; names the extra config file
    continued_as: str = "resume"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.already_saved and self.resumed_run_dir is not None and trainer.log_dir:
            log_dir = Path(trainer.log_dir)
            if log_dir.resolve() == self.resumed_run_dir and (log_dir / self.config_filename).exists():
                n = first_free_number(lambda k: (log_dir / f"config.{self.continued_as}-{k}.yaml").exists())
                self.config_filename = f"config.{self.continued_as}-{n}.yaml"
        super().setup(trainer, pl_module, stage)
