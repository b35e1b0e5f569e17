"""Selective prediction: risk–coverage curves of a confidence score and the numbers read from them.

A selective classifier answers only its k most confident samples and abstains on the rest. Sorting the N
samples by confidence, highest first, and letting E(k) be the number of errors (argmax p̄ ≠ y) among the
first k, the risk–coverage curve is risk(k) = E(k)/k at coverage k/N, for k = 1..N.

- ``aurc``: (1/N) Σ_k E(k)/k, the area under the risk–coverage curve (Geifman & El-Yaniv 2017, "Selective
  classification for deep neural networks"; Geifman et al. 2019, "Bias-reduced uncertainty estimation").
- ``augrc``: (1/N) Σ_k E(k)/N, the area under the generalized-risk–coverage curve, whose risk counts the
  errors among the accepted samples against all N (Traub et al. 2024, "Overcoming common flaws in the
  evaluation of selective classification systems"). It is the probability that a random sample is both
  accepted and wrong, averaged over thresholds.
- ``risk_at_80``: risk(k) at k = ⌈0.8 N⌉, the error rate among the 80 % most confident samples.
- ``coverage_at_5``: the largest coverage k/N whose risk(k) ≤ 0.05; 0 when no k has risk ≤ 5 %.

Confidence scores: the negated uncertainty scores of ``uncertainty_scores`` (msp: max_c p̄_c, i.e.
−(1 − max p̄); entropy: −H[p̄]; mi: −MI), so one ranking serves both tables. Ties: samples with equal
confidence have no order, so E(k) is its expected value when tied samples are taken in a uniformly random
order: inside a run of ties, the run's errors are spread evenly over its positions (a linear
interpolation of E between the run's ends). The result therefore does not depend on the order of the
samples, and a constant score gives the curve of a random order (risk(k) = the overall error rate).
"""

import math

import torch
from torch import Tensor

from ensemble_lab.metrics.classification import check_finite, member_mean, reduce_dtype, uncertainty_scores
from ensemble_lab.metrics.registry import SELECTIVE_FACTS, SELECTIVE_SCORES

#: the confidence scores whose curves are summarised (negated ``uncertainty_scores``), and the registry facts of
#: this module's metrics (their home is the registry: one row per score there)
FACTS = SELECTIVE_FACTS

#: coverage at which ``risk_at_80`` is read, and the risk bound of ``coverage_at_5``
RISK_COVERAGE = 0.8
RISK_BOUND = 0.05


def expected_errors(confidence: Tensor, errors: Tensor) -> Tensor:
    """E(k) for k = 1..N (N,): errors among the k most confident, expected over the order of tied samples.

    Args:
        confidence: per-sample confidence (N,), higher = more confident, finite.
        errors: per-sample 1.0 for a wrong prediction, 0.0 for a right one (N,).
    """
    if confidence.dim() != 1 or confidence.shape != errors.shape or confidence.numel() == 0:
        raise ValueError(
            f"confidence and errors must both have shape (N,) with N >= 1, got {tuple(confidence.shape)} and {tuple(errors.shape)}"
        )
    check_finite(confidence, "confidence scores")
    dtype = reduce_dtype(confidence)
    order = torch.sort(confidence, descending=True, stable=True).indices
    sorted_conf = confidence[order]  # (N,)
    cumulative = torch.cat([errors.new_zeros(1, dtype=dtype), errors[order].to(dtype).cumsum(0)])  # (N+1,): E before/after
    n = confidence.numel()
    # start / end (exclusive) of the tie run holding each sorted position
    new_run = torch.ones(n, dtype=torch.bool, device=confidence.device)
    new_run[1:] = sorted_conf[1:] != sorted_conf[:-1]
    run_id = new_run.cumsum(0) - 1  # (N,)
    starts = torch.nonzero(new_run).squeeze(1)  # (R,)
    ends = torch.cat([starts[1:], torch.tensor([n], device=confidence.device)])  # (R,)
    start, end = starts[run_id], ends[run_id]  # (N,)
    k = torch.arange(1, n + 1, device=confidence.device)  # (N,)
    # E(k) = E(start) + (k − start) · (errors in the run) / (run length)
    run_errors = cumulative[end] - cumulative[start]
    return cumulative[start] + (k - start).to(dtype) * run_errors / (end - start).to(dtype)


def risk_coverage_curve(confidence: Tensor, errors: Tensor) -> tuple[Tensor, Tensor]:
    """The risk–coverage curve: coverage k/N and risk E(k)/k for k = 1..N, each (N,).

    Args:
        confidence: per-sample confidence (N,), higher = more confident.
        errors: per-sample 1.0 for a wrong prediction, 0.0 for a right one (N,).
    """
    expected = expected_errors(confidence, errors)
    k = torch.arange(1, expected.numel() + 1, dtype=expected.dtype, device=expected.device)
    return k / expected.numel(), expected / k


def selective_summary(confidence: Tensor, errors: Tensor) -> dict[str, float]:
    """AURC, AUGRC, risk at 80 % coverage and coverage at 5 % risk of one confidence score (module docstring).

    Args:
        confidence: per-sample confidence (N,), higher = more confident.
        errors: per-sample 1.0 for a wrong prediction, 0.0 for a right one (N,).

    Returns:
        ``{"aurc", "augrc", "risk_at_80", "coverage_at_5"}`` as floats.
    """
    expected = expected_errors(confidence, errors)
    n = expected.numel()
    k = torch.arange(1, n + 1, dtype=expected.dtype, device=expected.device)
    risk = expected / k  # (N,)
    # risk(k) <= 5 %, with a tolerance of round-off in the interpolated E(k) (an exact 5 % must count)
    within = risk <= RISK_BOUND + 1e-12
    largest = int(torch.nonzero(within).max()) + 1 if bool(within.any()) else 0
    return {
        "aurc": float(risk.mean()),
        "augrc": float((expected / n).mean()),
        "risk_at_80": float(risk[math.ceil(RISK_COVERAGE * n - 1e-9) - 1]),
        "coverage_at_5": largest / n,
    }


def risk_coverage_curves(member_probs: Tensor, targets: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """The risk–coverage curve (coverage, risk), each (N,), of each confidence score, for a figure.

    Args:
        member_probs: per-member probabilities (M, N, C).
        targets: true classes (N,), int64.

    Returns:
        ``{"msp": (coverage, risk), "entropy": ..., "mi": ...}`` (``mi`` left out when M = 1).
    """
    scores, errors = _scores_and_errors(member_probs, targets)
    names = [name for name in SELECTIVE_SCORES if not (name == "mi" and member_probs.shape[0] == 1)]
    return {name: risk_coverage_curve(-scores[name], errors) for name in names}


def _scores_and_errors(member_probs: Tensor, targets: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """The uncertainty scores of the ensemble and its per-sample errors 1[argmax p̄ ≠ y] (N,)."""
    if member_probs.dim() != 3:
        raise ValueError(f"member_probs must have shape (M, N, C), got {tuple(member_probs.shape)}")
    if targets.dim() != 1 or targets.shape[0] != member_probs.shape[1]:
        raise ValueError(f"targets must have shape ({member_probs.shape[1]},), got {tuple(targets.shape)}")
    scores = uncertainty_scores(member_probs)
    errors = (member_mean(member_probs.to(reduce_dtype(member_probs))).argmax(-1) != targets).to(scores["msp"].dtype)
    return scores, errors


def selective_metrics(member_probs: Tensor, targets: Tensor) -> dict[str, float | None]:
    """Selective-prediction metrics of an ensemble for each confidence score (msp, −entropy, −mi).

    Args:
        member_probs: per-member probabilities (M, N, C).
        targets: true classes (N,), int64.

    Returns:
        ``{"aurc_msp", "augrc_msp", "risk_at_80_msp", "coverage_at_5_msp", ..., "coverage_at_5_mi"}``. For a
        single model (M = 1) the ``*_mi`` values are None, as in ``ood_metrics``: its mi is 0 on every sample,
        and the random-order numbers of a constant score are not a result of the method.
    """
    scores, errors = _scores_and_errors(member_probs, targets)
    result: dict[str, float | None] = {}
    for name in SELECTIVE_SCORES:
        if name == "mi" and member_probs.shape[0] == 1:
            result.update({f"{metric}_mi": None for metric in ("aurc", "augrc", "risk_at_80", "coverage_at_5")})
            continue
        for metric, value in selective_summary(-scores[name], errors).items():
            result[f"{metric}_{name}"] = value
    return result

