"""The evaluation of a regression model: what the store keeps, each set's metrics, calibration, files.

RegressionEvaluation (the mixin's TaskEvaluation of a regression model, evaluation/task_evaluation.py) calls these
functions; the numbers all come from the model's task (metrics/tasks.py RegressionTask), never from the method. A set's store row holds the
members' means and variances side by side, ``(M, B, 2·D)`` = [mean | var] in the targets' original units,
and its targets ``(B, D)`` in original units, so the one PredictionStore serves both tasks.
"""

import io
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from ensemble_lab.evaluation.outputs import EvaluationOptions
from ensemble_lab.evaluation.store import PredictionStore
from ensemble_lab.evaluation.task_evaluation import Metrics, Sets, TaskEvaluation
from ensemble_lab.io import atomic_write_bytes
from ensemble_lab.metrics import regression as reg
from ensemble_lab.metrics.registry import REGRESSION_VAL_CURVES
from ensemble_lab.metrics.tasks import Stored, Task

#: the metrics of a regression set in the printed table
REGRESSION_TABLE_COLUMNS = ("rmse", "mae", "nll", "crps", "coverage_90", "width_90", "qce", "epistemic_share", "auroc_variance", "auroc_epistemic")
#: what ``--calibration`` fits for a regression model, whatever its value (other than none)
VARIANCE_SCALING = "variance_scaling"


def pack(stored: Stored) -> Tensor:
    """Stored means and variances (M, B, D) each -> one store row (M, B, 2·D), [mean | var]."""
    return torch.cat([stored["mean"], stored["var"]], dim=-1)


def unpack(packed: Tensor) -> Stored:
    """A store's (M, N, 2·D) -> {"mean", "var"} (M, N, D) each."""
    mean, var = packed.chunk(2, dim=-1)
    return {"mean": mean, "var": var}


def batch_row(task: Task, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Member outputs (M, B, 2·D) and standardised targets (B, D) -> the store's (M, B, 2·D) and (B, D), original units."""
    return pack(task.predictive(outputs)), task.evaluation_targets(targets)


def store_batch(module: Any, store: PredictionStore, batch: Any) -> None:
    """Add a batch (features, standardised targets, indices) of ``module``'s predictions to ``store``."""
    packed, targets = batch_row(module.task, module(batch[0]), batch[1])
    store.update(packed, targets, batch[2])


def set_metrics(collected: dict[str, tuple[Tensor, Tensor]], roles: dict[str, str], task: Task) -> dict[str, dict[str, Any]]:
    """Every set's ``{"role", **task.metrics}``; an ood set (the gap keeps its targets) also gets the OOD detection of
    the total and the epistemic variance against the first id set: ``auroc_variance``, ``auroc_epistemic``, ....

    Args:
        collected: ``{name: (packed (M, N, 2·D), targets (N, D))}``, original units.
        roles: ``{name: "id" | "shift" | "ood"}``.
        task: the model's task.
    """
    sets = {name: {"role": roles[name], **task.metrics(unpack(p), t)} for name, (p, t) in collected.items()}
    id_names = [n for n in collected if roles[n] == "id"]
    for name in collected:
        if roles[name] == "ood" and id_names:
            sets[name].update(task.ood_metrics(unpack(collected[id_names[0]][0]), unpack(collected[name][0])))
    return sets


def validation_curves(task: Task, packed: Tensor, targets: Tensor, curves: tuple[str, ...]) -> dict[str, float]:
    """``{"val/<name>": value}`` of the validation set for each name of ``curves`` (the registry's regression curves)."""
    metrics = task.metrics(unpack(packed), targets)
    return {f"val/{k}": float(metrics[k]) for k in curves}


@torch.no_grad()
def predict_sets(module: Any, datamodule: Any, stage: str = "test") -> dict[str, tuple[Tensor, Tensor]]:
    """Every test set of ``datamodule`` (``stage`` "test"), or its validation split (``stage`` "validate", as "val"),
    as ``{name: (packed (M, N, 2·D), targets (N, D))}`` in original units, with the random draws (MC Dropout's
    masks) of a stream seeded with the run's seed; the outer stream is put back afterwards."""
    datamodule.setup(stage)
    if stage == "test":
        loaders = dict(zip(dict(datamodule.test_set_roles), datamodule.test_dataloader()))
    else:
        loaders = {"val": datamodule.val_dataloader()}
    device = module.device
    collected = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)))
        for name, loader in loaders.items():
            rows, targets = [], []
            for batch in loader:
                (features,) = datamodule.on_after_batch_transfer((batch[0].to(device),), 0)  # the eval preprocessing
                packed, target = batch_row(module.task, module(features), batch[1].to(device))
                rows.append(packed)
                targets.append(target)
            collected[name] = (torch.cat(rows, dim=1), torch.cat(targets))  # (M, N, 2·D), (N, D)
    return collected


def fit_calibration(module: Any, datamodule: Any) -> dict[str, Any]:
    """Variance scaling fitted on the validation split's mixture NLL: the record results.json keeps."""
    packed, targets = predict_sets(module, datamodule, "validate")["val"]
    stored = unpack(packed.double())
    scale = module.task.calibrate(stored, targets.double())
    calibrated = module.task.apply_calibration(stored, scale)
    nll = lambda s: float(-reg.mixture_log_likelihood(s["mean"], s["var"], targets.double()).mean())
    return {
        "method": VARIANCE_SCALING,
        "variance_scale": float(scale),
        "val_rows": int(targets.shape[0]),
        "val_nll": nll(stored),
        "val_nll_calibrated": nll(calibrated),
        "warnings": [],
    }


def calibrated_sets(
    collected: dict[str, tuple[Tensor, Tensor]], roles: dict[str, str], task: Task, record: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Every set's metrics with the member variances multiplied by the fitted scale."""
    scale = torch.tensor(record["variance_scale"], dtype=torch.float64)
    scaled = {name: (pack(task.apply_calibration(unpack(p), scale)), t) for name, (p, t) in collected.items()}
    return set_metrics(scaled, roles, task)


def write_predictions(results_dir: Path, set_name: str, packed: Tensor, targets: Tensor) -> Path:
    """predictions/<set>.npz with ``mean`` and ``var`` float32 (M, N, D) and ``targets`` float32 (N, D), original units."""
    stored = unpack(packed.cpu())
    buffer = io.BytesIO()
    np.savez(buffer, mean=stored["mean"].float().numpy(), var=stored["var"].float().numpy(), targets=targets.cpu().float().numpy())
    path = Path(results_dir) / "predictions" / f"{set_name}.npz"
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_figures(
    results_dir: Path, collected: dict[str, tuple[Tensor, Tensor]], roles: dict[str, str], results: dict[str, Any],
    loggers: Any = (), step: int = 0,
) -> list[Path]:  # fmt: skip
    """Draw a regression run's figures (figures/regression.py: interval coverage, predictive bands) into
    ``<results_dir>/figures/`` and TensorBoard; ``collected`` holds each set's store rows (M, N, 2·D) and targets (N, D)."""
    from ensemble_lab.figures.regression import write_regression_figures  # matplotlib only when drawing

    stored = {name: (unpack(packed.cpu()), targets.cpu()) for name, (packed, targets) in collected.items()}
    sets = {name: (s["mean"], s["var"], targets) for name, (s, targets) in stored.items()}
    return write_regression_figures(results_dir, sets, roles, results, loggers, step)


def format_table(sets: dict[str, dict[str, Any]], calibration: dict[str, Any] | None = None) -> str:
    """The printed table of a regression test: one row per set, every column for every set (the gap keeps its
    targets); with ``calibration``, the fitted scale's line."""
    header = ["set", "role", *REGRESSION_TABLE_COLUMNS]
    rows = [[name, str(m.get("role", "")), *("-" if m.get(c) is None else f"{m[c]:.4f}" for c in REGRESSION_TABLE_COLUMNS)] for name, m in sets.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    table = "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
    if calibration is None:
        return table
    return (
        f"{table}\nvariance scaling (s = {calibration['variance_scale']:.4f}; validation nll {calibration['val_nll']:.4f} -> "
        f"{calibration['val_nll_calibrated']:.4f})"
    )


class RegressionEvaluation(TaskEvaluation):
    """Members' Gaussians scored in the targets' units (the task's metrics); variance scaling as the calibration.

    Every store, ``outputs`` and ``collected`` set holds the packed ``(M, N, 2·D)`` [mean | var] and targets (N, D).
    """

    val_curves = REGRESSION_VAL_CURVES

    def new_store(self) -> PredictionStore:
        """A store of packed means and variances, kept as they are."""
        return PredictionStore(logits=False)

    def store_batch(self, module: L.LightningModule, store: PredictionStore, batch: Any) -> None:
        """The batch's packed means and variances and its targets, in original units."""
        store_batch(module, store, batch)

    def collect(self, outputs: Sets) -> Sets:
        """The stored sets as they are."""
        return outputs

    def validation_metrics(self, stored: Tensor, targets: Tensor) -> tuple[dict[str, float], dict[str, float]]:
        """The registry's regression curves; nothing for the progress bar."""
        return validation_curves(self.task, stored, targets, REGRESSION_VAL_CURVES), {}

    def fit_set_metrics(self, module: L.LightningModule, datamodule: Any) -> Metrics:
        """The task's metrics of every test set."""
        return set_metrics(predict_sets(module, datamodule), dict(datamodule.test_set_roles), self.task)

    def fit_calibration(self, module: L.LightningModule, datamodule: Any, method: str) -> dict[str, Any]:
        """Variance scaling, whatever ``method`` names."""
        return fit_calibration(module, datamodule)

    def test_metrics(self, outputs: Sets, collected: Sets, roles: dict[str, str], options: EvaluationOptions) -> Metrics:
        """The task's metrics of every set, and the OOD detection of an ood set."""
        return set_metrics(collected, roles, self.task)

    def calibrated_metrics(self, collected: Sets, roles: dict[str, str], calibration: dict[str, Any], options: EvaluationOptions) -> Metrics:
        """Every set's metrics with the variances scaled by the fitted s."""
        return calibrated_sets(collected, roles, self.task, calibration)

    def write_predictions(self, results_dir: Path, outputs: Sets, collected: Sets) -> None:
        """``mean``, ``var`` (M, N, D) and ``targets`` (N, D) of every set."""
        for name, (packed, targets) in collected.items():
            write_predictions(results_dir, name, packed, targets)

    def write_figures(
        self, results_dir: Path, collected: Sets, roles: dict[str, str], results: dict[str, Any], loggers: Any, step: int
    ) -> None:  # fmt: skip
        """Interval coverage and predictive bands (figures/regression.py)."""
        write_figures(results_dir, collected, roles, results, loggers, step)

    def summary(self, results: dict[str, Any], cost_line: str) -> str:
        """The sets' table, the variance-scaled sets' table, then the cost line."""
        table = format_table(results["sets"])
        if results.get("calibration") is not None:
            table += "\nafter variance scaling:\n" + format_table(results["sets_calibrated"], results["calibration"])
        return f"{table}\n{cost_line}"

    def predict_batch(self, module: L.LightningModule, batch: Any) -> Tensor:
        """The members' packed means and variances (M, B, 2·D) = [mean | var], in the targets' units."""
        return pack(self.task.predictive(module(batch[0])))

    def predicted_targets(self, targets: Tensor) -> Tensor:
        """Standardised targets (B, D) back in the targets' units."""
        return self.task.evaluation_targets(targets)

    def write_predicted(self, results_dir: Path, name: str, predicted: Tensor, targets: Tensor, method: str) -> str:
        """predictions/<name>.npz with ``mean``, ``var`` (M, N, D) and ``targets`` (N, D), as a test writes them."""
        path = write_predictions(results_dir, name, predicted, targets)
        m, n, d = predicted.shape[0], predicted.shape[1], predicted.shape[2] // 2
        return f"{method} (M={m}) member means and variances of {name} ({n} rows, {d} target{'s' * (d != 1)}, original units) -> {path}"
