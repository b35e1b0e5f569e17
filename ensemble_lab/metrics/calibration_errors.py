"""Calibration beyond one ECE: MCE, adaptive (equal-mass) ECE, classwise ECE and the Brier score's decomposition.

Every function takes the ensemble's probabilities p̄ (N, C) (``member_mean`` of the members' probabilities)
and the true classes (N,), except :func:`calibration_error_metrics`, which takes the members' probabilities
(M, N, C) like ``predictive_metrics``. Conventions as in ``classification``: float64 reductions (float32 on
MPS), NaN / inf probabilities raise NonFiniteOutputError.

- ``mce``: the largest |acc(B) − conf(B)| over the non-empty equal-width bins of our ``ece`` (top-1
  confidence, 15 bins, upper edge inclusive; Naeini et al. 2015, "Obtaining well calibrated probabilities
  using Bayesian binning").
- ``ece_adaptive``: the ECE formula on equal-mass bins of the top-1 confidence (Nixon et al. 2019,
  "Measuring calibration in deep learning"); bin sizes as ``numpy.array_split`` of the sorted samples, and
  a run of tied confidences goes whole to the bin of its first sample (see :func:`equal_mass_bins`).
- ``ece_classwise``: for each class c, the ECE of the forecast p̄_c for the event y = c on equal-width bins
  of p̄_c; the mean over the C classes (Kull et al. 2019, "Beyond temperature scaling", classwise-ECE).
- ``brier_reliability``, ``brier_resolution``, ``brier_uncertainty``: Murphy's (1973) decomposition of our
  ``brier`` (Σ_c (p̄_c − 1[y = c])², summed over classes, mean over samples), done one class at a time on
  equal-width bins of p̄_c and summed over classes (see :func:`brier_decomposition`).
"""

import torch
from torch import Tensor

from ensemble_lab.errors import ConfigError
from ensemble_lab.metrics.classification import check_finite, member_mean, reduce_dtype, reliability_bins
from ensemble_lab.metrics.registry import CALIBRATION_FACTS

#: registry facts of this module's metrics (their home is the registry: one row each there)
FACTS = CALIBRATION_FACTS


def _check(probs: Tensor, targets: Tensor, num_bins: int) -> None:
    """Raise a one-line error unless probs is (N, C) with N >= 1, finite, targets (N,) and num_bins >= 1."""
    if probs.dim() != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must have shape (N, C) with N >= 1, got {tuple(probs.shape)}")
    if targets.dim() != 1 or targets.shape[0] != probs.shape[0]:
        raise ValueError(f"targets must have shape ({probs.shape[0]},) to match probs, got {tuple(targets.shape)}")
    if num_bins < 1:
        raise ConfigError(f"num_bins must be >= 1, got {num_bins}")
    check_finite(probs, "probabilities")


def equal_width_bin_index(values: Tensor, num_bins: int) -> Tensor:
    """Bin of each value in [0, 1] among ``num_bins`` equal-width bins, as our ``ece``: (k/B, (k+1)/B], 0 in bin 0."""
    edges = torch.arange(1, num_bins, dtype=values.dtype, device=values.device) / num_bins  # (B-1,)
    return torch.bucketize(values, edges, right=False)


def equal_mass_bins(confidence: Tensor, num_bins: int) -> Tensor:
    """Equal-mass bin index (N,) of each confidence: bins hold consecutive runs of the sorted confidences.

    With N = q·B + r, the first r bins (lowest confidences) take q + 1 samples and the others q, as
    ``numpy.array_split`` splits the ascending order; with N < B every sample has a bin of its own. Ties:
    all samples with one confidence value go to the bin of the first of them in the sorted order, so the
    result does not depend on the order of the samples (a bin may then hold more or fewer samples than
    its share, and a later one may be empty: an empty bin adds nothing to the ECE).
    """
    n = confidence.shape[0]
    sorted_conf = torch.sort(confidence).values  # (N,) ascending
    # the sorted position of the first sample equal to each confidence (the start of its tie run)
    position = torch.searchsorted(sorted_conf, confidence, right=False)  # (N,)
    size, extra = divmod(n, num_bins)
    big = extra * (size + 1)  # samples in the first `extra` bins, which have size + 1 each
    small_index = extra + (position - big) // max(size, 1)  # only used where size >= 1
    return torch.where(position < big, position // (size + 1), small_index)


def _top1(probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Top-1 confidence and correctness (N,), in the reduction dtype."""
    dtype = reduce_dtype(probs)
    confidence, prediction = probs.to(dtype).max(dim=-1)  # (N,), (N,)
    return confidence, (prediction == targets).to(dtype)


def _bin_stats(bin_index: Tensor, confidence: Tensor, outcome: Tensor, num_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin mean confidence, mean outcome and count, each (B,); an empty bin has 0, 0, 0."""
    member = (bin_index.unsqueeze(1) == torch.arange(num_bins, device=bin_index.device)).to(confidence.dtype)  # (N, B)
    count = member.sum(0)  # (B,)
    denom = count.clamp_min(1)
    return (member * confidence.unsqueeze(1)).sum(0) / denom, (member * outcome.unsqueeze(1)).sum(0) / denom, count


def reliability_data(probs: Tensor, targets: Tensor, num_bins: int = 15) -> dict[str, dict[str, list[float]]]:
    """Reliability-diagram data in both binnings of the top-1 confidence, for a figure.

    Args:
        probs: the ensemble's probabilities p̄ (N, C).
        targets: true classes (N,), int64.
        num_bins: number of bins of each binning.

    Returns:
        ``{"equal_width": {...}, "equal_mass": {...}}``, each ``{"confidence", "accuracy", "count"}``: lists of
        ``num_bins`` floats, the mean confidence, the accuracy and the number of samples of each bin
        (0, 0, 0 for an empty bin). Equal width as our ``ece``; equal mass as :func:`equal_mass_bins`.
    """
    _check(probs, targets, num_bins)
    accuracy, confidence_w, count_w = reliability_bins(probs, targets, num_bins)
    confidence, correct = _top1(probs, targets)
    conf_m, acc_m, count_m = _bin_stats(equal_mass_bins(confidence, num_bins), confidence, correct, num_bins)
    return {
        "equal_width": {"confidence": confidence_w.tolist(), "accuracy": accuracy.tolist(), "count": count_w.double().tolist()},
        "equal_mass": {"confidence": conf_m.tolist(), "accuracy": acc_m.tolist(), "count": count_m.tolist()},
    }


def mce(probs: Tensor, targets: Tensor, num_bins: int = 15) -> float:
    """Maximum calibration error: max over non-empty equal-width bins B of |acc(B) − conf(B)|.

    Bins as our ``ece`` (top-1 confidence, equal width, upper edge inclusive); Naeini et al. (2015).

    Args:
        probs: the ensemble's probabilities p̄ (N, C).
        targets: true classes (N,), int64.
        num_bins: number of equal-width bins on [0, 1].
    """
    _check(probs, targets, num_bins)
    accuracy, confidence, count = reliability_bins(probs, targets, num_bins)
    gap = (accuracy - confidence).abs()  # (B,): 0 for empty bins, which therefore never win
    return float(torch.where(count > 0, gap, torch.zeros_like(gap)).max())


def ece_adaptive(probs: Tensor, targets: Tensor, num_bins: int = 15) -> float:
    """Adaptive ECE: Σ_b |B_b|/N · |acc(B_b) − conf(B_b)| over equal-mass bins of the top-1 confidence.

    Bins as :func:`equal_mass_bins` (``numpy.array_split`` sizes; a tie run stays in one bin); Nixon et al.
    (2019).

    Args:
        probs: the ensemble's probabilities p̄ (N, C).
        targets: true classes (N,), int64.
        num_bins: number of equal-mass bins.
    """
    _check(probs, targets, num_bins)
    confidence, correct = _top1(probs, targets)
    conf, acc, count = _bin_stats(equal_mass_bins(confidence, num_bins), confidence, correct, num_bins)
    return float((count / confidence.shape[0] * (acc - conf).abs()).sum())


def _classwise_bins(probs: Tensor, targets: Tensor, num_bins: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per class and bin of p̄_c (C, B): mean forecast, event frequency, count; and the class frequencies (C,)."""
    dtype = reduce_dtype(probs)
    forecast = probs.to(dtype)  # (N, C)
    event = torch.nn.functional.one_hot(targets, probs.shape[1]).to(dtype)  # (N, C)
    bin_index = equal_width_bin_index(forecast, num_bins)  # (N, C)
    # a loop over the bins (a handful) keeps memory at N·C instead of N·C·B
    sums_f, sums_o, counts = [], [], []
    for b in range(num_bins):
        inside = (bin_index == b).to(dtype)  # (N, C)
        counts.append(inside.sum(0))
        sums_f.append((inside * forecast).sum(0))
        sums_o.append((inside * event).sum(0))
    count = torch.stack(counts, 1)  # (C, B)
    denom = count.clamp_min(1)
    return torch.stack(sums_f, 1) / denom, torch.stack(sums_o, 1) / denom, count, event.mean(0)


def ece_classwise(probs: Tensor, targets: Tensor, num_bins: int = 15) -> float:
    """Classwise ECE: mean over classes c of Σ_b |B_cb|/N · |freq(y = c | B_cb) − mean p̄_c over B_cb|.

    B_cb are the equal-width bins (as our ``ece``) of class c's own probability p̄_c, over all N samples;
    Kull et al. (2019).

    Args:
        probs: the ensemble's probabilities p̄ (N, C).
        targets: true classes (N,), int64.
        num_bins: number of equal-width bins on [0, 1].
    """
    _check(probs, targets, num_bins)
    return _classwise_ece(_classwise_bins(probs, targets, num_bins))


def _classwise_ece(bins: tuple[Tensor, Tensor, Tensor, Tensor]) -> float:
    """Classwise ECE from the per-class bins of :func:`_classwise_bins`."""
    forecast, frequency, count, _ = bins
    per_class = (count / count[0].sum() * (frequency - forecast).abs()).sum(1)  # (C,); each class's bins hold all N
    return float(per_class.mean())


def brier_decomposition(probs: Tensor, targets: Tensor, num_bins: int = 15) -> dict[str, float]:
    """Murphy's (1973) decomposition of our multiclass Brier score, binned per class.

    The Brier score Σ_c (p̄_c − 1[y = c])² (mean over samples) is a sum of C binary Brier scores, one per
    class. Each is decomposed on the equal-width bins B_cb of p̄_c (as our ``ece``), with f̄_cb the mean
    forecast, ō_cb the frequency of y = c in the bin and ō_c the overall frequency of class c:

    - reliability = Σ_c Σ_b |B_cb|/N · (f̄_cb − ō_cb)² (lower is better),
    - resolution = Σ_c Σ_b |B_cb|/N · (ō_cb − ō_c)² (higher is better),
    - uncertainty = Σ_c ō_c (1 − ō_c) (the Brier score of always forecasting the class frequencies),
    - within_bin = brier − (reliability − resolution + uncertainty): the within-bin variance of the forecasts
      minus twice their within-bin covariance with the outcomes (Stephenson et al. 2008).

    brier = reliability − resolution + uncertainty + within_bin holds exactly; ``within_bin`` is 0 (the
    classical identity is exact) when all forecasts p̄_c in a bin are equal, and small otherwise (the
    forecasts in a bin differ by at most 1/num_bins). The exact decomposition over
    distinct forecast vectors is not used: network outputs are all distinct, so each group would hold one
    sample and reliability would equal the Brier score itself.

    Args:
        probs: the ensemble's probabilities p̄ (N, C).
        targets: true classes (N,), int64.
        num_bins: number of equal-width bins of each class's probability.

    Returns:
        ``{"brier_reliability", "brier_resolution", "brier_uncertainty", "brier_within_bin"}`` as floats.
    """
    _check(probs, targets, num_bins)
    return _brier_parts(probs, targets, _classwise_bins(probs, targets, num_bins))


def _brier_parts(probs: Tensor, targets: Tensor, bins: tuple[Tensor, Tensor, Tensor, Tensor]) -> dict[str, float]:
    """The decomposition of :func:`brier_decomposition` from the per-class bins of :func:`_classwise_bins`."""
    forecast, frequency, count, climate = bins  # (C, B) x3, (C,)
    weight = count / probs.shape[0]  # (C, B)
    reliability = float((weight * (forecast - frequency) ** 2).sum())
    resolution = float((weight * (frequency - climate.unsqueeze(1)) ** 2).sum())
    uncertainty = float((climate * (1 - climate)).sum())
    dtype = reduce_dtype(probs)
    one_hot = torch.nn.functional.one_hot(targets, probs.shape[1]).to(dtype)  # (N, C)
    brier = float(((probs.to(dtype) - one_hot) ** 2).sum(-1).mean())
    return {
        "brier_reliability": reliability,
        "brier_resolution": resolution,
        "brier_uncertainty": uncertainty,
        "brier_within_bin": brier - (reliability - resolution + uncertainty),
    }


def calibration_error_metrics(member_probs: Tensor, targets: Tensor, num_bins: int = 15) -> dict[str, float]:
    """Every metric of this module for an ensemble: the keys of ``FACTS``, computed on p̄ = mean_m p_m.

    Args:
        member_probs: per-member probabilities (M, N, C).
        targets: true classes (N,), int64.
        num_bins: the number of bins of every binning.
    """
    if member_probs.dim() != 3 or member_probs.shape[0] == 0:
        raise ValueError(f"member_probs must have shape (M, N, C) with M >= 1, got {tuple(member_probs.shape)}")
    probs = member_mean(member_probs.to(reduce_dtype(member_probs)))  # (N, C)
    _check(probs, targets, num_bins)
    bins = _classwise_bins(probs, targets, num_bins)  # shared by classwise ECE and the Brier decomposition
    decomposition = _brier_parts(probs, targets, bins)
    return {
        "mce": mce(probs, targets, num_bins),
        "ece_adaptive": ece_adaptive(probs, targets, num_bins),
        "ece_classwise": _classwise_ece(bins),
        **{name: decomposition[name] for name in ("brier_reliability", "brier_resolution", "brier_uncertainty")},
    }
