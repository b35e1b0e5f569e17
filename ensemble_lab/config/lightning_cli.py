"""LightningCLI for ``ensemble-lab fit / validate / test / predict``: the options, the hooks around each
subcommand (resume, outputs, refusals before anything is written) and the Ctrl-C watch."""

import argparse
import logging
import secrets
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import lightning_utilities.core.rank_zero
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from ensemble_lab.config.failures import user_message
from ensemble_lab.config.legacy import upgrade_argv
from ensemble_lab.config.parser_errors import EnsembleLabArgumentParser
from ensemble_lab.config.run_config import as_tested, comparable, flatten
from ensemble_lab.config.training_length import bound_training
from ensemble_lab.data.base import EnsembleDataModule
from ensemble_lab.errors import ConfigError
from ensemble_lab.io import load_yaml_file
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.runs.callbacks import FinalLastCheckpoint, NonFiniteLossGuard, OptionalEarlyStopping
from ensemble_lab.runs.checkpoint_files import load_checkpoint
from ensemble_lab.runs.checkpoints import check_monitors, checkpoint_record, settle_monitors
from ensemble_lab.runs.interrupts import INTERRUPTED, TERMINATED, InterruptWatch
from ensemble_lab.runs.layout import run_dir_of_checkpoint
from ensemble_lab.runs.legacy_keys import translate_config
from ensemble_lab.runs.metrics_csv import MetricsCSV
from ensemble_lab.runs.results import check_can_write
from ensemble_lab.runs.resume import (
    SPECIAL,
    RunConfigSaver,
    continue_run,
    resolve_ckpt_path,
)


class EnsembleLabCLI(LightningCLI):
    """LightningCLI with ensemble-lab's methods and datamodules selectable by short name."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs) -> None:
        """``args``: the command line without the program name (None: sys.argv); ``kwargs`` go to LightningCLI."""
        kwargs.setdefault("save_config_kwargs", {"overwrite": False})
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        kwargs.setdefault("parser_class", EnsembleLabArgumentParser)  # one-line errors, not the usage text
        kwargs.setdefault("save_config_callback", RunConfigSaver)  # a resumed run keeps its config.yaml
        # optimizers are model options (--model.optimizer): a top-level --optimizer would replace the
        # method's configure_optimizers and silently drop BatchEnsemble's fast-weight parameter groups
        kwargs.setdefault("auto_configure_optimizers", False)
        # every fit writes <run>/metrics.csv (one row per epoch); a persistent callback, not an option
        defaults = dict(kwargs.pop("trainer_defaults", None) or {})
        given = defaults.get("callbacks") or []
        defaults["callbacks"] = [*(given if isinstance(given, list) else [given]), MetricsCSV()]
        kwargs["trainer_defaults"] = defaults
        super().__init__(
            EnsembleModule,
            EnsembleDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=upgrade_argv(args) if args is not None else None,  # old flags in their new spelling
            **kwargs,
        )

    #: the subcommand whose parser add_arguments_to_parser is filling
    _adding_for: str | None = None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Always checkpoint: last.ckpt exists for every run (resume with --ckpt_path last).
        parser.add_lightning_class_args(FinalLastCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 1})
        # Always guard: a NaN / inf loss stops training before any checkpoint takes the bad weights.
        parser.add_lightning_class_args(NonFiniteLossGuard, "nan_guard")
        # Off by default (train for max_epochs); --early_stopping.enabled true stops on a validation metric.
        parser.add_lightning_class_args(OptionalEarlyStopping, "early_stopping")
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="a label for this run, recorded in results.json: `report` groups runs by it (default: the "
            "method's class name), so two variants of one method get rows of their own. `study` sets it to the "
            "method's name in the study file.",
        )
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.init_args.input_shape", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="fit only: after training, evaluate every test set with the final weights (those of last.ckpt; --test_checkpoint best: the best-validation checkpoint) and write results.json.",
        )
        parser.add_argument(
            "--test_checkpoint",
            type=Literal["last", "best"],
            default="last",
            help="fit only: the weights --test_after_fit evaluates: last (the final weights, checkpoints/last.ckpt) or "
            "best (the checkpoint kept for the best --checkpoint.monitor value; needs --checkpoint.monitor, or "
            "--early_stopping.enabled true, whose metric the checkpoint then follows). results.json records which.",
        )
        parser.add_argument(
            "--save_predictions",
            type=bool,
            default=False,
            help="test: also write <run>/predictions/<set>.npz with member_probs (M, N, C) and targets (N,) for every test set (predict always writes them, for the first id set).",
        )
        parser.add_argument(
            "--calibration",
            type=Literal["none", "temperature", "temperature_per_member"],
            default="none",
            help="test: also report every set after temperature scaling fitted on the validation split (minimising its "
            "NLL): temperature (one T shared by all members, dividing each member's logits before averaging) or "
            "temperature_per_member; results.json gets sets_calibrated and calibration (the fitted T).",
        )
        parser.add_argument(
            "--eval_sets_every",
            type=int,
            default=0,
            help="fit only: every K epochs (and at the last epoch) also evaluate every test set (id, shift, ood) at the end "
            "of the validation after the epoch's last batch (once an epoch, also with val_check_interval < 1) and log val/<set>/<metric> (acc, nll, ece, mi, disagreement, auroc_mi, ...) to TensorBoard and "
            "metrics.csv, so diversity per set can be followed over training; 0: never. Training is the same with or without it.",
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
        if self._adding_for not in (None, "fit"):
            # test / validate / predict accept the fit-only options (a run's config.yaml holds them) without listing them
            for action in parser._actions:
                if action.dest in ("test_after_fit", "test_checkpoint", "eval_sets_every") or action.dest.startswith(("checkpoint", "early_stopping")):
                    action.help = argparse.SUPPRESS
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
        model_args = config.get("model", {}).get("init_args") or {}
        members = model_args.get("member_checkpoints") if hasattr(model_args, "get") else None
        if members:  # an assembled ensemble has one member per checkpoint: config.yaml says the M it really has
            model_args["num_members"] = len(members)
        for legacy in ("optimizer", "lr_scheduler"):
            if config.get(legacy) is not None:
                raise ConfigError(
                    f"--{legacy} is not an option: the {legacy.replace('_', ' ')} belongs to the model, e.g. "
                    f"--model.{legacy} {'SGD --model.optimizer.lr 0.05' if legacy == 'optimizer' else 'MultiStepLR'}"
                )
        if self.subcommand == "fit":  # before anything is built: the checkpoint follows early stopping's metric
            settle_monitors(config)
            bound_training(config, announce=not self.checking_only)  # no limit given: ours, not Lightning's 1000 epochs
        if (config.get("eval_sets_every") or 0) < 0:
            raise ConfigError(f"--eval_sets_every must be >= 0 (0: never), got {config.get('eval_sets_every')}")

    #: set by check_arguments(): parse and build the model and datamodule, seed nothing, run nothing
    checking_only = False

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        # --print_config prints whatever parses; the values are first checked the way a run checks them
        # (num_members 0, a negative width, ...), so a printed config is one that runs
        if args is not None and not self.checking_only and any(_is_print_config(a) for a in args):
            check_arguments([a for a in args if not _is_print_config(a)])
        super().parse_arguments(parser, args)

    def _set_seed(self) -> None:
        """``--seed_everything true`` (the default) draws a real random seed (Lightning would set 0 every
        time), records it in the config (config.yaml, results.json) and says which it was."""
        if self.checking_only:
            return
        config = self._subcommand_config()
        if config.get("seed_everything") is True:
            config["seed_everything"] = secrets.randbelow(2**31)
            rank_zero_info(
                f"ensemble-lab: seed_everything={config['seed_everything']} (drawn at random; "
                f"--seed_everything {config['seed_everything']} repeats this run)"
            )
        super()._set_seed()

    def instantiate_classes(self) -> None:
        if not self.checking_only:
            return super().instantiate_classes()
        # the options' own checks run when the classes are built; no Trainer (it may name devices this machine lacks)
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        if self.subcommand == "fit":
            self.model.configure_optimizers()  # torch checks the optimizer's and scheduler's values as they are built
            self._check_monitors()

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; a user error before the first training step removes the run directory it made (nothing in it is a result)."""
        if self.checking_only:
            return
        logger = self.trainer.logger if isinstance(self.trainer.logger, (TensorBoardLogger, CSVLogger)) else None
        if isinstance(logger, TensorBoardLogger):
            logger._default_hp_metric = False  # its placeholder hp_metric = -1 is in every run and means nothing
        existed = logger is not None and logger._version is not None and Path(logger.log_dir).exists()
        try:
            super()._run_subcommand(subcommand)
        except BaseException as error:
            if logger is not None and not existed and logger._version is not None and user_message(error) is not None:
                _remove_unstarted_run(Path(logger.log_dir), self.trainer.global_step)
            raise

    # ---- hooks around the subcommands ---------------------------------------------------------------
    def _subcommand_config(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def _configure_outputs(self, ckpt_path: str | None) -> None:
        config = self._subcommand_config()
        self.model.save_predictions = bool(config.get("save_predictions", False))
        self.model.save_figures = bool(config.get("figures", True))
        self.model.calibration = str(config.get("calibration") or "none")
        self.model.overwrite_results = bool(config.get("overwrite", False))
        self.model.eval_sets_every = int(config.get("eval_sets_every") or 0) if self.subcommand == "fit" else 0
        run_dir = run_dir_of_checkpoint(ckpt_path) if ckpt_path not in (None, *SPECIAL, "last") else None
        self.model.results_dir = str(run_dir) if run_dir is not None else None
        # what the run is, for results.json: the options this command ran with and, for a test of a
        # run's checkpoint, the ones its weights were trained with (the run's config.yaml) and what differs
        ran_with = self.resolved_config()
        trained_with = translate_config(_read_yaml(run_dir / "config.yaml")) if run_dir is not None else None
        self.model.run_name = config.get("run_name") or (trained_with or ran_with).get("run_name")
        # flat keys, without where the run lives (its directory, the checkpoint it resumed): results.json
        # depends on what was trained and tested, not on where
        if self.subcommand == "fit":
            trained_with = ran_with  # the test after fit runs with the options it trained with
        tested, changes = as_tested(flatten(trained_with or ran_with), flatten(ran_with))
        self.model.run_config = tested
        # unknown (None) where no training config is on record: an assembled ensemble, a run without its config.yaml
        self.model.test_changes = changes if trained_with is not None else None
        self.model.fit_config = comparable(flatten(trained_with)) if trained_with is not None and changes else None

    def resolved_config(self) -> dict[str, Any]:
        """This command's configuration, every default filled in, as plain data (what config.yaml holds)."""
        sub = self.subcommand
        text = self._parser(sub).dump(self.config[sub] if sub else self.config, skip_none=False)
        return yaml.safe_load(text)

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
            checkpoint = load_checkpoint(ckpt_path, "--ckpt_path")
            self.model.check_checkpoint(checkpoint, ckpt_path)
            if self.subcommand != "fit":  # test scalars and figures go to TensorBoard at the step the weights are from
                self._log_at_step(int(checkpoint.get("global_step", 0)))
                self.model.tested_checkpoint_record = checkpoint_record(ckpt_path, checkpoint)  # for results.json
        return ckpt_path

    def _log_at_step(self, step: int) -> None:
        """Scalars logged outside fit take the fit loop's step counter: set it to the checkpoint's step, so a
        later test draws at the end of the training curves, not at step 0."""
        self.trainer.fit_loop.epoch_loop._batches_that_stepped = step
        self.model.logging_step = step

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs) -> LightningArgumentParser:
        self._adding_for = subcommand
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "test":  # the mixin prints its own table; Lightning's lists ~100 test/<set>/<metric> rows
            parser.set_defaults({"verbose": False})
        for action in parser._actions:  # Lightning's text describes its own "last" / "best" / None, not ours
            if action.dest == "ckpt_path":
                action.help = CKPT_PATH_HELP[subcommand if subcommand == "fit" else "evaluate"]
        return parser

    def _continue_in(self, run_dir: Path, kind: str) -> None:
        """The config of this command goes into ``run_dir`` as config.<kind>-<N>.yaml (config.yaml is kept)."""
        for callback in cast(list[Callback], getattr(self.trainer, "callbacks")):  # set by Lightning, not declared on Trainer
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
        self.model.configure_optimizers()  # torch checks the optimizer's values here, before the run directory exists
        self._check_monitors()
        ckpt_path = self._resolve_ckpt_path()
        self._configure_outputs(None)
        run_dir = continue_run(self.trainer, ckpt_path) if ckpt_path and ckpt_path not in SPECIAL else None
        if run_dir is None or ckpt_path is None:  # (a run_dir comes only with a ckpt_path)
            return
        # a resumed run continues in its own directory (events, checkpoints, results.json)
        self._continue_in(run_dir, "resume")
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # by design
        if self._subcommand_config().get("test_after_fit", True):  # refuse before training, not after
            check_can_write(run_dir, self.model.overwrite_results)
        rank_zero_info(f"ensemble-lab: resuming {run_dir} from {Path(ckpt_path).name}")

    def _check_monitors(self) -> None:
        """A monitored metric the model never logs is refused before the run directory exists (Lightning
        would stop only at the end of the first epoch)."""
        check_monitors(self._subcommand_config(), self.model.monitorable_metrics(), type(self.model).__name__)

    def after_fit(self) -> None:
        config = self._subcommand_config()
        if config.get("test_after_fit", True) and not self.trainer.interrupted:
            # last (--test_checkpoint last): the final weights, those of last.ckpt (FinalLastCheckpoint writes it at
            # the end of fit); best: the checkpoint it kept for the best --checkpoint.monitor value
            checkpoint = cast(ModelCheckpoint | None, self.trainer.checkpoint_callback)  # the --checkpoint FinalLastCheckpoint
            best = config.get("test_checkpoint") == "best"
            tested = (checkpoint.best_model_path if best else checkpoint.last_model_path) if checkpoint else None
            if best and not tested:
                raise ConfigError("--test_checkpoint best: no best checkpoint was kept (no validation ran); checkpoints/last.ckpt holds the final weights")
            self.model.tested_checkpoint = tested or None
            loaded = load_checkpoint(tested) if tested else None
            self.model.tested_checkpoint_record = checkpoint_record(tested, loaded) if tested and loaded else None
            if best and loaded is not None:  # its test scalars go to TensorBoard at the step its weights are from
                self._log_at_step(int(loaded.get("global_step", 0)))
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=tested if best else None, verbose=False)


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return content if isinstance(content, dict) else None


def _is_print_config(arg: str) -> bool:
    return arg == "--print_config" or arg.startswith("--print_config=")


@rank_zero_only
def _remove_unstarted_run(run_dir: Path, global_step: int) -> None:
    """Remove ``run_dir`` made by a command that failed before training a step and before any checkpoint."""
    if global_step == 0 and run_dir.is_dir() and not any(run_dir.rglob("*.ckpt")) and not (run_dir / "results.json").exists():
        shutil.rmtree(run_dir, ignore_errors=True)


class _ArgumentCheck(EnsembleLabCLI):
    checking_only = True


def check_arguments(argv: Sequence[str]) -> dict[str, Any]:
    """Parse ``ensemble-lab <argv>`` and build its model and datamodule (so their option checks run), writing
    and running nothing. Returns the resolved configuration (what config.yaml would hold); raises the
    one-line ConfigError a run of ``argv`` would stop with."""
    return check_run(argv)[0]


def check_run(argv: Sequence[str]) -> tuple[dict[str, Any], Any]:
    """``check_arguments(argv)`` and the datamodule it built (nothing loaded yet): (configuration, datamodule)."""
    quiet_known_warnings()
    check_config_files(argv)
    try:
        checked = _ArgumentCheck(args=list(argv))
        return checked.resolved_config(), checked.datamodule
    except SystemExit:  # --help and the like
        raise
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        raise ConfigError(message) from error


def _quiet_checkpoint_callback_state() -> None:
    """Outside fit, Lightning's notice that a checkpoint's ModelCheckpoint state (best / last paths of
    another directory) is not restored says nothing: no checkpoint is written."""
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from .* won't be reloaded")


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


#: --ckpt_path as ensemble-lab reads it (resolve_ckpt_path)
CKPT_PATH_HELP = {
    "fit": "a checkpoint to resume from: a path (<run>/checkpoints/last.ckpt continues in that run), or last "
    "(the newest last.ckpt under the run root); default: start a new run",
    "evaluate": "the checkpoint to evaluate: a path, last (the newest run's last.ckpt under the run root) or best "
    "(that run's best checkpoint by its monitor); required (a Deep Ensemble of --model.member_checkpoints aside)",
}
#: what to do after a fit was stopped, whether or not it had saved a checkpoint yet
HOW_TO_CONTINUE = (
    "a fit continues from its last saved checkpoint (checkpoints/last.ckpt) with the same command and "
    "--ckpt_path last; one stopped before its first checkpoint starts again."
)


def run_lightning_cli(argv: list[str]) -> None:
    """EnsembleLabCLI(argv); Ctrl-C ends it with status 130 and SIGTERM with 143, each saying how to go on
    (not Lightning's status 1, resp. 0, which a script or a study would take for success)."""
    quiet_known_warnings()
    check_config_files(argv)
    with InterruptWatch() as watch:
        try:
            EnsembleLabCLI(args=argv)
        except SIGTERMException:  # a SystemExit without a code: Lightning stopped at the next step
            print(f"ensemble-lab: terminated (SIGTERM). {HOW_TO_CONTINUE}", file=sys.stderr)
            raise SystemExit(TERMINATED) from None
        except (SystemExit, KeyboardInterrupt):
            if not watch.interrupted:
                raise
            print(f"ensemble-lab: interrupted. {HOW_TO_CONTINUE}", file=sys.stderr)
            raise SystemExit(INTERRUPTED) from None


