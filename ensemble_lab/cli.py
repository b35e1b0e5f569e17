"""The ``ensemble-lab`` command: LightningCLI for fit / validate / test / predict, plus extra subcommands."""

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ensemble_lab import __version__
from ensemble_lab.data.base import EnsembleDataModule
from ensemble_lab.errors import EnsembleLabError
from ensemble_lab.evaluation.results import check_can_write
from ensemble_lab.methods.base import EnsembleModule

#: subcommands that are not LightningCLI's: name -> (handler(argv), one-line help)
EXTRA_SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], object], str]] = {}


class EnsembleLabCLI(LightningCLI):
    """LightningCLI with ensemble-lab's methods and datamodules selectable by short name."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": False})
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        super().__init__(
            EnsembleModule,
            EnsembleDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Always checkpoint: last.ckpt exists for every run (resume with --ckpt_path last).
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 1})
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.init_args.input_shape", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="fit only: after training, evaluate every test set with the final weights (those of last.ckpt) and write results.json.",
        )
        parser.add_argument(
            "--save_predictions",
            type=bool,
            default=False,
            help="also write <run>/predictions/<set>.npz with member_probs (M, N, C) and targets (N,) for every test set.",
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="replace an existing results.json of the run instead of refusing.",
        )

    # ---- hooks around the subcommands ---------------------------------------------------------------
    def _subcommand_config(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def _configure_outputs(self, ckpt_path: str | None) -> None:
        config = self._subcommand_config()
        self.model.save_predictions = bool(config.get("save_predictions", False))
        self.model.overwrite_results = bool(config.get("overwrite", False))
        self.model.results_dir = run_dir_of_checkpoint(ckpt_path)

    def before_test(self) -> None:
        self._configure_outputs(self._subcommand_config().get("ckpt_path"))
        if self.model.results_dir is not None:  # fail before any work, not after the evaluation
            check_can_write(Path(self.model.results_dir), self.model.overwrite_results)

    def before_fit(self) -> None:
        self._configure_outputs(None)

    def after_fit(self) -> None:
        if self._subcommand_config().get("test_after_fit", True) and not self.trainer.interrupted:
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)


def run_dir_of_checkpoint(ckpt_path: str | None) -> str | None:
    """The run directory of ``<run>/checkpoints/<name>.ckpt``, so its results land beside the run."""
    if not ckpt_path or ckpt_path in ("last", "best"):
        return None
    path = Path(ckpt_path)
    return str(path.parent.parent) if path.parent.name == "checkpoints" else None


def _print_usage() -> None:
    print(f"ensemble-lab {__version__}: train and evaluate ensembles\n")
    print("usage: ensemble-lab {fit,validate,test,predict" + "".join(f",{n}" for n in EXTRA_SUBCOMMANDS) + "} ...")
    print("       ensemble-lab --version\n")
    print("  fit, validate, test, predict   LightningCLI subcommands; see `ensemble-lab fit --help`")
    for name, (_, help_text) in EXTRA_SUBCOMMANDS.items():
        print(f"  {name:<30} {help_text}")


def quiet_known_warnings() -> None:
    """Silence warnings that are noise for ensemble-lab users (they say nothing about their run)."""
    # in-memory uint8 tensors need no loader workers; Lightning suggests them for every loader
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # a Lightning / torch version mismatch notice, printed once per loop
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # main(args) is the documented way to call the CLI from Python (tests, `ensemble-lab study`)
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``ensemble-lab`` and ``python -m ensemble_lab``; ``args`` defaults to sys.argv[1:]."""
    argv = list(sys.argv[1:] if args is None else args)
    quiet_known_warnings()
    if argv[:1] in (["--version"], ["-V"]):
        print(f"ensemble-lab {__version__}")
        return
    if not argv or argv[:1] in (["-h"], ["--help"]):
        _print_usage()
        if not argv:
            raise SystemExit(2)
        return
    try:
        if argv[0] in EXTRA_SUBCOMMANDS:
            EXTRA_SUBCOMMANDS[argv[0]][0](argv[1:])
        else:
            EnsembleLabCLI(args=argv)
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None or os.environ.get("ENSEMBLE_LAB_DEBUG"):
            raise
        print(f"ensemble-lab: error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None


def find_user_error(error: BaseException) -> EnsembleLabError | None:
    """The EnsembleLabError behind ``error`` (jsonargparse and Lightning wrap exceptions), if any."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, EnsembleLabError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
