"""The ``ensemble-lab`` command: LightningCLI for fit / validate / test / predict, plus extra subcommands."""

import difflib
import errno
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning_utilities.core.rank_zero
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from ensemble_lab import __version__
from ensemble_lab.callbacks import FinalLastCheckpoint, NonFiniteLossGuard
from ensemble_lab.cli_errors import EnsembleLabArgumentParser
from ensemble_lab.data.base import EnsembleDataModule
from ensemble_lab.errors import ConfigError, EnsembleLabError
from ensemble_lab.evaluation.results import check_can_write
from ensemble_lab.interrupts import INTERRUPTED, InterruptWatch
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.methods.checkpoint_state import load_checkpoint
from ensemble_lab.resume import SPECIAL, RunConfigSaver, continue_run, resolve_ckpt_path

#: subcommands that are not LightningCLI's: name -> (handler(argv), one-line help)
EXTRA_SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], object], str]] = {}


def _report_main(argv: list[str]) -> None:
    from ensemble_lab.report import report_main  # imported on use: keeps `fit` startup lean

    report_main(argv)


def _study_main(argv: list[str]) -> None:
    from ensemble_lab.study import study_main  # imported on use: study calls back into main()

    study_main(argv)


EXTRA_SUBCOMMANDS["report"] = (_report_main, "mean ± std over seeds of results.json files below PATH..., as the paper's tables")
EXTRA_SUBCOMMANDS["study"] = (_study_main, "run a grid of methods × seeds (fit + test), resumable, then print the report")


class EnsembleLabCLI(LightningCLI):
    """LightningCLI with ensemble-lab's methods and datamodules selectable by short name."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": False})
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        kwargs.setdefault("parser_class", EnsembleLabArgumentParser)  # one-line errors, not the usage text
        kwargs.setdefault("save_config_callback", RunConfigSaver)  # a resumed run keeps its config.yaml
        # optimizers are model options (--model.optimizer): a top-level --optimizer would replace the
        # method's configure_optimizers and silently drop BatchEnsemble's fast-weight parameter groups
        kwargs.setdefault("auto_configure_optimizers", False)
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
        parser.add_lightning_class_args(FinalLastCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 1})
        # Always guard: a NaN / inf loss stops training before any checkpoint takes the bad weights.
        parser.add_lightning_class_args(NonFiniteLossGuard, "nan_guard")
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
            "--figures",
            type=bool,
            default=True,
            help="draw reliability diagrams, uncertainty histograms and diversity heatmaps into <run>/figures/*.png and TensorBoard at test.",
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="replace an existing results.json of the run instead of refusing.",
        )
        # Configs saved before optimizers became model-only options hold `optimizer: null` and
        # `lr_scheduler: null` at the top level; they still load, and any other value is refused.
        for legacy in ("optimizer", "lr_scheduler"):
            parser.add_argument(
                f"--{legacy}",
                type=str | None,
                default=None,
                help=f"not an option (only null is accepted, so older saved configs load): use --model.{legacy}.",
            )

    def before_instantiate_classes(self) -> None:
        config = self._subcommand_config()
        for legacy in ("optimizer", "lr_scheduler"):
            if config.get(legacy) is not None:
                raise ConfigError(
                    f"--{legacy} is not an option: the {legacy.replace('_', ' ')} belongs to the model, e.g. "
                    f"--model.{legacy} {'SGD --model.optimizer.lr 0.05' if legacy == 'optimizer' else 'MultiStepLR'}"
                )

    # ---- hooks around the subcommands ---------------------------------------------------------------
    def _subcommand_config(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def _configure_outputs(self, ckpt_path: str | None) -> None:
        config = self._subcommand_config()
        self.model.save_predictions = bool(config.get("save_predictions", False))
        self.model.save_figures = bool(config.get("figures", True))
        self.model.overwrite_results = bool(config.get("overwrite", False))
        self.model.results_dir = run_dir_of_checkpoint(ckpt_path)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would replace the model options by the checkpoint's hyper-parameters, silently
        # turning `--model DeepEnsemble` or `--model.num_members 8` into whatever the checkpoint was.
        # Here the config is the one source of truth; CheckpointStateMixin names both sides when a
        # checkpoint does not fit it.
        return None

    def _resolve_ckpt_path(self) -> str | None:
        """--ckpt_path as a file ("last": the newest run's last.ckpt), handed on to the subcommand.

        A file is read (memory-mapped) and checked against the model here, before Lightning restores
        anything or any run directory is written: an unreadable file or another model's checkpoint
        is refused with one message.
        """
        config = self.config_init[self.subcommand]
        ckpt_path = resolve_ckpt_path(self.trainer, config.get("ckpt_path"), fitting=self.subcommand == "fit")
        config["ckpt_path"] = ckpt_path
        if ckpt_path and ckpt_path not in SPECIAL:
            self.model.check_checkpoint(load_checkpoint(ckpt_path), ckpt_path)
        return ckpt_path

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "test":  # the mixin prints its own table; Lightning's lists ~100 test/<set>/<metric> rows
            parser.set_defaults({"verbose": False})
        return parser

    def _continue_in(self, run_dir: Path, kind: str) -> None:
        """The config of this command goes into ``run_dir`` as config.<kind>-<N>.yaml (config.yaml is kept)."""
        for callback in self.trainer.callbacks:
            if isinstance(callback, RunConfigSaver):
                callback.resumed_run_dir, callback.continued_as = run_dir, kind

    def _evaluate_in_its_run(self, kind: str) -> str | None:
        """test / validate / predict of a run's checkpoint log into that run (config.<kind>-N.yaml), not a
        new version_N; returns the checkpoint path. Only the logger's version is set here: nothing is written."""
        ckpt_path = self._resolve_ckpt_path()
        _quiet_checkpoint_callback_state()
        run_dir = continue_run(self.trainer, ckpt_path) if ckpt_path and ckpt_path not in SPECIAL else None
        if run_dir is not None:
            self._continue_in(run_dir, kind)
        return ckpt_path

    def before_test(self) -> None:
        ckpt_path = self._evaluate_in_its_run("test")
        if ckpt_path is None and not getattr(self.model, "member_checkpoints", None):
            # results of freshly initialised weights look like any other results.json (and `report` averages them)
            raise ConfigError(
                "test needs trained weights: pass --ckpt_path <run>/checkpoints/last.ckpt (or --ckpt_path last for "
                "the newest run below lightning_logs/); a Deep Ensemble of separate SingleModel runs takes "
                "--model.member_checkpoints [a.ckpt,b.ckpt,...] instead"
            )
        self._configure_outputs(ckpt_path)
        if self.model.results_dir is not None:
            check_can_write(Path(self.model.results_dir), self.model.overwrite_results)  # fail before any work

    def before_validate(self) -> None:
        self._evaluate_in_its_run("validate")

    def before_predict(self) -> None:
        self._evaluate_in_its_run("predict")

    def before_fit(self) -> None:
        ckpt_path = self._resolve_ckpt_path()
        self._configure_outputs(None)
        run_dir = continue_run(self.trainer, ckpt_path) if ckpt_path and ckpt_path not in SPECIAL else None
        if run_dir is None:
            return
        # a resumed run continues in its own directory (events, checkpoints, results.json)
        self._continue_in(run_dir, "resume")
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # by design
        if self._subcommand_config().get("test_after_fit", True):  # refuse before training, not after
            check_can_write(run_dir, self.model.overwrite_results)
        rank_zero_info(f"ensemble-lab: resuming {run_dir} from {Path(ckpt_path).name}")

    def after_fit(self) -> None:
        if self._subcommand_config().get("test_after_fit", True) and not self.trainer.interrupted:
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)


def _quiet_checkpoint_callback_state() -> None:
    """Outside fit, Lightning's notice that a checkpoint's ModelCheckpoint state (best / last paths of
    another directory) is not restored says nothing: no checkpoint is written."""
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from .* won't be reloaded")


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
    commands = ["fit", "validate", "test", "predict", *EXTRA_SUBCOMMANDS]
    if not argv[0].startswith("-") and argv[0] not in commands:
        close = difflib.get_close_matches(argv[0], commands, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"ensemble-lab: error: unknown command '{argv[0]}'{hint}; choose from {', '.join(commands)}", file=sys.stderr)
        raise SystemExit(2)
    try:
        if argv[0] in EXTRA_SUBCOMMANDS:
            EXTRA_SUBCOMMANDS[argv[0]][0](argv[1:])
        else:
            _run_lightning_cli(argv)
    except Exception as error:
        user_error = find_user_error(error) or unwritable(error)
        if user_error is None or os.environ.get("ENSEMBLE_LAB_DEBUG"):
            raise
        print(f"ensemble-lab: error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None


def check_config_files(argv: Sequence[str]) -> None:
    """ConfigError naming the file for a --config that is not a YAML mapping (jsonargparse would name
    "<unicode string>" or print "Unexpected config"); a missing file is left to the parser's message."""
    import yaml

    paths = [argv[k + 1] for k, a in enumerate(argv[:-1]) if a == "--config"] + [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_file():
            continue
        try:
            content = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            where = getattr(error, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            raise ConfigError(f"config file {raw} is not valid YAML{at}: {getattr(error, 'problem', None) or error}") from None
        if not isinstance(content, dict):
            got = "nothing (the file is empty)" if content is None else f"a {type(content).__name__}"
            raise ConfigError(f"config file {raw} must be a mapping of options (model:, data:, trainer:, ...); it holds {got}")


def _run_lightning_cli(argv: list[str]) -> None:
    """EnsembleLabCLI(argv); Ctrl-C ends it with status 130 and says how to go on (not Lightning's status 1)."""
    check_config_files(argv)
    with InterruptWatch() as watch:
        try:
            EnsembleLabCLI(args=argv)
        except (SystemExit, KeyboardInterrupt):
            if not watch.interrupted:
                raise
            print(
                "ensemble-lab: interrupted. checkpoints/last.ckpt keeps the last saved state of a fit: the same "
                "command with --ckpt_path last continues it.",
                file=sys.stderr,
            )
            raise SystemExit(INTERRUPTED) from None


#: errno values that say the disk or the permissions, not the program, stopped a write
UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def unwritable(error: BaseException) -> str | None:
    """A one-line message for a file that could not be written (permissions, read-only, disk full), else None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in UNWRITABLE:
            where = f" {error.filename}" if error.filename else ""
            return (
                f"cannot write{where}: {error.strerror}. Free some space or make the directory writable, "
                "or write elsewhere (--trainer.default_root_dir DIR; study: --out DIR)"
            )
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def find_user_error(error: BaseException) -> Exception | None:
    """The EnsembleLabError behind ``error`` (jsonargparse and Lightning wrap exceptions), if any, or
    Lightning's MisconfigurationException: its message names the bad trainer / callback value."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (EnsembleLabError, MisconfigurationException)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
