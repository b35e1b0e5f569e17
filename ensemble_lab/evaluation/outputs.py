"""What a test writes and what it records about its run, handed to the evaluation by one callback.

``ensemble-lab fit / test`` add an :class:`EvaluationOutputs` to the trainer's callbacks with the user's
choices (:class:`EvaluationOptions`: ``--save_predictions``, ``--figures``, ``--calibration``,
``--overwrite``, ``--eval_sets_every``, ``--conformal_alpha``) and what the command knows about the run (:class:`RunRecord`:
where results.json goes, the run's name and configuration, the tested checkpoint). The evaluation
(UncertaintyEvalMixin) asks the trainer for it; a trainer without one evaluates with the defaults
(results.json into the trainer's log_dir, figures on, no predictions, no calibration), so a plain
``trainer.test(model)`` from Python needs nothing else. From Python::

    outputs = EvaluationOutputs(EvaluationOptions(save_predictions=True), RunRecord(results_dir="runs/a"))
    trainer = L.Trainer(callbacks=[outputs]); trainer.test(model, datamodule=dm)
"""

from dataclasses import dataclass
from typing import Any, Literal, cast

import lightning as L
from lightning.pytorch.callbacks import Callback

from ensemble_lab.errors import ConfigError

Calibration = Literal["none", "temperature", "temperature_per_member"]


@dataclass(frozen=True)
class EvaluationOptions:
    """What a test writes beside results.json, as the user chose it.

    Attributes:
        save_predictions: also write ``<results_dir>/predictions/<set>.npz`` (member probabilities, targets).
        figures: draw figures into ``<results_dir>/figures/`` and TensorBoard.
        calibration: "none", or report every set again after temperature scaling fitted on the validation
            split: "temperature" (one T) or "temperature_per_member".
        overwrite: replace an existing results.json (the earlier files move to ``*.prev-N``) instead of refusing.
        eval_sets_every: during a fit, evaluate every test set at the end of the validation of every K-th
            epoch (and of the last one), logging val/<set>/<metric>; 0: never.
        conformal_alpha: the miscoverage level α of the conformal prediction sets fitted on the validation split
            (coverage 1 − α), in (0, 1).
    """

    save_predictions: bool = False
    figures: bool = True
    calibration: Calibration = "none"
    overwrite: bool = False
    eval_sets_every: int = 0
    conformal_alpha: float = 0.1

    def __post_init__(self) -> None:
        """Refuse a conformal α outside (0, 1) with a one-line error."""
        if not 0.0 < self.conformal_alpha < 1.0:
            raise ConfigError(f"--conformal_alpha must be between 0 and 1 (exclusive), e.g. 0.1 for 90% coverage; got {self.conformal_alpha}")


@dataclass(frozen=True)
class RunRecord:
    """What the command knows about the run a test belongs to; results.json records it.

    Attributes:
        results_dir: where results.json goes; None: the trainer's log_dir.
        run_name: the run's label (``--run_name``); None: the method's class name.
        run_config: the options the test ran with, as flat keys (results.json's ``config``).
        test_changes: "key: trained -> tested" for every option the test changed from training ([]: none;
            None: no training config on record).
        fit_config: the training's options where the test changed some, else None.
        tested_checkpoint: the checkpoint a test after fit evaluates; None: the trainer's ``ckpt_path``.
        tested_checkpoint_record: what that checkpoint is (runs/results.py's CHECKPOINT_RECORD keys).
        logging_step: the training step the tested weights are from (test scalars and figures are logged
            there); None: the module's global_step.
    """

    results_dir: str | None = None
    run_name: str | None = None
    run_config: dict[str, Any] | None = None
    test_changes: list[str] | None = None
    fit_config: dict[str, Any] | None = None
    tested_checkpoint: str | None = None
    tested_checkpoint_record: dict[str, Any] | None = None
    logging_step: int | None = None


class EvaluationOutputs(Callback):
    """Carries a test's :class:`EvaluationOptions` and :class:`RunRecord` to the evaluation (it has no hooks
    of its own and adds nothing to checkpoints)."""

    def __init__(self, options: EvaluationOptions | None = None, record: RunRecord | None = None) -> None:
        """
        Args:
            options: what the test writes (default: EvaluationOptions()).
            record: what is known about the run (default: nothing; results.json goes into the trainer's log_dir).
        """
        super().__init__()
        self.options = options or EvaluationOptions()
        self.record = record or RunRecord()


def add_evaluation_outputs(trainer: L.Trainer) -> EvaluationOutputs:
    """The trainer's EvaluationOutputs callback, added to its callbacks (with the defaults) where it has none."""
    callbacks = cast(list[Callback], getattr(trainer, "callbacks"))  # set by Lightning, not declared on Trainer
    found = next((c for c in callbacks if isinstance(c, EvaluationOutputs)), None)
    if found is None:
        found = EvaluationOutputs()
        callbacks.append(found)
    return found


def evaluation_outputs(trainer: L.Trainer | None) -> EvaluationOutputs:
    """The trainer's EvaluationOutputs callback, or one with the defaults where it has none."""
    callbacks = getattr(trainer, "callbacks", None) or []
    return next((c for c in callbacks if isinstance(c, EvaluationOutputs)), EvaluationOutputs())
