"""The metrics of a test set beyond the predictive ones: calibration errors, selective prediction, the logit OOD
scores, joint NLL and conformal sets (metrics/calibration_errors.py, selective.py, ood_scores.py, joint_nll.py,
conformal.py; their keys are rows of the metric registry).

A test computes them for every set (``test/<set>/<metric>``, results.json); ``ensemble-lab report`` computes them
with the same function from a run's saved predictions, where its results.json lacks them (runs tested before they
existed), so the two give the same numbers. The validation curves and ``--eval_sets_every`` leave them out.

- id and shift sets: ``mce``, ``ece_adaptive``, ``ece_classwise``, ``brier_*``; ``aurc_<score>``, ``augrc_<score>``,
  ``risk_at_80_<score>``, ``coverage_at_5_<score>``; ``joint_nll_2`` / ``joint_nll_10``; with the validation split's
  predictions, ``conformal_coverage_<thr|aps|raps>`` and ``conformal_set_size_<...>`` at the chosen α.
- ood sets, against the first id set: AUROC / AUPR / FPR95 (both positives) of ``variation_ratio`` and
  ``expected_entropy`` (from the member probabilities) and, with the member logits, of ``maxlogit`` and ``energy``
  (of the members' mean logits). Label-based metrics mean nothing on an OOD set and are not computed there.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from ensemble_lab.metrics.calibration_errors import calibration_error_metrics
from ensemble_lab.metrics.conformal import conformal_metrics
from ensemble_lab.metrics.joint_nll import joint_nll_metrics
from ensemble_lab.metrics.ood_scores import logit_ood_metrics
from ensemble_lab.metrics.registry import LOGIT_SCORES, lookup
from ensemble_lab.metrics.selective import selective_metrics

#: the OOD scores that need the members' logits (not recomputable from probabilities, where a constant per
#: sample and member is lost); variation_ratio and expected_entropy are computed from the probabilities
LOGIT_ONLY = ("maxlogit", "energy")
#: joint NLL's dyadic batches per τ: same anchors for every method of a seed (differences between methods are paired);
#: a standard error of about 0.01 to 0.03 nats at a small part of a test's time (DEFAULT_BATCHES costs 5 times more)
JOINT_BATCHES = 2_000
#: the seed of joint NLL's batch sampler and of APS / RAPS's randomisation: fixed, so a test's numbers depend on
#: the weights and the data only (a test of a checkpoint under another --seed_everything gives the same results)
#: and every run of a study is scored on the same dyadic batches
EVALUATION_SEED = 0


@dataclass(frozen=True)
class ExtendedInputs:
    """What the extended metrics need besides each set's member probabilities and targets.

    Attributes:
        logits: member logits (M, N, C) per set name (for maxlogit and energy); None: those are left out.
        calibration_split: the validation split's member probabilities (M, n, C) and targets (n,), on which the
            conformal sets are fitted; None: no conformal metrics.
        alpha: the conformal miscoverage level (sets hold the true class with probability >= 1 − α).
        seed: the seed of joint NLL's batch sampler and of APS / RAPS's randomisation (EVALUATION_SEED).
    """

    logits: dict[str, Tensor] | None = None
    calibration_split: tuple[Tensor, Tensor] | None = None
    alpha: float = 0.1
    seed: int = EVALUATION_SEED


def is_extended(key: str) -> bool:
    """Whether a set's results.json key is one of this module's metrics (a test writes it; the validation curves and
    ``--eval_sets_every`` do not, and results.json files of earlier versions lack it)."""
    row = lookup(key)
    return (
        (row.group == "calibration" and key != "ece") or row.group in ("selective", "conformal") or key.startswith("joint_nll")
        or row.score in LOGIT_SCORES
    )  # fmt: skip


def probability_logits(member_probs: Tensor) -> Tensor:
    """Log-probabilities (M, N, C) as logits: their softmax, argmax and entropies are the probabilities' own
    (a zero probability is floored at the smallest normal float so the log stays finite)."""
    return member_probs.clamp_min(torch.finfo(member_probs.dtype).tiny).log()


def label_metrics(member_probs: Tensor, targets: Tensor, inputs: ExtendedInputs) -> dict[str, float | None]:
    """The extended metrics of an id or shift set (module docstring)."""
    result: dict[str, float | None] = {**calibration_error_metrics(member_probs, targets), **selective_metrics(member_probs, targets)}
    if member_probs.shape[1] >= 2:  # dyadic batches need two distinct inputs
        result.update(joint_nll_metrics(member_probs, targets, JOINT_BATCHES, seed=inputs.seed))
    if inputs.calibration_split is not None:
        cal_probs, cal_targets = inputs.calibration_split
        cal_probs, cal_targets = cal_probs.to(member_probs.device), cal_targets.to(member_probs.device)
        result.update(conformal_metrics(cal_probs, cal_targets, member_probs, targets, inputs.alpha, seed=inputs.seed))
    return result


def ood_score_metrics(
    id_probs: Tensor, ood_probs: Tensor, id_logits: Tensor | None = None, ood_logits: Tensor | None = None
) -> dict[str, float | None]:
    """AUROC / AUPR / FPR95 of the logit OOD scores of an ood set against an id set (module docstring).

    Args:
        id_probs: member probabilities of the id set (M, N_id, C).
        ood_probs: member probabilities of the ood set (M, N_ood, C).
        id_logits: member logits of the id set (M, N_id, C), or None.
        ood_logits: member logits of the ood set (M, N_ood, C), or None.
    """
    from_probs = logit_ood_metrics(probability_logits(id_probs), probability_logits(ood_probs))
    result = {k: v for k, v in from_probs.items() if not k.endswith(LOGIT_ONLY)}
    if id_logits is not None and ood_logits is not None:
        from_logits = logit_ood_metrics(id_logits, ood_logits)
        result.update({k: v for k, v in from_logits.items() if k.endswith(LOGIT_ONLY)})
    return result
