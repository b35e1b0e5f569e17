"""Split conformal prediction: prediction sets (classification) and intervals (regression) with coverage 1 − α.

A conformity score s(x, y) (higher = the label fits worse) is computed on a calibration set of n labelled
samples (the validation split); its threshold q̂ is the ⌈(n+1)(1−α)⌉-th smallest calibration score
(the empirical quantile at level ⌈(n+1)(1−α)⌉/n, the finite-sample correction; +∞ when ⌈(n+1)(1−α)⌉ > n,
so that the set is every class). On a test sample the set is {c : s(x, c) ≤ q̂}. When calibration and test
samples are exchangeable, P(y ∈ set) ≥ 1 − α, and ≤ 1 − α + 1/(n+1) when the scores have no ties (Vovk
et al. 2005; Angelopoulos & Bates 2021, "A gentle introduction to conformal prediction").

Scores of a class c with probability π_c (of the ensemble's p̄) at rank o(c) (1 = most probable):

- ``thr``: 1 − π_c (Sadinle et al. 2019, "Least ambiguous set-valued classifiers").
- ``aps``: Σ_{j ≤ o(c)} π_(j), the mass of the classes ranked up to c (Romano et al. 2020, "Classification
  with valid and adaptive coverage"); randomised: minus U·π_c with U ~ Uniform(0, 1) drawn per sample.
- ``raps``: the APS score + λ·max(0, o(c) − k_reg), a penalty on classes ranked beyond k_reg (Angelopoulos
  et al. 2021, "Uncertainty sets for image classifiers using conformal prediction"); randomised: minus
  U·(π_c + λ·1[o(c) > k_reg]), U times the score's last step.

Randomisation (the default for APS and RAPS, as in both papers) makes the scores continuous so coverage is
close to 1 − α rather than above it; it draws from a seeded generator, so a result is reproducible, and a
set can then be empty. The set of a test sample is every class whose score, with that sample's one U, is
within q̂ (so y is in the set exactly when its score is, which is what the guarantee covers).

Regression: the score |y − μ|/σ of the predictive mean μ and standard deviation σ, per output dimension,
gives the interval μ ± q̂_d σ (Papadopoulos et al. 2008, normalised nonconformity; Lei et al. 2018).
"""

import math

import torch
from torch import Tensor

from ensemble_lab.errors import ConfigError
from ensemble_lab.metrics.classification import check_finite, member_mean, reduce_dtype
from ensemble_lab.metrics.registry import CONFORMAL_FACTS, CONFORMAL_SCORES

#: RAPS defaults: λ = 0.01 and k_reg = 5 are the values of Angelopoulos et al.'s ImageNet examples; with
#: few classes (10) a smaller k_reg (1 or 2) makes the penalty act
RAPS_LAMBDA, RAPS_K_REG = 0.01, 5

#: registry facts (their home is the registry: one row per score there); ``<score>`` is each of CONFORMAL_SCORES
FACTS = CONFORMAL_FACTS


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha < 1.0:
        raise ConfigError(f"alpha (the miscoverage level) must be in [0, 1), e.g. 0.1 for 90% coverage; got {alpha}")


def conformal_quantile(scores: Tensor, alpha: float) -> Tensor:
    """The ⌈(n+1)(1−α)⌉-th smallest of the n calibration scores (a 0-d tensor); +∞ when that exceeds n.

    Args:
        scores: calibration scores (n,), n >= 1, finite.
        alpha: the miscoverage level in [0, 1).
    """
    _check_alpha(alpha)
    if scores.dim() != 1 or scores.numel() == 0:
        raise ValueError(f"calibration scores must have shape (n,) with n >= 1, got {tuple(scores.shape)}")
    n = scores.numel()
    # the tolerance keeps an exact integer such as 100 · 0.9 from rounding up to the next rank
    rank = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)
    if rank > n:
        return torch.tensor(math.inf, dtype=scores.dtype, device=scores.device)
    return torch.sort(scores).values[max(rank, 1) - 1]


def class_scores(
    probs: Tensor,
    method: str,
    uniform: Tensor | None = None,
    lam: float = RAPS_LAMBDA,
    k_reg: int = RAPS_K_REG,
) -> Tensor:
    """The conformity score of every class (N, C) for probabilities (N, C) (module docstring).

    Args:
        probs: the ensemble's probabilities p̄ (N, C).
        method: "thr", "aps" or "raps".
        uniform: one U ~ Uniform(0, 1) per sample (N,) to randomise APS / RAPS; None: not randomised.
        lam: RAPS's penalty λ per rank beyond ``k_reg``.
        k_reg: RAPS's number of classes ranked first that carry no penalty.
    """
    if method not in CONFORMAL_SCORES:
        raise ConfigError(f"unknown conformal score {method!r}; choose one of {', '.join(CONFORMAL_SCORES)}")
    if method == "thr":
        return 1.0 - probs
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)  # (N, C)
    rank = torch.arange(1, probs.shape[-1] + 1, device=probs.device, dtype=probs.dtype)  # (C,) 1 = most probable
    step = sorted_probs  # (N, C): how much each rank adds to the score
    if method == "raps":
        step = step + lam * (rank > k_reg).to(probs.dtype)  # Σ_{j <= o} λ·1[j > k_reg] = λ·max(0, o − k_reg)
    sorted_scores = step.cumsum(-1)  # (N, C)
    if uniform is not None:
        sorted_scores = sorted_scores - uniform.unsqueeze(-1) * step
    return torch.empty_like(sorted_scores).scatter_(-1, order, sorted_scores)  # back to class order


def prediction_sets(
    cal_probs: Tensor,
    cal_targets: Tensor,
    test_probs: Tensor,
    alpha: float = 0.1,
    method: str = "aps",
    randomized: bool = True,
    generator: torch.Generator | None = None,
    lam: float = RAPS_LAMBDA,
    k_reg: int = RAPS_K_REG,
) -> Tensor:
    """Split conformal prediction sets (N_test, C) bool, calibrated on (cal_probs, cal_targets).

    Args:
        cal_probs: calibration probabilities (n, C) (the validation split's p̄).
        cal_targets: calibration classes (n,), int64.
        test_probs: test probabilities (N_test, C).
        alpha: the miscoverage level in [0, 1): the sets hold the true class with probability >= 1 − α.
        method: the score, "thr", "aps" or "raps".
        randomized: randomise APS / RAPS (ignored for THR, whose scores are continuous already).
        generator: the seeded CPU generator of the randomisation; None uses one seeded with 0.
        lam: RAPS's λ.
        k_reg: RAPS's k_reg.
    """
    for name, probs in (("cal_probs", cal_probs), ("test_probs", test_probs)):
        if probs.dim() != 2 or probs.shape[0] == 0 or probs.shape[1] != cal_probs.shape[1]:
            raise ValueError(f"{name} must have shape (N, C) with N >= 1 and the same C, got {tuple(probs.shape)}")
        check_finite(probs, name)
    if cal_targets.shape != cal_probs.shape[:1]:
        raise ValueError(f"cal_targets must have shape ({cal_probs.shape[0]},), got {tuple(cal_targets.shape)}")
    dtype = reduce_dtype(cal_probs)
    cal, test = cal_probs.to(dtype), test_probs.to(dtype)
    draw = method != "thr" and randomized
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    u_cal = torch.rand(cal.shape[0], generator=generator, dtype=dtype).to(cal.device) if draw else None
    u_test = torch.rand(test.shape[0], generator=generator, dtype=dtype).to(test.device) if draw else None
    cal_scores = class_scores(cal, method, u_cal, lam, k_reg).gather(-1, cal_targets.view(-1, 1)).squeeze(-1)  # (n,)
    threshold = conformal_quantile(cal_scores, alpha)
    return class_scores(test, method, u_test, lam, k_reg) <= threshold  # (N_test, C)


def conformal_metrics(
    cal_member_probs: Tensor,
    cal_targets: Tensor,
    test_member_probs: Tensor,
    test_targets: Tensor,
    alpha: float = 0.1,
    randomized: bool = True,
    seed: int = 0,
    lam: float = RAPS_LAMBDA,
    k_reg: int = RAPS_K_REG,
) -> dict[str, float]:
    """Empirical coverage and mean set size of THR, APS and RAPS sets on a test set, calibrated on another.

    Args:
        cal_member_probs: per-member probabilities on the calibration (validation) split (M, n, C).
        cal_targets: its classes (n,), int64.
        test_member_probs: per-member probabilities on the test set (M, N, C).
        test_targets: its classes (N,), int64.
        alpha: the miscoverage level in [0, 1).
        randomized: randomise APS and RAPS (the default).
        seed: the seed of each score's randomisation generator.
        lam: RAPS's λ.
        k_reg: RAPS's k_reg.

    Returns:
        ``{"conformal_coverage_thr", "conformal_set_size_thr", ..., "conformal_set_size_raps"}``: the fraction of
        test samples whose set holds the true class, and the mean number of classes per set.
    """
    if test_targets.shape != test_member_probs.shape[1:2]:
        raise ValueError(f"test_targets must have shape ({test_member_probs.shape[1]},), got {tuple(test_targets.shape)}")
    cal = member_mean(cal_member_probs.to(reduce_dtype(cal_member_probs)))  # (n, C)
    test = member_mean(test_member_probs.to(reduce_dtype(test_member_probs)))  # (N, C)
    result = {}
    for method in CONFORMAL_SCORES:
        sets = prediction_sets(cal, cal_targets, test, alpha, method, randomized, torch.Generator().manual_seed(seed), lam, k_reg)
        covered = sets.gather(-1, test_targets.view(-1, 1)).squeeze(-1)  # (N,)
        result[f"conformal_coverage_{method}"] = float(covered.double().mean())
        result[f"conformal_set_size_{method}"] = float(sets.double().sum(-1).mean())
    return result


def conformal_interval_metrics(
    cal_mean: Tensor,
    cal_std: Tensor,
    cal_targets: Tensor,
    test_mean: Tensor,
    test_std: Tensor,
    test_targets: Tensor,
    alpha: float = 0.1,
) -> dict[str, float]:
    """Coverage and mean width of normalised-residual conformal intervals μ ± q̂_d σ (regression).

    q̂_d is the conformal quantile of the calibration scores |y − μ|/σ of output dimension d.

    Args:
        cal_mean: predictive means on the calibration (validation) split (n, D) or (n,).
        cal_std: predictive standard deviations there, same shape, > 0.
        cal_targets: targets there, same shape.
        test_mean: predictive means on the test set (N, D) or (N,).
        test_std: predictive standard deviations there, > 0.
        test_targets: targets there.
        alpha: the miscoverage level in [0, 1).

    Returns:
        ``{"conformal_interval_coverage", "conformal_interval_width"}``: the fraction of (sample, dimension)
        targets inside their interval, and the mean interval width 2 q̂_d σ (in the targets' units; +∞ when
        the calibration split is too small for α).
    """
    tensors = {"cal_mean": cal_mean, "cal_std": cal_std, "cal_targets": cal_targets}
    tensors |= {"test_mean": test_mean, "test_std": test_std, "test_targets": test_targets}
    for name, value in tensors.items():
        check_finite(value, name)
    if not (cal_mean.shape == cal_std.shape == cal_targets.shape and test_mean.shape == test_std.shape == test_targets.shape):
        raise ValueError("mean, std and targets must have the same shape (N, D) on each split")
    if cal_mean.shape[1:] != test_mean.shape[1:] or cal_mean.dim() not in (1, 2):
        raise ValueError(f"the splits need the same output dimensions, got {tuple(cal_mean.shape)} and {tuple(test_mean.shape)}")
    if bool((cal_std <= 0).any()) or bool((test_std <= 0).any()):
        raise ValueError("std must be positive everywhere: a zero predicted std gives no normalised residual")
    dtype = reduce_dtype(cal_mean)
    cal_scores = ((cal_targets.to(dtype) - cal_mean.to(dtype)).abs() / cal_std.to(dtype)).reshape(cal_mean.shape[0], -1)  # (n, D)
    q = torch.stack([conformal_quantile(cal_scores[:, d], alpha) for d in range(cal_scores.shape[1])])  # (D,)
    test_scores = ((test_targets.to(dtype) - test_mean.to(dtype)).abs() / test_std.to(dtype)).reshape(test_mean.shape[0], -1)
    width = 2 * q * test_std.to(dtype).reshape(test_mean.shape[0], -1)  # (N, D)
    return {
        "conformal_interval_coverage": float((test_scores <= q).double().mean()),
        "conformal_interval_width": float(width.mean()),
    }
