"""Deep-Ensemble equivalent and the fraction of the Deep Ensemble's gain: a method placed on the DE's size curve.

Ashukha et al. (2020, "Pitfalls of in-domain uncertainty estimation and ensembling in deep learning") compare
ensembling techniques by the size of a Deep Ensemble that matches them: given the temperature-scaled (TS)
NLL of Deep Ensembles of sizes 1..K (built from a study's independently trained single runs), linearly
interpolated between integer sizes, the Deep-Ensemble equivalent (DEE) of a method is the smallest size
l >= 1 whose interpolated TS-NLL is at most the method's. Their definition takes the minimum over l >= 1,
so a method no better than one network gets DEE = 1 (not a fraction below 1). A method better than the
largest ensemble measured has no crossing within 1..K: we extend the last segment (sizes K−1, K) as a line,
which for the usual diminishing returns (a convex curve) reaches the method's NLL sooner than more members
would, so the extrapolated DEE is a lower bound; ``extrapolate=False`` returns None there instead.

The fraction of the DE's gain, (single − method) / (single − DE), is the share of what the Deep Ensemble
improves over a single model that the method recovers (1: as good as the DE, 0: no better than one model,
negative: worse). It reads the same for a lower-is-better metric (NLL, ECE) and a higher-is-better one
(acc): both differences change sign together.
"""

from collections.abc import Sequence

import torch

from ensemble_lab.errors import ConfigError
from ensemble_lab.metrics.registry import DE_FACTS as FACTS  # noqa: F401  (the rows' one home is the registry)


def deep_ensemble_equivalent(de_nll: Sequence[float], method_nll: float, extrapolate: bool = True) -> float | None:
    """The fractional Deep-Ensemble size whose (interpolated) TS-NLL equals the method's (module docstring).

    Args:
        de_nll: TS-NLL of Deep Ensembles of sizes 1, 2, ..., K (K >= 1), usually decreasing; if it is not, the
            first crossing (the smallest size) counts.
        method_nll: the method's TS-NLL on the same test set.
        extrapolate: beyond size K, extend the last segment linearly (a lower bound) instead of returning None.

    Returns:
        DEE >= 1; 1.0 when the method is no better than one network; None when the method beats size K and
        ``extrapolate`` is off, or the curve does not fall at its end (nothing to extrapolate).
    """
    curve = torch.as_tensor(list(de_nll), dtype=torch.float64)  # (K,)
    if curve.dim() != 1 or curve.numel() == 0 or not bool(torch.isfinite(curve).all()):
        raise ConfigError(f"de_nll must be a non-empty sequence of finite NLLs of Deep Ensembles of sizes 1..K, got {list(de_nll)}")
    target = float(method_nll)
    if target >= float(curve[0]):
        return 1.0
    reached = curve <= target  # (K,)
    if bool(reached.any()):
        j = int(reached.to(torch.uint8).argmax())  # first index reaching the target; >= 1 since curve[0] > target
        above, below = float(curve[j - 1]), float(curve[j])
        return j + (above - target) / (above - below)  # size j is index j-1, size j+1 is index j
    k = curve.numel()
    if not extrapolate or k < 2 or float(curve[-1]) >= float(curve[-2]):
        return None
    return k + (float(curve[-1]) - target) / (float(curve[-2]) - float(curve[-1]))


def fraction_of_de_gain(single: float, method: float, deep_ensemble: float) -> float | None:
    """(single − method) / (single − deep_ensemble): the share of the Deep Ensemble's gain the method recovers.

    Args:
        single: the metric of one network (e.g. the mean over the study's single runs).
        method: the method's metric.
        deep_ensemble: the Deep Ensemble's metric (the size the comparison is about).

    Returns:
        The fraction, or None when the Deep Ensemble equals the single model (no gain to share).
    """
    gain = single - deep_ensemble
    if gain == 0:
        return None
    return (single - method) / gain
