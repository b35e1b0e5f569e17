"""OOD detection quality: AUROC, AUPR and FPR95 of an uncertainty score, under both conventions.

``auroc``, ``aupr`` and ``fpr95`` take OOD as the positive class; ``aupr_in`` and ``fpr95_in`` take ID as
the positive class (the score negated), as most OOD-detection tables do. AUROC is the same under both.

``ood_detection_weighted`` holds the computation, for R weightings of the samples at once (a bootstrap's
resample counts); ``ood_detection`` is it with every sample counted once, and ``ood_metrics`` applies it
to each score of ``uncertainty_scores`` (msp, entropy, mi). Conventions as in metrics.py; the
functions not ending in ``_weighted`` return plain Python floats.
"""

import torch
from torch import Tensor

from ensemble_lab.metrics.classification import check_finite, reduce_dtype, uncertainty_scores
from ensemble_lab.metrics.registry import OOD_FAMILIES, OOD_SCORES, ood_name

#: the detection metrics of one score, ``<family>_<score>`` in results: OOD positive, then ID positive (``_in``)
OOD_DETECTION = OOD_FAMILIES


def ood_detection(id_scores: Tensor, ood_scores: Tensor) -> dict[str, float]:
    """AUROC, AUPR and FPR95 of separating OOD from ID samples by a score, OOD positive and ID positive.

    A higher score means "more OOD". Tied scores form one threshold, as in scikit-learn:
    ``auroc`` equals ``roc_auc_score`` (a tied ID/OOD pair counts one half), ``aupr`` equals
    ``average_precision_score`` (Σ_k (R_k − R_{k−1}) P_k over thresholds from high to low), and
    ``fpr95`` is the false-positive rate on ID at the first threshold, scanning from high to low,
    where the true-positive rate on OOD is >= 0.95 (``roc_curve(..., drop_intermediate=False)``).
    ``aupr_in`` and ``fpr95_in`` are the same computations with ID as the positive class and the
    score negated: ``average_precision_score(is_id, -score)``, and the fraction of OOD samples
    accepted as ID at the first threshold where >= 95% of the ID samples are.

    Args:
        id_scores: scores of in-distribution samples (N_id,), N_id >= 1, finite.
        ood_scores: scores of out-of-distribution samples (N_ood,), N_ood >= 1, finite (a NaN would
            sort as the most OOD sample; it raises NonFiniteOutputError instead).
    """
    if id_scores.numel() == 0 or ood_scores.numel() == 0:
        raise ValueError(
            f"ood_detection needs at least one ID and one OOD score, got {id_scores.numel()} and {ood_scores.numel()}"
        )
    dtype = reduce_dtype(id_scores)
    ones = lambda scores: torch.ones(1, scores.numel(), dtype=dtype, device=id_scores.device)  # (1, N): each sample once
    weighted = ood_detection_weighted(id_scores, ood_scores, ones(id_scores), ones(ood_scores))
    return {name: float(values[0]) for name, values in weighted.items()}


def ood_detection_weighted(id_scores: Tensor, ood_scores: Tensor, id_counts: Tensor, ood_counts: Tensor) -> dict[str, Tensor]:
    """:func:`ood_detection` for R weightings of the samples at once: row r counts ID sample i ``id_counts[r, i]``
    times and OOD sample j ``ood_counts[r, j]`` times (a bootstrap resample's counts; 0 leaves a sample out).

    The scores are sorted once per convention; each row's ROC and precision-recall curves are cumulative
    sums of its counts at the same thresholds (a threshold whose samples all have count 0 repeats the
    previous point and adds nothing), so every row equals ``ood_detection`` on its resampled set.

    Args:
        id_scores: scores of in-distribution samples (N_id,), N_id >= 1, finite.
        ood_scores: scores of out-of-distribution samples (N_ood,), N_ood >= 1, finite.
        id_counts: (R, N_id) non-negative weights, each row with a positive sum.
        ood_counts: (R, N_ood) likewise.

    Returns:
        ``{"auroc", "aupr", "fpr95", "aupr_in", "fpr95_in"}``, each (R,): the first three with OOD as the
        positive class, the ``_in`` ones with ID as the positive class and the score negated.
    """
    check_finite(id_scores, "ID scores")
    check_finite(ood_scores, "OOD scores")
    ood_positive = _detection(id_scores, ood_scores, id_counts, ood_counts)
    # ID positive: "more ID" is a lower score, so the roles swap and the scores change sign. AUROC is
    # the same number under both conventions (a pair's order does not depend on which side is positive).
    id_positive = _detection(-ood_scores, -id_scores, ood_counts, id_counts)
    return {**ood_positive, "aupr_in": id_positive["aupr"], "fpr95_in": id_positive["fpr95"]}


def _detection(negative: Tensor, positive: Tensor, negative_counts: Tensor, positive_counts: Tensor) -> dict[str, Tensor]:
    """AUROC, AUPR and FPR95 (each (R,)) of ``positive`` scores (higher: more positive) against ``negative`` ones."""
    dtype = reduce_dtype(negative)
    device = negative.device
    scores = torch.cat([negative.reshape(-1).to(dtype), positive.reshape(-1).to(device, dtype)])  # (N,)
    labels = torch.cat(
        [
            torch.zeros(negative.numel(), dtype=dtype, device=device),
            torch.ones(positive.numel(), dtype=dtype, device=device),
        ]
    )  # (N,)
    counts = torch.cat([negative_counts.to(device, dtype), positive_counts.to(device, dtype)], dim=1)  # (R, N)
    order = torch.sort(scores, descending=True, stable=True).indices
    scores, labels, counts = scores[order], labels[order], counts[:, order]
    # The last position of each run of equal scores is one threshold: everything up to it is
    # predicted positive. Counting only there treats tied scores as a single threshold.
    last_of_group = torch.ones_like(scores, dtype=torch.bool)  # (N,)
    last_of_group[:-1] = scores[1:] != scores[:-1]
    true_pos = (counts * labels).cumsum(1)[:, last_of_group]  # (R, T)
    false_pos = (counts * (1 - labels)).cumsum(1)[:, last_of_group]  # (R, T)
    num_pos, num_neg = true_pos[:, -1:], false_pos[:, -1:]  # (R, 1): integer counts, exact in float
    zero = torch.zeros(counts.shape[0], 1, dtype=dtype, device=device)
    tpr = torch.cat([zero, true_pos / num_pos], dim=1)  # (R, T+1) starting at the (0, 0) corner
    fpr = torch.cat([zero, false_pos / num_neg], dim=1)  # (R, T+1)

    # Trapezoids: a threshold group holding both ID and OOD samples adds a diagonal segment,
    # i.e. each tied ID/OOD pair counts one half.
    auroc = ((fpr[:, 1:] - fpr[:, :-1]) * (tpr[:, 1:] + tpr[:, :-1]) / 2).sum(1)
    predicted = true_pos + false_pos  # (R, T); 0 only before a row's first counted sample, where tpr does not move
    precision = torch.where(predicted > 0, true_pos / predicted.clamp_min(1e-300), torch.zeros_like(predicted))
    aupr = ((tpr[:, 1:] - tpr[:, :-1]) * precision).sum(1)
    # tpr is non-decreasing and reaches 1, so the first index with tpr >= 0.95 always exists.
    first_reach = (tpr >= 0.95).to(torch.uint8).argmax(1, keepdim=True)  # (R, 1): argmax gives the first maximum
    return {"auroc": auroc, "aupr": aupr, "fpr95": fpr.gather(1, first_reach).squeeze(1)}


def ood_metrics(id_member_probs: Tensor, ood_member_probs: Tensor) -> dict[str, float | None]:
    """OOD detection quality of each uncertainty score (msp, entropy, mi), under both conventions.

    Args:
        id_member_probs: per-member probabilities on the in-distribution test set (M, N_id, C).
        ood_member_probs: per-member probabilities on the OOD test set (M, N_ood, C).

    Returns:
        ``{"auroc_msp", "aupr_msp", "fpr95_msp", "aupr_in_msp", "fpr95_in_msp", "auroc_entropy", ...,
        "fpr95_in_mi"}`` as floats (``OOD_DETECTION`` lists the families). For a single model (M = 1) the
        ``*_mi`` values are None: its mi is 0 on every sample, and the 0.5 / 1.0 a constant score would
        get are not a detection result.
    """
    id_scores = uncertainty_scores(id_member_probs)
    ood_scores = uncertainty_scores(ood_member_probs)
    single = id_member_probs.shape[0] == 1 and ood_member_probs.shape[0] == 1
    result: dict[str, float | None] = {}
    for name in OOD_SCORES:
        if name == "mi" and single:
            result.update({ood_name(metric, name): None for metric in OOD_DETECTION})
            continue
        for metric, value in ood_detection(id_scores[name], ood_scores[name]).items():
            result[ood_name(metric, name)] = value
    return result
