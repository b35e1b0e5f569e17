"""LightningCLI for ``ensemble-lab fit / validate / test / predict``: the options, the hooks around each
subcommand (resume, outputs, refusals before anything is written) and the Ctrl-C watch."""

import functools
import secrets
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from ensemble_lab.compat import (
    cli_instance,
    cli_subcommand_parser,
    drop_placeholder_hp_metric,
    logger_version,
    parser_actions,
    set_logging_step,
)
from ensemble_lab.config.checks import check_config_files, is_print_config, quiet_checkpoint_callback_state, quiet_known_warnings
from ensemble_lab.config.failures import user_message
from ensemble_lab.config.legacy import upgrade_argv
from ensemble_lab.config.options import CKPT_PATH_HELP, add_run_options
from ensemble_lab.config.outputs import describe_run, evaluation_options
from ensemble_lab.config.parser_errors import EnsembleLabArgumentParser
from ensemble_lab.config.training_length import bound_training
from ensemble_lab.data.base import EnsembleDataModule
from ensemble_lab.errors import ConfigError
from ensemble_lab.evaluation.outputs import EvaluationOutputs, add_evaluation_outputs
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.methods.spawn import spawned_checkpoint
from ensemble_lab.nn import weights_from_checkpoint
from ensemble_lab.runs.checkpoint_files import load_checkpoint
from ensemble_lab.runs.checkpoints import check_monitors, checkpoint_record, settle_monitors
from ensemble_lab.runs.interrupts import stopped_command_exits
from ensemble_lab.runs.layout import remove_unstarted_run, run_dir_of_checkpoint
from ensemble_lab.runs.metrics_csv import MetricsCSV
from ensemble_lab.runs.results import check_can_write
from ensemble_lab.runs.resume import SPECIAL, RunConfigSaver, continue_run, resolve_ckpt_path, weights_replaced

#: importable from here as before (other modules and tests do)
__all__ = ["EnsembleLabCLI", "check_arguments", "check_config_files", "check_run", "quiet_known_warnings", "run_lightning_cli"]


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
        """ensemble-lab's options (config/options.py)."""
        add_run_options(parser, self._adding_for)

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
        if args is not None and not self.checking_only and any(is_print_config(a) for a in args):
            check_arguments([a for a in args if not is_print_config(a)])
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
        config = self._subcommand_config()  # with a checkpoint to load, a timm backbone fetches no pretrained weights
        with weights_from_checkpoint(weights_replaced(config.get("ckpt_path"), config.get("model.init_args.spawn_from"), self.subcommand == "fit")):
            if not self.checking_only:
                return super().instantiate_classes()
            # the options' own checks run when the classes are built; no Trainer (it may name devices this machine lacks)
            self.config_init = self.parser.instantiate_classes(self.config)
            self.datamodule = cli_instance(self, self.config_init, "data")
            self.model = cli_instance(self, self.config_init, "model")
            if self.subcommand == "fit":
                self.model.configure_optimizers()  # torch checks the optimizer's and scheduler's values as they are built
                self._check_monitors()

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; a user error before the first training step removes the run directory it made (nothing in it is a result)."""
        if self.checking_only:
            return
        logger = self.trainer.logger if isinstance(self.trainer.logger, (TensorBoardLogger, CSVLogger)) else None
        if isinstance(logger, TensorBoardLogger):
            drop_placeholder_hp_metric(logger)  # its placeholder hp_metric = -1 is in every run and means nothing
        existed = logger is not None and logger_version(logger) is not None and Path(logger.log_dir).exists()
        try:
            super()._run_subcommand(subcommand)
        except BaseException as error:
            if logger is not None and not existed and logger_version(logger) is not None and user_message(error) is not None:
                remove_unstarted_run(Path(logger.log_dir), self.trainer.global_step)
            raise

    # ---- hooks around the subcommands ---------------------------------------------------------------
    def _subcommand_config(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def _record(self, **facts: Any) -> None:
        """Add ``facts`` (RunRecord fields) to what results.json will record about the run."""
        outputs = add_evaluation_outputs(self.trainer)
        outputs.record = replace(outputs.record, **facts)

    def _configure_outputs(self, ckpt_path: str | None) -> EvaluationOutputs:
        """The test's options and run record from this command's configuration (and the tested run's config.yaml)."""
        config, outputs = self._subcommand_config(), add_evaluation_outputs(self.trainer)
        run_dir = run_dir_of_checkpoint(ckpt_path) if ckpt_path not in (None, *SPECIAL, "last") else None
        outputs.options = evaluation_options(config, self.subcommand)
        outputs.record = describe_run(outputs.record, config, self.resolved_config(), run_dir, fitting=self.subcommand == "fit")
        return outputs

    def resolved_config(self) -> dict[str, Any]:
        """This command's configuration, every default filled in, as plain data (what config.yaml holds)."""
        sub = self.subcommand
        text = cli_subcommand_parser(self, sub).dump(self.config[sub] if sub else self.config, skip_none=False)
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
                self._record(tested_checkpoint_record=checkpoint_record(ckpt_path, checkpoint))  # for results.json
        return ckpt_path

    def _log_at_step(self, step: int) -> None:
        """Scalars logged outside fit take the fit loop's step counter: set it to the checkpoint's step, so a
        later test draws at the end of the training curves, not at step 0."""
        set_logging_step(self.trainer, step)
        self._record(logging_step=step)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs) -> LightningArgumentParser:
        self._adding_for = subcommand
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "test":  # the mixin prints its own table; Lightning's lists ~100 test/<set>/<metric> rows
            parser.set_defaults({"verbose": False})
        for action in parser_actions(parser):  # Lightning's text describes its own "last" / "best" / None, not ours
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
        quiet_checkpoint_callback_state()
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
        outputs = self._configure_outputs(ckpt_path)
        if outputs.record.results_dir is not None:
            check_can_write(Path(outputs.record.results_dir), outputs.options.overwrite)  # fail before any work

    def before_validate(self) -> None:
        self._evaluate_in_its_run("validate")

    def before_predict(self) -> None:
        self._evaluate_in_its_run("predict")

    def before_fit(self) -> None:
        self.model.configure_optimizers()  # torch checks the optimizer's values here, before the run directory exists
        self._check_monitors()
        ckpt_path = self._resolve_ckpt_path()
        if ckpt_path is None and getattr(self.model, "spawn_from", None):  # a resume continues its own last.ckpt instead
            ckpt_path = self._spawn(str(getattr(self.model, "spawn_from")))
        outputs = self._configure_outputs(None)
        run_dir = continue_run(self.trainer, ckpt_path) if ckpt_path and ckpt_path not in SPECIAL else None
        if run_dir is None or ckpt_path is None:  # (a run_dir comes only with a ckpt_path)
            return
        # a resumed run continues in its own directory (events, checkpoints, results.json)
        self._continue_in(run_dir, "resume")
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # by design
        if self._subcommand_config().get("test_after_fit", True):  # refuse before training, not after
            check_can_write(run_dir, outputs.options.overwrite)
        rank_zero_info(f"ensemble-lab: resuming {run_dir} from {Path(ckpt_path).name}")

    def _spawn(self, parent: str) -> str:
        """A spawned run starts where its parent checkpoint stands: that checkpoint made this model's (every member
        the parent, methods/spawn.py) in a temporary file the fit resumes from; the run itself is a new one."""
        checkpoint = spawned_checkpoint(parent, self.model, self.trainer.max_epochs)
        folder = tempfile.mkdtemp(prefix="ensemble-lab-spawn-")
        weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)  # read once, when the fit starts
        path = str(Path(folder) / "spawned.ckpt")
        torch.save(checkpoint, path)
        self.config_init[self.subcommand]["ckpt_path"] = path
        rank_zero_info(f"ensemble-lab: spawning {type(self.model).__name__} from {parent} (after epoch {int(checkpoint.get('epoch', -1)) + 1})")
        return path

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
            loaded = load_checkpoint(tested) if tested else None
            self._record(tested_checkpoint=tested or None, tested_checkpoint_record=checkpoint_record(tested, loaded) if tested and loaded else None)
            if best and loaded is not None:  # its test scalars go to TensorBoard at the step its weights are from
                self._log_at_step(int(loaded.get("global_step", 0)))
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=tested if best else None, verbose=False)


class _ArgumentCheck(EnsembleLabCLI):
    checking_only = True


@functools.cache
def _argument_check(subcommand: str) -> type[_ArgumentCheck]:
    """The checking CLI with ``subcommand``'s parser only: a check parses one command, and building the parsers of
    the other three subcommands was most of its cost (a study checks every one of its runs)."""
    only = {subcommand: LightningCLI.subcommands()[subcommand]}
    return type(f"_ArgumentCheck_{subcommand}", (_ArgumentCheck,), {"subcommands": staticmethod(lambda: only)})


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
        command = argv[0] if argv and argv[0] in LightningCLI.subcommands() else None
        checked = (_argument_check(command) if command else _ArgumentCheck)(args=list(argv))
        return checked.resolved_config(), checked.datamodule
    except SystemExit:  # --help and the like
        raise
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        raise ConfigError(message) from error


def run_lightning_cli(argv: list[str]) -> None:
    """EnsembleLabCLI(argv); Ctrl-C ends it with status 130 and SIGTERM with 143, each saying how to go on
    (not Lightning's status 1, resp. 0, which a script or a study would take for success)."""
    quiet_known_warnings()
    check_config_files(argv)
    with stopped_command_exits():
        EnsembleLabCLI(args=argv)
