"""TaskEvaluation: what validation, test and predict do with the member outputs of one task.

The mixin (evaluation/mixin.py) holds the Lightning hooks every method shares; everything in them that depends on
what the outputs mean (class logits, a Gaussian per target) is asked of the module's TaskEvaluation, chosen once
per task by ``evaluation_for`` (evaluation/by_task.py). A test's sets travel between the calls in two forms:

- ``outputs``: ``{name: (stored (M, N, K), targets)}``, what the set's PredictionStore kept (``compute_outputs``);
- ``collected``: ``{name: (member predictions (M, N, K'), targets)}``, what the metrics, figures and files read
  (``collect``: a classifier's member probabilities, a regression model's means and variances).
"""

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import lightning as L
from torch import Tensor

from ensemble_lab.evaluation.outputs import EvaluationOptions
from ensemble_lab.evaluation.store import PredictionStore
from ensemble_lab.metrics.tasks import Task

Sets = dict[str, tuple[Tensor, Tensor]]
"""``{set name: (member tensor (M, N, ·), targets)}``: a test's ``outputs`` or ``collected`` (module docstring)."""
Metrics = dict[str, dict[str, Any]]
"""``{set name: {"role": .., metric: value}}``: the ``sets`` of results.json."""


class TaskEvaluation(ABC):
    """The evaluation of one task's member outputs; one instance per module (it keeps what a test fits)."""

    #: the metrics every validation epoch logs as ``val/<name>`` (what a callback may monitor)
    val_curves: tuple[str, ...]

    def __init__(self, task: Task) -> None:
        """
        Args:
            task: the module's task (metrics/tasks.py), which computes every number.
        """
        self.task = task

    # ---- a batch -------------------------------------------------------------------------------------
    @abstractmethod
    def new_store(self) -> PredictionStore:
        """An empty store for ``store_batch`` (on the CPU; the mixin moves it to the module's device)."""

    @abstractmethod
    def store_batch(self, module: L.LightningModule, store: PredictionStore, batch: Any) -> None:
        """Add ``module``'s member outputs on ``batch`` (inputs, targets, dataset indices) to ``store``."""

    @abstractmethod
    def collect(self, outputs: Sets) -> Sets:
        """A test's stored ``outputs`` -> ``collected``, what the metrics, figures and files read."""

    # ---- validation and the test sets during fit -----------------------------------------------------
    @abstractmethod
    def validation_metrics(self, stored: Tensor, targets: Tensor) -> tuple[dict[str, float], dict[str, float]]:
        """The validation set's store ``compute()`` -> (``{"val/<curve>": value}`` to log, values for the progress bar only)."""

    @abstractmethod
    def fit_set_metrics(self, module: L.LightningModule, datamodule: Any) -> Metrics:
        """Every test set of ``datamodule``'s metrics during a fit (``--eval_sets_every``)."""

    # ---- test ---------------------------------------------------------------------------------------
    def start_test(self, module: L.LightningModule, datamodule: Any) -> None:
        """Prepare a test (before any test batch): predict what the test's metrics need beyond its sets (default: nothing)."""

    @abstractmethod
    def fit_calibration(self, module: L.LightningModule, datamodule: Any, method: str) -> dict[str, Any]:
        """Fit ``--calibration method`` on the validation split: the ``calibration`` record of results.json."""

    @abstractmethod
    def test_metrics(self, outputs: Sets, collected: Sets, roles: dict[str, str], options: EvaluationOptions) -> Metrics:
        """Every test set's metrics (``roles``: ``{name: "id" | "shift" | "ood"}``)."""

    @abstractmethod
    def calibrated_metrics(self, collected: Sets, roles: dict[str, str], calibration: dict[str, Any], options: EvaluationOptions) -> Metrics:
        """Every test set's metrics after the calibration that ``fit_calibration`` recorded."""

    def conformal_alpha(self, options: EvaluationOptions) -> float | None:
        """The α of the test's conformal sets as results.json records it (default: None, no conformal sets)."""
        return None

    @abstractmethod
    def write_predictions(self, results_dir: Path, outputs: Sets, collected: Sets) -> None:
        """``--save_predictions``: ``<results_dir>/predictions/<set>.npz`` of every set."""

    @abstractmethod
    def write_figures(
        self, results_dir: Path, collected: Sets, roles: dict[str, str], results: dict[str, Any], loggers: Any, step: int
    ) -> None:  # fmt: skip
        """``--figures``: the run's figures into ``<results_dir>/figures/`` and its loggers."""

    @abstractmethod
    def summary(self, results: dict[str, Any], cost_line: str) -> str:
        """The printed text of a test below its results path: tables of ``results``' sets and ``cost_line``."""

    # ---- predict ------------------------------------------------------------------------------------
    @abstractmethod
    def predict_batch(self, module: L.LightningModule, batch: Any) -> Tensor:
        """What ``predict_step`` returns for ``batch``: the member predictions that predict writes."""

    def predicted_targets(self, targets: Tensor) -> Tensor:
        """A predict batch's targets as written beside its predictions (default: as they are)."""
        return targets

    @abstractmethod
    def write_predicted(self, results_dir: Path, name: str, predicted: Tensor, targets: Tensor, method: str) -> str:
        """Write predict's member predictions (M, N, ·) of set ``name`` and their targets into
        ``<results_dir>/predictions/``; the line that says what was written (``method``: the module's class name)."""
