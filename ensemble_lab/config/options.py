"""The options ensemble-lab adds to LightningCLI's (``--checkpoint.*``, ``--run_name``, ``--save_predictions``,
``--figures``, ...): their names, types, defaults and help, in one place."""

import argparse
from typing import Literal

from lightning.pytorch.cli import LightningArgumentParser

from ensemble_lab.compat import parser_actions
from ensemble_lab.methods.task_options import datamodule_outputs, datamodule_task
from ensemble_lab.runs.callbacks import FinalLastCheckpoint, NonFiniteLossGuard, OptionalEarlyStopping


def add_run_options(parser: LightningArgumentParser, subcommand: str | None) -> None:
    """Declare ensemble-lab's options on the ``parser`` of ``subcommand`` (None: a CLI without subcommands);
    outside fit, the fit-only ones are accepted (a run's config.yaml holds them) but not listed in --help."""
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
    # the model's task and output count come from the data: classes, or for regression the targets D
    parser.link_arguments("data", "model.init_args.task", compute_fn=datamodule_task, apply_on="instantiate")
    parser.link_arguments("data", "model.init_args.num_classes", compute_fn=datamodule_outputs, apply_on="instantiate")
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
        help="test: also write <run>/predictions/<set>.npz with member_probs (M, N, C), member_logits (M, N, C) and targets (N,) for every test set, and predictions/val_split.npz for the validation split (predict always writes the probabilities, for the first id set).",
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
        "--conformal_alpha",
        type=float,
        default=0.1,
        help="test: the miscoverage level α of the split conformal prediction sets (THR, APS, RAPS) fitted on the "
        "validation split; results.json gets each set's conformal_coverage_<score> (about 1 − α) and conformal_set_size_<score>.",
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
    if subcommand not in (None, "fit"):
        # test / validate / predict accept the fit-only options (a run's config.yaml holds them) without listing them
        for action in parser_actions(parser):
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


#: --ckpt_path as ensemble-lab reads it (resolve_ckpt_path)
CKPT_PATH_HELP = {
    "fit": "a checkpoint to resume from: a path (<run>/checkpoints/last.ckpt continues in that run), or last "
    "(the newest last.ckpt under the run root); default: start a new run",
    "evaluate": "the checkpoint to evaluate: a path, last (the newest run's last.ckpt under the run root) or best "
    "(that run's best checkpoint by its monitor); required (a Deep Ensemble of --model.member_checkpoints aside)",
}
