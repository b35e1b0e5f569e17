"""Checks and quieting that come before a command builds anything: config files that are not a mapping,
and the warnings that say nothing about an ensemble-lab run."""

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning_utilities.core.rank_zero

from ensemble_lab.errors import ConfigError
from ensemble_lab.io import load_yaml_file


class _DropAdverts(logging.Filter):
    """Drops Lightning's product tips ("💡 Tip: try installing litlogger ..."), printed on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_known_warnings() -> None:
    """Silence warnings that are noise for ensemble-lab users (they say nothing about their run)."""
    # in-memory uint8 tensors need no loader workers; Lightning suggests them for every loader
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # a Lightning / torch version mismatch notice, printed once per loop
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # main(args) is the documented way to call the CLI from Python (tests, `ensemble-lab study`)
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    # the datamodule saves and restores the mid-epoch position itself (data/sampler.py)
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    # Lightning's rank_zero_info goes through the logger Lightning installs here; its product tips say nothing about the run
    rank_zero_log = lightning_utilities.core.rank_zero.log
    if not any(isinstance(f, _DropAdverts) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_DropAdverts())


def quiet_checkpoint_callback_state() -> None:
    """Outside fit, Lightning's notice that a checkpoint's ModelCheckpoint state (best / last paths of
    another directory) is not restored says nothing: no checkpoint is written."""
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from .* won't be reloaded")


def is_print_config(arg: str) -> bool:
    """Whether ``arg`` is LightningCLI's ``--print_config`` (with or without a value)."""
    return arg == "--print_config" or arg.startswith("--print_config=")


def check_config_files(argv: Sequence[str]) -> None:
    """ConfigError naming the file for a --config that is not a YAML mapping (jsonargparse would name
    "<unicode string>" or print "Unexpected config"); a missing file is left to the parser's message."""
    paths = [argv[k + 1] for k, a in enumerate(argv[:-1]) if a == "--config"] + [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_file():
            continue
        content = load_yaml_file(raw, "config file")  # not YAML, a key given twice: one line naming file and line
        if not isinstance(content, dict):
            got = "nothing (the file is empty)" if content is None else f"a {type(content).__name__}"
            raise ConfigError(f"config file {raw} must be a mapping of options (model:, data:, trainer:, ...); it holds {got}")
