"""UncertaintyEvalMixin: the one evaluation shared by every method.

It consumes only ``self(x)`` -> member logits (M, B, C). Validation logs the curves that show how
accuracy, calibration and diversity evolve (with ``eval_sets_every`` K, also every test set's, every K
epochs: evaluation/sets.py); test evaluates every test set the datamodule names
(roles id / shift / ood), writes results.json / results.csv (rank 0, atomically), optionally the
member probabilities, and prints a table.
"""

import os
import sys
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
from ensemble_lab.evaluation import regression_sets as regression
from ensemble_lab.evaluation.corrupted_sets import add_corruption_averages, add_set_details
from ensemble_lab.evaluation.extended import ExtendedInputs
from ensemble_lab.evaluation.outputs import EvaluationOutputs, evaluation_outputs
from ensemble_lab.evaluation.sets import eval_due, predict_test_sets, predict_validation, scalars, set_metrics
from ensemble_lab.evaluation.store import PredictionStore
from ensemble_lab.metrics.calibration import apply_temperature, ensemble_nll, fit_temperature, log_probs, temperature_warnings
from ensemble_lab.metrics.classification import predictive_metrics
from ensemble_lab.metrics.cost import format_cost, measure_cost
from ensemble_lab.metrics.registry import REGRESSION_VAL_CURVES, VAL_CURVES
from ensemble_lab.metrics.tasks import Task
from ensemble_lab.metrics.weight_space import off_diagonal_mean, weight_cosine, weight_space_summary
from ensemble_lab.runs.results import (
    CHECKPOINT_RECORD,
    VAL_SPLIT,
    check_can_write,
    format_table,
    set_aside_previous,
    write_predictions,
    write_results,
)

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
    """Mix into a LightningModule whose ``forward(x)`` returns member logits (M, B, C).

    Batches are ``(images, targets, indices)``; the datamodule may name its test sets through a
    ``test_set_roles`` mapping {name: "id" | "shift" | "ood"} in test-dataloader order. What a test writes
    and records comes from the trainer's EvaluationOutputs callback (evaluation/outputs.py; without one,
    the defaults).
    """

    #: set by the host module (EnsembleModule): number of members M
    num_members: int
    #: set by the host module: what its outputs mean (a regression model's hooks go to evaluation/regression_sets.py)
    task: Task
    #: the generators' state outside test (on_test_start forks it, on_test_end restores it)
    _test_rng: AbstractContextManager[Any] | None
    #: the first test batch's images (cost measurement) and the cost measured on them
    _cost_images: Tensor | None = None
    _cost: dict[str, Any] | None = None
    #: the fitted calibration of this test (None without --calibration)
    _calibration: dict[str, Any] | None = None
    #: the validation split's member logits (M, n, C) and targets (n,) of this test (None: the datamodule has none)
    _val_split: tuple[Tensor, Tensor] | None = None

    def evaluation_outputs(self) -> EvaluationOutputs:
        """The options and run record of this evaluation: the trainer's EvaluationOutputs, else the defaults."""
        return evaluation_outputs(attached_trainer(self))

    def monitorable_metrics(self) -> list[str]:
        """The metrics a callback may monitor (--early_stopping.monitor, --checkpoint.monitor): those every
        validation epoch logs. A method that logs more validation metrics adds their names here."""
        return [f"val/{k}" for k in (REGRESSION_VAL_CURVES if self.task.name == "regression" else VAL_CURVES)]

    # ---- shared step -------------------------------------------------------------------------
    def _store_batch(self, store: PredictionStore, batch: Any) -> None:
        if self.task.name == "regression":
            return regression.store_batch(self, store, batch)
        images, targets, indices = batch[0], batch[1], batch[2]
        store.update(self(images).float(), targets, indices)  # member logits (M, B, C); compute() gives their softmax

    def _new_store(self, logits: bool = True) -> PredictionStore:
        """A store of this batch's outputs: logits whose softmax ``compute()`` gives (classification), else as they are."""
        return PredictionStore(logits and self.task.name == "classification").to(self.device)

    # ---- validation: curves --------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._stores = {"val": self._new_store()}  # a plain dict: not submodules, not in checkpoints

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._store_batch(self._stores["val"], batch)

    def on_validation_epoch_end(self) -> None:
        if eval_due(self.trainer, self.evaluation_outputs().options.eval_sets_every):
            self._log_test_sets_during_fit()
        store = self._stores["val"]
        if store.is_empty or self.trainer.sanity_checking:
            return
        if self.task.name == "regression":
            self.log_dict(regression.validation_curves(self.task, *store.compute(), REGRESSION_VAL_CURVES), sync_dist=False)
            return
        member_probs, targets = store.compute()  # complete set on every rank
        metrics = predictive_metrics(member_probs, targets)
        # Values are identical on every rank after the gather, so no further sync is needed.
        self.log_dict({f"val/{k}": float(metrics[k]) for k in VAL_CURVES}, prog_bar=False, sync_dist=False)
        self.log("val/acc_bar", float(metrics["acc"]), prog_bar=True, logger=False)
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
        if self.task.name == "regression":
            sets = regression.set_metrics(regression.predict_sets(self, datamodule), dict(datamodule.test_set_roles), self.task)
        else:
            sets = set_metrics(predict_test_sets(self, datamodule), dict(datamodule.test_set_roles))
        self.log_dict(scalars("val", sets), sync_dist=False, rank_zero_only=True)

    # ---- predict: member probabilities of the first id set, to predictions/<set>.npz -------------------
    def on_predict_start(self) -> None:
        self._predict_dir = self.resolved_results_dir()  # every rank: trainer.log_dir is a collective under DDP
        self._stores = {"predict": self._new_store(logits=False)}  # predict_step's outputs are probabilities

    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._stores["predict"].update(outputs, batch[1], batch[2])  # outputs: member probabilities (M, B, C)

    def on_predict_end(self) -> None:
        store = self._stores["predict"]
        if not store.is_empty:
            member_probs, targets = store.compute()  # the complete set, in dataset order, on every rank
            self._write_predictions(member_probs, targets)

    @rank_zero_only
    def _write_predictions(self, member_probs: Tensor, targets: Tensor) -> None:
        roles = getattr(getattr(self.trainer, "datamodule", None), "test_set_roles", None) or {"predict": "id"}
        name = next(n for n, role in roles.items() if role == "id")
        path = write_predictions(self._predict_dir, name, member_probs.cpu().numpy(), targets.cpu().numpy())
        m, n, c = member_probs.shape
        print(f"\n{type(self).__name__} (M={m}) member probabilities of {name} ({n} images, {c} classes) -> {path}")

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
        # the validation split's member logits: the temperature's and the conformal sets' calibration data
        classifier = self.task.name == "classification"
        self._val_split = predict_validation(self, getattr(self.trainer, "datamodule", None)) if classifier else None
        self._calibration = None if options.calibration == "none" else self._fit_calibration(options.calibration)
        # Random draws at test (MC Dropout's masks) start from the run's seed, so a test right after fit
        # and a later `test` of the same weights give the same numbers; the outer stream is put back after.
        device = self.device
        self._test_rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        self._test_rng.__enter__()
        torch.manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)))

    def _fit_calibration(self, method: str) -> dict[str, Any]:
        """Fit the temperature(s) on the validation split's member logits (predicted in on_test_start); a
        regression model's variance scaling, whatever ``method`` names (evaluation/regression_sets.py)."""
        if self.task.name == "regression":
            return regression.fit_calibration(self, getattr(self.trainer, "datamodule", None))
        if self._val_split is None:
            raise ConfigError("--calibration needs a datamodule with a validation split (--data ...)")
        device = self.device
        logits, y = self._val_split  # (M, N, C), (N,)
        lp = torch.log_softmax(logits.double(), dim=-1)  # (M, N, C)
        temperature = fit_temperature(lp, y, per_member=method == "temperature_per_member")
        one = torch.ones((), dtype=torch.float64, device=device)
        warned = temperature_warnings(temperature.cpu(), int(y.shape[0]))
        if self.trainer.is_global_zero:  # every rank fits the same T: say it once
            for line in warned:
                print(f"ensemble-lab test: warning: --calibration {method}: {line}", file=sys.stderr)
        return {
            "method": method,
            "temperature": temperature.cpu().tolist(),  # a number, or one per member
            "val_images": int(y.shape[0]),
            "val_nll": float(ensemble_nll(lp, y, one)),
            "val_nll_calibrated": float(ensemble_nll(lp, y, temperature)),
            "warnings": warned,  # why the fitted T may not be trusted (metrics/calibration.py)
        }

    def on_test_end(self) -> None:
        rng = getattr(self, "_test_rng", None)
        if rng is not None:
            rng.__exit__(None, None, None)
            self._test_rng = None

    def on_test_epoch_start(self) -> None:
        self._test_names = list(self.test_set_roles())
        self._stores = {name: self._new_store() for name in self._test_names}

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 0 and batch_idx == 0:
            self._cost_images = batch[0]  # the first test batch: what the cost is measured on
        self._store_batch(self._stores[self._test_names[dataloader_idx]], batch)

    def on_test_epoch_end(self) -> None:
        roles = self.test_set_roles()
        outputs = {name: self._stores[name].compute_outputs() for name in self._test_names if not self._stores[name].is_empty}
        logits: dict[str, Tensor] | None = None
        if self.task.name == "regression":  # (M, N, 2·D) means and variances, (N, D) targets, original units
            collected = outputs
            sets = regression.set_metrics(collected, roles, self.task)
        else:
            collected = {name: (torch.softmax(out, dim=-1), targets) for name, (out, targets) in outputs.items()}  # (M, N, C), (N,)
            logits = {name: member_logits for name, (member_logits, _) in outputs.items()}
            sets = set_metrics(collected, roles, self._extended_inputs(logits))
        calibrated = {} if self._calibration is None else self._calibrated_sets(collected, roles)
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
        self._write_test_outputs(collected, logits)

    def _calibrated_sets(self, collected: dict[str, tuple[Tensor, Tensor]], roles: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Every set's metrics with the members' logits divided by the fitted temperature(s)."""
        assert self._calibration is not None
        if self.task.name == "regression":
            return regression.calibrated_sets(collected, roles, self.task, self._calibration)
        assert self._val_split is not None
        temperature = torch.tensor(self._calibration["temperature"], dtype=torch.float64)
        scaled = {name: (apply_temperature(log_probs(p), temperature).float(), t) for name, (p, t) in collected.items()}
        val_logits, val_targets = self._val_split
        val = (apply_temperature(torch.log_softmax(val_logits.double(), dim=-1), temperature).float(), val_targets)
        return set_metrics(scaled, roles, self._extended_inputs(None, val))  # no maxlogit / energy of scaled logits

    def _extended_inputs(self, logits: dict[str, Tensor] | None, val: tuple[Tensor, Tensor] | None = None) -> ExtendedInputs:
        """What the test's extended metrics need: the sets' logits, the validation split's probabilities (default:
        the softmax of its logits) and the conformal α (evaluation/extended.py)."""
        if val is None and self._val_split is not None:
            val = (torch.softmax(self._val_split[0].float(), dim=-1), self._val_split[1])
        alpha = self.evaluation_outputs().options.conformal_alpha
        return ExtendedInputs(logits, val, alpha)

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
            "conformal_alpha": self.evaluation_outputs().options.conformal_alpha if self._val_split is not None else None,
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
    def _write_test_outputs(self, collected: dict[str, tuple[Tensor, Tensor]], logits: dict[str, Tensor] | None) -> None:
        results_dir = self._results_path  # resolved on every rank in on_test_start
        set_aside_previous(results_dir)  # an earlier test's files (--overwrite) move to *.prev-N
        outputs = self.evaluation_outputs()
        if outputs.options.save_predictions:
            for name, (member_probs, targets) in collected.items():
                if logits is None:  # regression: mean, var (M, N, D) and targets (N, D)
                    regression.write_predictions(results_dir, name, member_probs, targets)
                    continue
                write_predictions(results_dir, name, member_probs.cpu().numpy(), targets.cpu().numpy(), logits[name].cpu().numpy())
            if self._val_split is not None:  # what `report` fits the conformal sets of older runs on
                val_logits, val_targets = self._val_split
                val_probs = torch.softmax(val_logits.float(), dim=-1)
                write_predictions(results_dir, VAL_SPLIT, val_probs.cpu().numpy(), val_targets.cpu().numpy(), val_logits.float().cpu().numpy())
        if outputs.options.figures and self.task.name == "classification":  # no regression figures yet
            from ensemble_lab.figures.per_run import write_figures  # matplotlib only when drawing

            step = self.global_step if outputs.record.logging_step is None else outputs.record.logging_step
            write_figures(results_dir, collected, self.test_set_roles(), self.test_results, self.loggers, step)
        path = write_results(results_dir, self.test_results)  # last: results.json marks a complete test
        cost = self.test_results.get("cost")
        cost_line = "" if cost is None else format_cost(cost, self.device.type) + "\n"
        if self.task.name == "regression":
            table = regression.format_table(self.test_results["sets"])
            if self._calibration is not None:
                table += "\nafter variance scaling:\n" + regression.format_table(self.test_results["sets_calibrated"], self._calibration)
            print(f"\n{type(self).__name__} (M={self.num_members}) results -> {path}\n{table}\n{cost_line}")
            return
        if self._calibration is not None:
            record = self._calibration
            temperature = record["temperature"]
            shown = f"{temperature:.3f}" if isinstance(temperature, float) else ", ".join(f"{t:.3f}" for t in temperature)
            cost_line += (
                f"after temperature scaling (T = {shown}; validation nll {record['val_nll']:.4f} -> "
                f"{record['val_nll_calibrated']:.4f}):\n{format_table(self.test_results['sets_calibrated'])}\n"
            )
        print(f"\n{type(self).__name__} (M={self.num_members}) results -> {path}\n{format_table(self.test_results['sets'])}\n{cost_line}")
