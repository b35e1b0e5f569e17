"""UncertaintyEvalMixin: the one evaluation shared by every method.

It consumes only ``self(x)`` -> member outputs (M, B, K); what they mean (class logits, a Gaussian per
target) is the business of the module's TaskEvaluation (evaluation/task_evaluation.py), chosen once from its
task (evaluation/by_task.py). Validation logs the curves that show how the predictions, their calibration and
diversity evolve (with ``eval_sets_every`` K, also every test set's, every K epochs: evaluation/sets.py); test
evaluates every test set the datamodule names (roles id / shift / ood), writes results.json / results.csv
(rank 0, atomically), optionally the member predictions, and prints a table; predict writes the member
predictions of the first id set.
"""

import os
import warnings
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from ensemble_lab.compat import attached_trainer
from ensemble_lab.errors import ConfigError
from ensemble_lab.evaluation.by_task import evaluation_for
from ensemble_lab.evaluation.corrupted_sets import add_corruption_averages, add_set_details
from ensemble_lab.evaluation.outputs import EvaluationOutputs, evaluation_outputs
from ensemble_lab.evaluation.sets import eval_due, scalars
from ensemble_lab.evaluation.store import PredictionStore
from ensemble_lab.evaluation.task_evaluation import TaskEvaluation
from ensemble_lab.metrics.cost import format_cost, measure_cost
from ensemble_lab.metrics.tasks import Task
from ensemble_lab.metrics.weight_space import off_diagonal_mean, weight_cosine, weight_space_summary
from ensemble_lab.runs.results import CHECKPOINT_RECORD, check_can_write, set_aside_previous, write_results

# Under DDP, Lightning advises sync_dist for epoch-level values and warns that DistributedSampler
# repeats samples at test. Neither applies here: the PredictionStore gathers the complete set and
# drops the repeats, so val/ and test/ values are already exact and identical on every rank (and
# EnsembleModule reduces its train/ epoch sums across ranks itself).
warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('(val|test|train)/")
warnings.filterwarnings("ignore", message=r"Using `DistributedSampler` with the dataloaders\. During `trainer\.test\(\)`")

if TYPE_CHECKING:
    # the mixin's hooks use the LightningModule's attributes (trainer, device, log) and call self(x)
    _Base = L.LightningModule
else:
    _Base = object


class UncertaintyEvalMixin(_Base):
    """Mix into a LightningModule whose ``forward(x)`` returns member outputs (M, B, K) of its ``task``.

    Batches are ``(images, targets, indices)``; the datamodule may name its test sets through a
    ``test_set_roles`` mapping {name: "id" | "shift" | "ood"} in test-dataloader order. What a test writes
    and records comes from the trainer's EvaluationOutputs callback (evaluation/outputs.py; without one,
    the defaults).
    """

    #: set by the host module (EnsembleModule): number of members M
    num_members: int
    #: set by the host module: what its outputs mean (``evaluation`` is chosen from it)
    task: Task
    #: the generators' state outside test (on_test_start forks it, on_test_end restores it)
    _test_rng: AbstractContextManager[Any] | None
    #: the first test batch's images (cost measurement) and the cost measured on them
    _cost_images: Tensor | None = None
    _cost: dict[str, Any] | None = None
    #: the fitted calibration of this test (None without --calibration)
    _calibration: dict[str, Any] | None = None
    #: the evaluation of ``task`` (built by the ``evaluation`` property)
    _evaluation: TaskEvaluation | None = None

    @property
    def evaluation(self) -> TaskEvaluation:
        """The evaluation of this module's task: chosen once per task object (``evaluation_for``), again only when
        the host replaces its task (a regression model learns its target scaling in ``setup``)."""
        if self._evaluation is None or self._evaluation.task is not self.task:
            self._evaluation = evaluation_for(self.task)
        return self._evaluation

    def evaluation_outputs(self) -> EvaluationOutputs:
        """The options and run record of this evaluation: the trainer's EvaluationOutputs, else the defaults."""
        return evaluation_outputs(attached_trainer(self))

    def monitorable_metrics(self) -> list[str]:
        """The metrics a callback may monitor (--early_stopping.monitor, --checkpoint.monitor): those every
        validation epoch logs. A method that logs more validation metrics adds their names here."""
        return [f"val/{k}" for k in self.evaluation.val_curves]

    # ---- validation: curves --------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._stores = {"val": self.evaluation.new_store().to(self.device)}  # a plain dict: not submodules, not in checkpoints

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluation.store_batch(self, self._stores["val"], batch)

    def on_validation_epoch_end(self) -> None:
        if eval_due(self.trainer, self.evaluation_outputs().options.eval_sets_every):
            self._log_test_sets_during_fit()
        store = self._stores["val"]
        if store.is_empty or self.trainer.sanity_checking:
            return
        curves, bar = self.evaluation.validation_metrics(*store.compute())  # complete set on every rank
        # Values are identical on every rank after the gather, so no further sync is needed.
        self.log_dict(curves, prog_bar=False, sync_dist=False)
        self.log_dict(bar, prog_bar=True, logger=False)  # the progress bar's own (none for some tasks)
        # the effective weight cosine's curve beside val/mi and val/disagreement (factored: cheap)
        cosine = self.validation_weight_cosine()
        mean = off_diagonal_mean(cosine) if cosine is not None else None  # None for M = 1 too
        if mean is not None:
            self.log("val/weight_cosine", mean, sync_dist=False)

    def validation_weight_cosine(self) -> Tensor | None:
        """The (M, M) effective weight cosine that val/weight_cosine averages (None: no curve point). A method whose
        members are not all formed during fit (SnapshotEnsemble) gives those that are."""
        return weight_cosine(self)

    def _log_test_sets_during_fit(self) -> None:
        """val/<set>/<metric> of every test set, on rank 0 only (evaluation/sets.py says why)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "test_set_roles"):
            raise ConfigError("--eval_sets_every needs a datamodule that names its test sets (--data DigitsDataModule, ...)")
        if not self.trainer.is_global_zero:
            return
        self.log_dict(scalars("val", self.evaluation.fit_set_metrics(self, datamodule)), sync_dist=False, rank_zero_only=True)

    # ---- predict: member predictions of the first id set, to predictions/<set>.npz -------------------
    def on_predict_start(self) -> None:
        self._predict_dir = self.resolved_results_dir()  # every rank: trainer.log_dir is a collective under DDP
        self._stores = {"predict": PredictionStore(logits=False).to(self.device)}  # predict_step's outputs, as they are

    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        # outputs: predict_step's member predictions (M, B, ·), targets in the units they are written in
        self._stores["predict"].update(outputs, self.evaluation.predicted_targets(batch[1]), batch[2])

    def on_predict_end(self) -> None:
        store = self._stores["predict"]
        if not store.is_empty:
            predicted, targets = store.compute()  # the complete set, in dataset order, on every rank
            self._write_predictions(predicted, targets)

    @rank_zero_only
    def _write_predictions(self, predicted: Tensor, targets: Tensor) -> None:
        roles = getattr(getattr(self.trainer, "datamodule", None), "test_set_roles", None) or {"predict": "id"}
        name = next(n for n, role in roles.items() if role == "id")
        print("\n" + self.evaluation.write_predicted(self._predict_dir, name, predicted, targets, type(self).__name__))

    # ---- test: every set, result files ----------------------------------------------------------
    def test_set_roles(self) -> dict[str, str]:
        """{name: role} of the test dataloaders, in order; plain loaders become test_0, test_1 (id)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        roles = getattr(datamodule, "test_set_roles", None)
        if roles:
            return dict(roles)
        loaders = self.trainer.test_dataloaders
        count = len(loaders) if isinstance(loaders, (list, tuple)) else 1
        return {f"test_{i}": "id" for i in range(count)}

    def resolved_results_dir(self) -> Path:
        """Directory that receives results.json: the run record's ``results_dir`` or the trainer's log_dir."""
        return Path(self.evaluation_outputs().record.results_dir or self.trainer.log_dir or os.getcwd())

    def on_test_start(self) -> None:
        # On every rank: trainer.log_dir is a collective under DDP (calling it on rank 0 alone hangs),
        # and a refusal must stop all ranks together rather than leave the others waiting.
        self._results_path = self.resolved_results_dir()
        options = self.evaluation_outputs().options
        check_can_write(self._results_path, options.overwrite)
        datamodule = getattr(self.trainer, "datamodule", None)
        self.evaluation.start_test(self, datamodule)  # e.g. a classifier's validation split: its calibration data
        self._calibration = None if options.calibration == "none" else self.evaluation.fit_calibration(self, datamodule, options.calibration)
        # Random draws at test (MC Dropout's masks) start from the run's seed, so a test right after fit
        # and a later `test` of the same weights give the same numbers; the outer stream is put back after.
        device = self.device
        self._test_rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        self._test_rng.__enter__()
        torch.manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)))

    def on_test_end(self) -> None:
        rng = getattr(self, "_test_rng", None)
        if rng is not None:
            rng.__exit__(None, None, None)
            self._test_rng = None

    def on_test_epoch_start(self) -> None:
        self._test_names = list(self.test_set_roles())
        self._stores = {name: self.evaluation.new_store().to(self.device) for name in self._test_names}

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 0 and batch_idx == 0:
            self._cost_images = batch[0]  # the first test batch: what the cost is measured on
        self.evaluation.store_batch(self, self._stores[self._test_names[dataloader_idx]], batch)

    def on_test_epoch_end(self) -> None:
        roles = self.test_set_roles()
        outputs = {name: self._stores[name].compute_outputs() for name in self._test_names if not self._stores[name].is_empty}
        collected = self.evaluation.collect(outputs)  # what the metrics, figures and files read
        options = self.evaluation_outputs().options
        sets = self.evaluation.test_metrics(outputs, collected, roles, options)
        calibrated = {} if self._calibration is None else self.evaluation.calibrated_metrics(collected, roles, self._calibration, options)
        add_corruption_averages(getattr(self.trainer, "datamodule", None), sets, calibrated)  # <corrupted>_mean: c_acc, c_nll, c_ece
        for prefix, results in (("test", sets), ("test_calibrated", calibrated)):
            self.log_dict(scalars(prefix, results), sync_dist=False, add_dataloader_idx=False)
        images = self._cost_images
        self._cost = None if images is None else measure_cost(self, images, int(self.num_members))  # after every metric
        self._cost_images = None
        self.test_results = self._results_document(sets)
        if self._calibration is not None:  # after the temperature: every set again, and the fitted T
            self.test_results.update(calibration=self._calibration, sets_calibrated=calibrated)
        add_set_details(self.test_results, getattr(self.trainer, "datamodule", None))  # corruption, severity, ood_kind beside role
        for key in ("weight_cosine_mean", "weight_cosine_stored_mean"):
            if self.test_results[key] is not None:
                self.log(f"test/{key}", self.test_results[key], sync_dist=False, add_dataloader_idx=False)
        self._write_test_outputs(outputs, collected)

    def _results_document(self, sets: dict[str, dict[str, Any]]) -> dict[str, Any]:
        datamodule = getattr(self.trainer, "datamodule", None)
        seed = os.environ.get("PL_GLOBAL_SEED")
        record = self.evaluation_outputs().record
        checkpoint = getattr(self.trainer, "ckpt_path", None) or record.tested_checkpoint
        if checkpoint and Path(checkpoint).resolve().is_relative_to(self._results_path.resolve()):
            checkpoint = Path(checkpoint).resolve().relative_to(self._results_path.resolve())  # results.json names no absolute path of its own run
        return {
            "method": type(self).__name__,
            "run_name": record.run_name or type(self).__name__,
            "num_members": int(self.num_members),
            "seed": int(seed) if seed is not None else None,
            "datamodule": type(datamodule).__name__ if datamodule is not None else None,
            "checkpoint": str(checkpoint) if checkpoint else None,
            **{key: (record.tested_checkpoint_record or {}).get(key) for key in CHECKPOINT_RECORD},
            **self.members_description(),  # e.g. the checkpoints an assembled ensemble's members came from
            **weight_space_summary(self),  # weight_cosine(_stored) (M×M or None) and their off-diagonal means
            "conformal_alpha": self.evaluation.conformal_alpha(self.evaluation_outputs().options),
            "cost": self._cost,  # parameters, FLOPs per image, test images/s, peak memory (metrics/cost.py)
            "config": record.run_config,
            "test_changes": record.test_changes,
            "fit_config": record.fit_config,
            "sets": sets,
        }

    def members_description(self) -> dict[str, Any]:
        """Extra top-level entries of results.json that say where the members came from (default: none)."""
        return {}

    @rank_zero_only
    def _write_test_outputs(self, outputs: dict[str, tuple[Tensor, Tensor]], collected: dict[str, tuple[Tensor, Tensor]]) -> None:
        results_dir = self._results_path  # resolved on every rank in on_test_start
        set_aside_previous(results_dir)  # an earlier test's files (--overwrite) move to *.prev-N
        chosen = self.evaluation_outputs()
        if chosen.options.save_predictions:
            self.evaluation.write_predictions(results_dir, outputs, collected)
        if chosen.options.figures:
            step = self.global_step if chosen.record.logging_step is None else chosen.record.logging_step
            self.evaluation.write_figures(results_dir, collected, self.test_set_roles(), self.test_results, self.loggers, step)
        path = write_results(results_dir, self.test_results)  # last: results.json marks a complete test
        cost = self.test_results.get("cost")
        cost_line = "" if cost is None else format_cost(cost, self.device.type) + "\n"
        print(f"\n{type(self).__name__} (M={self.num_members}) results -> {path}\n{self.evaluation.summary(self.test_results, cost_line)}")
