"""Every private member of Lightning, jsonargparse / argparse and torch that ensemble-lab touches, in one place.

Each function's name says what it does; its body is the only line that knows the private name. An
upgrade that renames one fails in ``tests/test_compat.py``, under that function's name, rather than
somewhere in a run.

Tested with lightning 2.6.6 (lightning_utilities 0.15), jsonargparse 4.53.0 and torch 2.14; pyproject.toml
bounds the versions accordingly (``lightning>=2.4,<2.7``, ``jsonargparse[signatures]>=4.27,<5``).

Private hooks that ensemble-lab overrides in subclasses (they cannot move here; an upgrade that renames
one silently drops the override, so the tests of each behaviour cover them):

- ``LightningCLI._set_seed`` (config/lightning_cli.py): ``--seed_everything true`` draws a real seed;
- ``LightningCLI._run_subcommand``: an unstarted run's directory is removed after a user error;
- ``LightningCLI._parse_ckpt_path``: a checkpoint's hyper-parameters never replace the config;
- ``LightningCLI._prepare_subcommand_parser``: per-subcommand defaults and ``--ckpt_path`` help;
- ``ModelCheckpoint._save_topk_checkpoint`` (runs/callbacks.py, FinalLastCheckpoint): last.ckpt at every save point;
- ``EarlyStopping._validate_condition_metric`` (runs/callbacks.py, OptionalEarlyStopping): a one-line error.
"""

import argparse
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

# torch's dispatch mode and pytree helpers have no public home (metrics/tensor_memory.py counts tensors with them)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = [
    "TorchDispatchMode",
    "attached_trainer",
    "cli_instance",
    "cli_subcommand_parser",
    "drop_placeholder_hp_metric",
    "last_checkpoint_save_step",
    "logger_version",
    "parser_actions",
    "place_logger_run",
    "save_last_checkpoint_now",
    "set_default_root_dir",
    "set_last_checkpoint_save_step",
    "set_logging_step",
    "tree_leaves",
]


# ---- trainer and module --------------------------------------------------------------------------
def set_logging_step(trainer: L.Trainer, step: int) -> None:
    """Make scalars logged from now on (outside fit: test, validate) carry ``step`` on the loggers' x axis.

    Lightning logs at the fit loop's count of optimizer steps, 0 in a fresh trainer."""
    trainer.fit_loop.epoch_loop._batches_that_stepped = step


def logging_step(trainer: L.Trainer) -> int:
    """The step the loggers record scalars at (what :func:`set_logging_step` sets)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def set_default_root_dir(trainer: L.Trainer, path: str) -> None:
    """Move the trainer's root (where checkpoints/ goes without a logger) to ``path``."""
    setattr(trainer, "_default_root_dir", path)  # set in Trainer.__init__, not declared on the class


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The trainer ``module`` is attached to, or None (``module.trainer`` raises instead)."""
    return getattr(module, "_trainer", None)


# ---- loggers ------------------------------------------------------------------------------------
def logger_version(logger: Logger) -> int | str | None:
    """The logger's version if it is already fixed, else None; unlike ``logger.version`` this never picks
    the next free version_N (which looks at the disk)."""
    return getattr(logger, "_version", None)


def drop_placeholder_hp_metric(logger: TensorBoardLogger) -> None:
    """Stop the TensorBoard logger from writing its placeholder ``hp_metric = -1`` with the hyper-parameters."""
    logger._default_hp_metric = False


def place_logger_run(logger: TensorBoardLogger | CSVLogger, save_dir: str, name: str, version: str) -> None:
    """Point ``logger`` at ``<save_dir>/<name>/<version>`` before it has written anything, TensorBoard's
    events directly there (no sub_dir)."""
    if isinstance(logger, CSVLogger):
        logger._save_dir = save_dir
    logger._root_dir, logger._name, logger._version = save_dir, name, version
    if isinstance(logger, TensorBoardLogger):
        logger._sub_dir = None


# ---- ModelCheckpoint -----------------------------------------------------------------------------
def last_checkpoint_save_step(checkpoint: ModelCheckpoint) -> int:
    """The global step of the callback's latest save point (last.ckpt is written once per step)."""
    return int(checkpoint._last_global_step_saved)


def set_last_checkpoint_save_step(checkpoint: ModelCheckpoint, step: int) -> None:
    """Record ``step`` as the callback's latest save point: Lightning then writes last.ckpt there."""
    checkpoint._last_global_step_saved = step


def save_last_checkpoint_now(checkpoint: ModelCheckpoint, trainer: L.Trainer) -> None:
    """Write the callback's last.ckpt now, with the metrics the trainer has logged."""
    checkpoint._save_last_checkpoint(trainer, checkpoint._monitor_candidates(trainer))


# ---- argument parsers ----------------------------------------------------------------------------
def parser_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every option (action) the parser declares, its subcommands' actions included as one action."""
    return list(parser._actions)


def cli_subcommand_parser(cli: LightningCLI, subcommand: str | None) -> Any:
    """The LightningCLI's parser of ``subcommand`` (None: its only parser, without subcommands)."""
    return cli._parser(subcommand)


def cli_instance(cli: LightningCLI, config: Any, key: str) -> Any:
    """The object built for ``key`` ("model", "data") in an instantiated config of ``cli``, for its subcommand."""
    return cli._get(config, key)
