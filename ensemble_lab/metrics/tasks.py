"""Task objects: what member outputs mean, how they are trained, stored, scored and calibrated.

Every method returns member outputs (M, B, K). A task reads them; the evaluation asks the task, never the
method. Both tasks have the same small interface:

- ``output_size(n)``: K for n classes (classification: n) or n targets (regression: 2·n).
- ``loss(outputs, targets)``: the training loss, a mean over members and rows.
- ``correct(outputs, targets)``: the training step's count of correct predictions, None for a task without an
  accuracy (``has_classes`` False: no train/acc).
- ``with_target_scaling(mean, std)``: the task told the training targets' scaling (regression; a classifier is
  unchanged).
- ``has_classes``: whether members output class logits, which an accuracy, distillation, repulsion and the
  connectivity barriers need.
- ``predictive(outputs)``: what the evaluation keeps per batch, a dict of (M, B, ·) tensors whose rows
  concatenate along dim 1 (the keys of ``--save_predictions``' npz files).
- ``evaluation_targets(targets)``: batch targets in the units the metrics use.
- ``metrics(stored, targets)``: a set's metrics as Python floats (and lists, for classification).
- ``ood_scores(stored)``: per-row uncertainty scores (N,), higher is more uncertain;
  ``ood_metrics(id_stored, ood_stored)`` scores an OOD set with them.
- ``calibrate(stored, targets)`` fits a calibration on the validation split; ``apply_calibration(stored,
  fitted)`` applies it to any stored set.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.metrics import regression as reg
from ensemble_lab.metrics.calibration import apply_temperature, fit_temperature, log_probs
from ensemble_lab.metrics.classification import predictive_metrics, uncertainty_scores
from ensemble_lab.metrics.ood import OOD_DETECTION, ood_detection, ood_metrics
from ensemble_lab.metrics.regression_losses import (
    MIN_VARIANCE,
    REGRESSION_LOSSES,
    VARIANCE_PARAMETERISATIONS,
    fit_variance_scale,
    member_losses,
    scale_variance,
    split_outputs,
)

Stored = dict[str, Tensor]
"""What ``predictive`` returns and the metrics read: named (M, N, ·) tensors."""


class Task(ABC):
    """The interface the evaluation and the training step use; see the module docstring."""

    #: "classification" or "regression"
    name: str
    #: the scores of ``ood_scores`` that measure disagreement between members (constant when M = 1)
    epistemic_scores: tuple[str, ...] = ()
    #: whether members output class logits: the task has an accuracy (``correct``) and class probabilities, which
    #: distillation and repulsion compare and whose cross-entropy and error barriers ``connectivity`` measures
    has_classes: bool = False

    @abstractmethod
    def output_size(self, size: int) -> int:
        """K, the member output width, for ``size`` classes or targets."""

    @abstractmethod
    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The training loss of member outputs (M, B, K): a scalar, the mean over members and rows."""

    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor | None:
        """How many of the rows member outputs (M, B, K) predict correctly, a scalar tensor on their device; None
        (the default) for a task without an accuracy. ``targets`` as ``loss`` takes them."""
        return None

    def with_target_scaling(self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor | None) -> "Task":
        """This task for training targets standardised with ``mean`` and ``std`` (per target); the default, for
        targets without units (class labels), is the task itself."""
        return self

    @abstractmethod
    def predictive(self, outputs: Tensor) -> Stored:
        """What to store of member outputs (M, B, K)."""

    def evaluation_targets(self, targets: Tensor) -> Tensor:
        """Batch targets in the units the metrics use (unchanged by default)."""
        return targets

    @abstractmethod
    def metrics(self, stored: Stored, targets: Tensor) -> dict[str, Any]:
        """A set's metrics from its stored predictions and targets."""

    @abstractmethod
    def ood_scores(self, stored: Stored) -> dict[str, Tensor]:
        """Per-row uncertainty scores (N,), higher meaning more uncertain."""

    def ood_metrics(self, id_stored: Stored, ood_stored: Stored) -> dict[str, float | None]:
        """``<auroc|aupr|fpr95|aupr_in|fpr95_in>_<score>`` for each of ``ood_scores``: OOD detection by that score.

        A score that is constant for a single model (epistemic ones: 0 on every row) is None for M = 1.
        """
        id_scores, ood_side = self.ood_scores(id_stored), self.ood_scores(ood_stored)
        single = next(iter(id_stored.values())).shape[0] == 1
        result: dict[str, float | None] = {}
        for score in id_scores:
            if single and score in self.epistemic_scores:
                result.update({f"{metric}_{score}": None for metric in OOD_DETECTION})
                continue
            result.update({f"{metric}_{score}": value for metric, value in ood_detection(id_scores[score], ood_side[score]).items()})
        return result

    @abstractmethod
    def calibrate(self, stored: Stored, targets: Tensor) -> Tensor:
        """Fit a calibration on the validation set's stored predictions and targets."""

    @abstractmethod
    def apply_calibration(self, stored: Stored, fitted: Tensor) -> Stored:
        """Stored predictions after the calibration ``fitted`` by :meth:`calibrate`."""


class ClassificationTask(Task):
    """Members output C logits; stored: ``member_probs`` (M, N, C); metrics: ``predictive_metrics``."""

    name = "classification"
    epistemic_scores = ("mi",)
    has_classes = True

    def __init__(self, per_member_temperature: bool = False) -> None:
        """
        Args:
            per_member_temperature: ``calibrate`` fits one temperature per member instead of one shared.
        """
        self.per_member_temperature = per_member_temperature

    def output_size(self, size: int) -> int:
        """C logits for ``size`` = C classes."""
        return size

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy averaged over members and rows; ``targets`` (B,) or (M, B) (member m's own rows)."""
        m, b, c = outputs.shape
        member_targets = targets.expand(m, -1) if targets.dim() == 1 else targets  # (M, B)
        return F.cross_entropy(outputs.reshape(m * b, c), member_targets.reshape(m * b))  # (M*B, C) vs (M*B,)

    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Labels (B,), every member's rows: the rows the ensemble (the mean of the members' probabilities) gets
        right. Labels (M, B), each member its own rows: the members' mean accuracy, summed over the B rows."""
        if targets.dim() == 1:
            return (outputs.softmax(-1).mean(0).argmax(-1) == targets).sum()  # (M, B, C) -> (B, C) -> (B,)
        return (outputs.argmax(-1) == targets).float().mean(0).sum()  # (M, B) -> (B,)

    def predictive(self, outputs: Tensor) -> Stored:
        """The members' softmax probabilities (M, B, C), computed in float32 (also under mixed precision)."""
        return {"member_probs": torch.softmax(outputs.float(), dim=-1)}

    def metrics(self, stored: Stored, targets: Tensor) -> dict[str, Any]:
        """``predictive_metrics`` of the members' probabilities: acc, nll, brier, ece, entropy, mi, ...."""
        return predictive_metrics(stored["member_probs"], targets)

    def ood_scores(self, stored: Stored) -> dict[str, Tensor]:
        """``uncertainty_scores``: msp, entropy and mi per row."""
        return uncertainty_scores(stored["member_probs"])

    def ood_metrics(self, id_stored: Stored, ood_stored: Stored) -> dict[str, float | None]:
        """The existing ``ood_metrics`` (the same keys as the generic version)."""
        return ood_metrics(id_stored["member_probs"], ood_stored["member_probs"])

    def calibrate(self, stored: Stored, targets: Tensor) -> Tensor:
        """Temperature scaling: T (shared, or (M,) per member) minimising the validation NLL of the ensemble."""
        return fit_temperature(log_probs(stored["member_probs"]), targets, per_member=self.per_member_temperature)

    def apply_calibration(self, stored: Stored, fitted: Tensor) -> Stored:
        """Member probabilities of logits divided by the temperature ``fitted``."""
        return {"member_probs": apply_temperature(log_probs(stored["member_probs"]), fitted)}


class RegressionTask(Task):
    """Members output a Gaussian per target, (M, B, 2·D); stored: ``mean`` and ``var`` (M, N, D) in original units.

    The network learns standardised targets; ``predictive`` and ``evaluation_targets`` undo the standardisation,
    so every metric is in the targets' own units.
    """

    name = "regression"
    epistemic_scores = ("epistemic",)

    def __init__(
        self,
        loss: str = "nll",
        beta: float = 0.5,
        variance: str = "softplus",
        min_variance: float = MIN_VARIANCE,
        target_mean: Sequence[float] | Tensor | None = None,
        target_std: Sequence[float] | Tensor | None = None,
    ) -> None:
        """
        Args:
            loss: "nll" (Gaussian NLL), "beta_nll" (β-NLL, Seitzer et al. 2022) or "mse" (MSE for the means, the
                variance head fitted to the squared residuals).
            beta: β of "beta_nll", in [0, 1].
            variance: how the variance parameter becomes a variance: "softplus" or "log" (a log-variance).
            min_variance: floor added to every variance, in standardised units.
            target_mean: the training targets' mean per target (D values); None: 0.
            target_std: the training targets' standard deviation per target (D values, > 0); None: 1.
        """
        if loss not in REGRESSION_LOSSES:
            raise ConfigError(f"unknown regression loss {loss!r}: use one of {', '.join(REGRESSION_LOSSES)}")
        if not 0.0 <= beta <= 1.0:
            raise ConfigError(f"beta must lie in [0, 1] (0 is the NLL, 1 gives the means the MSE's gradient), got {beta}")
        if variance not in VARIANCE_PARAMETERISATIONS:
            raise ConfigError(f"unknown variance parameterisation {variance!r}: use one of {', '.join(VARIANCE_PARAMETERISATIONS)}")
        if not min_variance > 0:
            raise ConfigError(f"min_variance must be > 0 (it keeps the NLL finite), got {min_variance}")
        self.loss_name, self.beta, self.variance, self.min_variance = loss, beta, variance, min_variance
        self.target_mean = None if target_mean is None else torch.as_tensor(target_mean, dtype=torch.float64)
        self.target_std = None if target_std is None else torch.as_tensor(target_std, dtype=torch.float64)
        if self.target_std is not None and not bool((self.target_std > 0).all()):
            raise ConfigError(f"target_std must be > 0 for every target, got {self.target_std.tolist()}")

    def output_size(self, size: int) -> int:
        """2·D outputs for ``size`` = D targets: D means, then D variance parameters."""
        return 2 * size

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The mean over members of ``member_losses``; targets (B, D) or (M, B, D), standardised."""
        mean, var = split_outputs(outputs, self.variance, self.min_variance)
        return member_losses(self.loss_name, mean, var, targets, self.beta).mean()

    def with_target_scaling(self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor | None) -> "RegressionTask":
        """The same loss and head for targets standardised with ``mean`` and ``std`` (D values each), so that
        predictions and metrics are in the targets' own units."""
        return RegressionTask(self.loss_name, self.beta, self.variance, self.min_variance, target_mean=mean, target_std=std)

    def _scaling(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """(target mean, target std) on the device and dtype of ``like``, defaulting to (0, 1)."""
        d = like.shape[-1]
        zero, one = torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
        mean = zero if self.target_mean is None else self.target_mean
        std = one if self.target_std is None else self.target_std
        return mean.to(like), std.to(like)

    def predictive(self, outputs: Tensor) -> Stored:
        """Member means and variances (M, B, D) in original units, float32 (also under mixed precision)."""
        mean, var = split_outputs(outputs.float(), self.variance, self.min_variance)
        mean, var = reg.to_original_units(mean, var, *self._scaling(mean))
        return {"mean": mean, "var": var}

    def evaluation_targets(self, targets: Tensor) -> Tensor:
        """Standardised targets (B, D) back in original units: y · std + mean."""
        shift, scale = self._scaling(targets.float())
        return targets.float() * scale + shift

    def metrics(self, stored: Stored, targets: Tensor) -> dict[str, Any]:
        """``regression_metrics``: rmse, mae, nll, crps, coverage/width at 50/90/95 %, qce, the decomposition, ...."""
        return reg.regression_metrics(stored["mean"], stored["var"], targets)

    def ood_scores(self, stored: Stored) -> dict[str, Tensor]:
        """Per row: ``variance`` (the mixture's total variance) and ``epistemic`` (the member means' variance)."""
        return reg.ood_scores(stored["mean"], stored["var"])

    def calibrate(self, stored: Stored, targets: Tensor) -> Tensor:
        """Variance scaling: the s > 0 multiplying every member's variance that minimises the validation NLL."""
        return fit_variance_scale(stored["mean"], stored["var"], targets)

    def apply_calibration(self, stored: Stored, fitted: Tensor) -> Stored:
        """Stored predictions with every variance multiplied by the scale ``fitted``."""
        return {"mean": stored["mean"], "var": scale_variance(stored["var"], fitted)}
