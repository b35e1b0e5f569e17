"""The evaluation of a classifier: member logits (M, B, C) are stored, their softmax scored.

A test also predicts the validation split's member logits (``start_test``): the temperature (``--calibration``)
and the conformal sets are fitted on them, and ``--save_predictions`` writes them as ``val_split``.
"""

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from ensemble_lab.errors import ConfigError
from ensemble_lab.evaluation.extended import ExtendedInputs
from ensemble_lab.evaluation.outputs import EvaluationOptions
from ensemble_lab.evaluation.sets import predict_test_sets, predict_validation, set_metrics
from ensemble_lab.evaluation.store import PredictionStore
from ensemble_lab.evaluation.task_evaluation import Metrics, Sets, TaskEvaluation
from ensemble_lab.metrics.calibration import apply_temperature, ensemble_nll, fit_temperature, log_probs, temperature_warnings
from ensemble_lab.metrics.classification import predictive_metrics
from ensemble_lab.metrics.registry import VAL_CURVES
from ensemble_lab.runs.results import VAL_SPLIT, format_table, write_predictions


class ClassificationEvaluation(TaskEvaluation):
    """Accuracy, calibration, diversity and OOD detection of member probabilities; temperature scaling."""

    val_curves = VAL_CURVES
    #: the validation split's member logits (M, n, C) and targets (n,) of this test (None: the datamodule has none)
    val_split: tuple[Tensor, Tensor] | None = None

    def new_store(self) -> PredictionStore:
        """A store of member logits; its ``compute()`` gives their softmax."""
        return PredictionStore(logits=True)

    def store_batch(self, module: L.LightningModule, store: PredictionStore, batch: Any) -> None:
        """Member logits (M, B, C), targets (B,) and indices (B,) of ``batch``."""
        store.update(module(batch[0]).float(), batch[1], batch[2])

    def collect(self, outputs: Sets) -> Sets:
        """Member logits -> member probabilities (M, N, C), targets (N,)."""
        return {name: (torch.softmax(logits, dim=-1), targets) for name, (logits, targets) in outputs.items()}

    def validation_metrics(self, stored: Tensor, targets: Tensor) -> tuple[dict[str, float], dict[str, float]]:
        """The registry's validation curves of the member probabilities; the accuracy again for the progress bar."""
        metrics = predictive_metrics(stored, targets)
        return {f"val/{k}": float(metrics[k]) for k in VAL_CURVES}, {"val/acc_bar": float(metrics["acc"])}

    def fit_set_metrics(self, module: L.LightningModule, datamodule: Any) -> Metrics:
        """The predictive and OOD metrics of every test set (no extended metrics during fit)."""
        return set_metrics(predict_test_sets(module, datamodule), dict(datamodule.test_set_roles))

    def start_test(self, module: L.LightningModule, datamodule: Any) -> None:
        """Predict the validation split's member logits (the calibration and conformal data of this test)."""
        self.val_split = predict_validation(module, datamodule)

    def fit_calibration(self, module: L.LightningModule, datamodule: Any, method: str) -> dict[str, Any]:
        """Temperature scaling on the validation split's member logits: one T, or one per member
        (``temperature_per_member``); a T that should not be trusted is warned about once (rank 0)."""
        if self.val_split is None:
            raise ConfigError("--calibration needs a datamodule with a validation split (--data ...)")
        logits, y = self.val_split  # (M, N, C), (N,)
        lp = torch.log_softmax(logits.double(), dim=-1)  # (M, N, C)
        temperature = fit_temperature(lp, y, per_member=method == "temperature_per_member")
        one = torch.ones((), dtype=torch.float64, device=module.device)
        warned = temperature_warnings(temperature.cpu(), int(y.shape[0]))
        if module.trainer.is_global_zero:  # every rank fits the same T: say it once
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

    def _extended(self, options: EvaluationOptions, logits: dict[str, Tensor] | None, val: tuple[Tensor, Tensor] | None = None) -> ExtendedInputs:
        """What the extended metrics need: the sets' logits, the validation split's probabilities (default: the
        softmax of its logits) and the conformal α (evaluation/extended.py)."""
        if val is None and self.val_split is not None:
            val = (torch.softmax(self.val_split[0].float(), dim=-1), self.val_split[1])
        return ExtendedInputs(logits, val, options.conformal_alpha)

    def test_metrics(self, outputs: Sets, collected: Sets, roles: dict[str, str], options: EvaluationOptions) -> Metrics:
        """Predictive, OOD and extended metrics of every set (evaluation/sets.py)."""
        logits = {name: member_logits for name, (member_logits, _) in outputs.items()}
        return set_metrics(collected, roles, self._extended(options, logits))

    def calibrated_metrics(self, collected: Sets, roles: dict[str, str], calibration: dict[str, Any], options: EvaluationOptions) -> Metrics:
        """Every set's metrics with the members' logits divided by the fitted temperature(s)."""
        assert self.val_split is not None
        temperature = torch.tensor(calibration["temperature"], dtype=torch.float64)
        scaled = {name: (apply_temperature(log_probs(p), temperature).float(), t) for name, (p, t) in collected.items()}
        val_logits, val_targets = self.val_split
        val = (apply_temperature(torch.log_softmax(val_logits.double(), dim=-1), temperature).float(), val_targets)
        return set_metrics(scaled, roles, self._extended(options, None, val))  # no maxlogit / energy of scaled logits

    def conformal_alpha(self, options: EvaluationOptions) -> float | None:
        """``--conformal_alpha`` when the test had a validation split to fit the conformal sets on."""
        return options.conformal_alpha if self.val_split is not None else None

    def write_predictions(self, results_dir: Path, outputs: Sets, collected: Sets) -> None:
        """Each set's member probabilities, logits and targets; the validation split's as ``val_split`` (what
        ``report`` fits the conformal sets of older runs on)."""
        for name, (member_probs, targets) in collected.items():
            write_predictions(results_dir, name, member_probs.cpu().numpy(), targets.cpu().numpy(), outputs[name][0].cpu().numpy())
        if self.val_split is not None:
            val_logits, val_targets = self.val_split
            val_probs = torch.softmax(val_logits.float(), dim=-1)
            write_predictions(results_dir, VAL_SPLIT, val_probs.cpu().numpy(), val_targets.cpu().numpy(), val_logits.float().cpu().numpy())

    def write_figures(
        self, results_dir: Path, collected: Sets, roles: dict[str, str], results: dict[str, Any], loggers: Any, step: int
    ) -> None:  # fmt: skip
        """The per-run figures of figures/per_run.py."""
        from ensemble_lab.figures.per_run import write_figures  # matplotlib only when drawing

        write_figures(results_dir, collected, roles, results, loggers, step)

    def summary(self, results: dict[str, Any], cost_line: str) -> str:
        """The sets' table, the cost line and, after temperature scaling, the calibrated sets' table."""
        calibration = results.get("calibration")
        if calibration is not None:
            temperature = calibration["temperature"]
            shown = f"{temperature:.3f}" if isinstance(temperature, float) else ", ".join(f"{t:.3f}" for t in temperature)
            cost_line += (
                f"after temperature scaling (T = {shown}; validation nll {calibration['val_nll']:.4f} -> "
                f"{calibration['val_nll_calibrated']:.4f}):\n{format_table(results['sets_calibrated'])}\n"
            )
        return f"{format_table(results['sets'])}\n{cost_line}"

    def predict_batch(self, module: L.LightningModule, batch: Any) -> Tensor:
        """Member probabilities (M, B, C)."""
        return torch.softmax(module(batch[0]).float(), dim=-1)

    def write_predicted(self, results_dir: Path, name: str, predicted: Tensor, targets: Tensor, method: str) -> str:
        """predictions/<name>.npz with ``member_probs`` (M, N, C) and ``targets`` (N,), as a test writes them."""
        path = write_predictions(results_dir, name, predicted.cpu().numpy(), targets.cpu().numpy())
        m, n, c = predicted.shape
        return f"{method} (M={m}) member probabilities of {name} ({n} images, {c} classes) -> {path}"
