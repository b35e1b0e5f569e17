"""Per-sample OOD scores from the members' logits, beside the msp / entropy / mi of ``uncertainty_scores``.

Every score follows ``ood``'s convention, higher = more OOD, so ``ood_detection`` turns each into AUROC,
AUPR and FPR95 (keys ``auroc_<score>``, ``aupr_<score>``, ...). Input: member logits z (M, N, C).

- ``maxlogit``: −max_c l̄_c, the negated maximum of the members' **mean logits** l̄ = mean_m z_m
  (Hendrycks et al. 2022, "Scaling out-of-distribution detection for real-world settings", on one network's
  logits; averaging logits is our choice for an ensemble, since max logit and energy are defined on logits).
- ``energy``: −logsumexp_c(l̄_c), the free energy at temperature 1 of the same mean logits l̄ (Liu et al.
  2020, "Energy-based out-of-distribution detection"). ID samples get low energy: this is the energy
  itself, not the negated energy that paper uses as an ID score.
- ``variation_ratio``: 1 − (votes for the modal class)/M, where each member votes for its argmax
  (Freeman 1965; Gal 2016, "Uncertainty in deep learning"). 0 when all members agree.
- ``expected_entropy``: mean_m H[softmax(z_m)], the mean of the members' own entropies: aleatoric
  uncertainty only, blind to disagreement between members.
"""

import torch
from torch import Tensor

from ensemble_lab.metrics.classification import check_finite, entropy, reduce_dtype
from ensemble_lab.metrics.ood import OOD_DETECTION, ood_detection
from ensemble_lab.metrics.registry import LOGIT_OOD_FACTS, LOGIT_SCORES

#: the logit-based scores of this module (in the order of :func:`logit_scores`) and the registry facts of their
#: OOD-detection metrics (their home is the registry: one row per score there); they need an OOD set, not labels
FACTS = LOGIT_OOD_FACTS


def _check_logits(member_logits: Tensor) -> None:
    """Raise a one-line error unless the logits are (M, N, C) with M, N, C >= 1 and finite."""
    if member_logits.dim() != 3 or 0 in member_logits.shape:
        raise ValueError(f"member_logits must have shape (M, N, C) with M, N, C >= 1, got {tuple(member_logits.shape)}")
    check_finite(member_logits, "member logits")


def logit_scores(member_logits: Tensor) -> dict[str, Tensor]:
    """Per-sample OOD scores (higher = more OOD) from member logits (module docstring for the definitions).

    Args:
        member_logits: per-member logits (M, N, C).

    Returns:
        ``{"maxlogit", "energy", "variation_ratio", "expected_entropy"}``, each (N,) in float64 (float32 on MPS).
    """
    _check_logits(member_logits)
    num_members, _, num_classes = member_logits.shape
    logits = member_logits.to(reduce_dtype(member_logits))  # (M, N, C)
    mean_logits = logits.mean(0)  # (N, C)
    votes = torch.nn.functional.one_hot(logits.argmax(-1), num_classes).sum(0)  # (N, C): members voting for each class
    return {
        "maxlogit": -mean_logits.max(-1).values,
        "energy": -torch.logsumexp(mean_logits, dim=-1),
        "variation_ratio": 1.0 - votes.max(-1).values.to(logits.dtype) / num_members,
        "expected_entropy": entropy(torch.softmax(logits, dim=-1)).mean(0),
    }


def logit_ood_metrics(id_member_logits: Tensor, ood_member_logits: Tensor) -> dict[str, float | None]:
    """AUROC, AUPR, FPR95 (both conventions, as ``ood_metrics``) of each score of :func:`logit_scores`.

    Args:
        id_member_logits: per-member logits on the in-distribution test set (M, N_id, C).
        ood_member_logits: per-member logits on the OOD set (M, N_ood, C).

    Returns:
        ``{"auroc_maxlogit", "aupr_maxlogit", "fpr95_maxlogit", "aupr_in_maxlogit", "fpr95_in_maxlogit",
        "auroc_energy", ...}``. For a single model (M = 1) the ``*_variation_ratio`` values are None: one
        member's vote is unanimous on every sample, and a constant score detects nothing.
    """
    id_scores, ood_scores = logit_scores(id_member_logits), logit_scores(ood_member_logits)
    single = id_member_logits.shape[0] == 1 and ood_member_logits.shape[0] == 1
    result: dict[str, float | None] = {}
    for name in LOGIT_SCORES:
        if name == "variation_ratio" and single:
            result.update({f"{metric}_{name}": None for metric in OOD_DETECTION})
            continue
        for metric, value in ood_detection(id_scores[name], ood_scores[name]).items():
            result[f"{metric}_{name}"] = value
    return result
