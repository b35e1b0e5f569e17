"""Metric functions on member probabilities: accuracy, calibration, uncertainty, diversity, OOD.

Definitions: docs/metrics.md. Conventions for every function:

- ``member_probs`` is a float tensor (M, N, C) of per-member softmax probabilities and
  ``targets`` an int64 tensor (N,). The ensemble prediction is p̄, the mean of the members'
  probabilities (never of logits), computed so that identical members give exactly their common
  probabilities (see :func:`member_mean`).
- Probabilities and scores must be finite: a NaN or inf raises NonFiniteOutputError (a ValueError)
  instead of turning some metrics into NaN while others look fine.
- Logarithms are natural. Entropies use ``torch.xlogy`` so that a zero probability contributes 0
  instead of NaN; NLL clamps p̄[y] at ``NLL_EPS`` = 1e-12, so a sample whose true class got zero
  probability costs -log(1e-12) ≈ 27.63 instead of infinity.
- Everything runs on the device of the inputs. Reductions happen in float64 (float32 on MPS, which
  has no float64): entropies of close distributions differ in their last digits.
- Mutual information is computed as mean_m KL(p_m ‖ p̄), which equals H[p̄] − mean_m H[p_m] but is
  exactly 0 when the members are identical (the difference of entropies is not: a mean of M equal
  entropies rounds, and that noise would rank samples when a collapsed ensemble scores OOD data).
- Functions ending in ``_metrics`` / ``ood_detection`` return plain Python floats and lists, ready
  for a logger or ``results.json``; the others return tensors.
"""

import torch
from torch import Tensor

from ensemble_lab.errors import NonFiniteOutputError

NLL_EPS = 1e-12
"""Lower clamp on the probability of the true class in NLL (documented in the module docstring)."""

# Upper bound on the elements of the (pairs, samples, classes) mixture tensor built at once by
# pairwise_jsd: 2**24 float64 values = 128 MiB. Larger inputs are processed in sample chunks.
_JSD_CHUNK_ELEMENTS = 2**24


def _reduce_dtype(t: Tensor) -> torch.dtype:
    """Dtype used for reductions: float64, except on MPS, which does not support it."""
    return torch.float32 if t.device.type == "mps" else torch.float64


def _check_finite(values: Tensor, what: str) -> None:
    """Raise NonFiniteOutputError (a ValueError) if any of ``values`` is NaN or infinite."""
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        raise NonFiniteOutputError(
            f"{bad} of {values.numel()} {what} are NaN or infinite: the model produced NaN/inf probabilities "
            "(diverged weights, or an overflow in reduced precision), so no metric of them means anything"
        )


def _check_member_probs(member_probs: Tensor) -> None:
    """Raise a ValueError unless ``member_probs`` has the (M, N, C) layout with M, N >= 1 and is finite."""
    if member_probs.dim() != 3:
        raise ValueError(
            f"member_probs must have shape (M, N, C) (members, samples, classes), got {tuple(member_probs.shape)}"
        )
    if member_probs.shape[0] == 0 or member_probs.shape[1] == 0:
        raise ValueError(f"member_probs needs at least one member and one sample, got {tuple(member_probs.shape)}")
    _check_finite(member_probs, "member probabilities")


def _check_targets(probs: Tensor, targets: Tensor) -> None:
    """Raise a ValueError unless ``targets`` is (N,) for probabilities (..., N, C)."""
    if targets.dim() != 1 or targets.shape[0] != probs.shape[-2]:
        raise ValueError(
            f"targets must have shape (N,) = ({probs.shape[-2]},) to match probabilities "
            f"{tuple(probs.shape)}, got {tuple(targets.shape)}"
        )


def entropy(probs: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy (natural log) of the distributions along ``dim``.

    Args:
        probs: probabilities, any shape; zeros are allowed (0 · log 0 = 0).
        dim: the class dimension, removed from the result.

    Returns:
        ``probs`` with ``dim`` reduced away, in the dtype of ``probs`` (cast to float64 first
        when the result feeds a difference of entropies).
    """
    return -torch.xlogy(probs, probs).sum(dim)


def member_mean(probs: Tensor) -> Tensor:
    """Mean over members p̄ of probabilities (M, ..., C) -> (..., C), exact for identical members.

    Computed as p_0 + mean_m (p_m − p_0): for identical members every difference is 0 and p̄ is p_0
    bit for bit, where a plain mean of M equal values can round away from them (3·x / 3 need not be x).
    """
    first = probs[0]
    return first + (probs - first).mean(0)


def reliability_bins(probs: Tensor, targets: Tensor, num_bins: int = 15) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin accuracy, mean confidence and count of the top-1 prediction, for reliability diagrams.

    Bin k holds confidences (max probability) in (k/num_bins, (k+1)/num_bins]; a confidence of
    exactly 0 goes to bin 0. Empty bins report count 0 and accuracy = confidence = 0.

    Args:
        probs: predicted probabilities (N, C).
        targets: true classes (N,), int64.
        num_bins: number of equal-width bins on [0, 1].

    Returns:
        ``(accuracy, confidence, count)``, each of shape (num_bins,); the first two in float64
        (float32 on MPS), the count in int64.
    """
    if probs.dim() != 2:
        raise ValueError(f"probs must have shape (N, C), got {tuple(probs.shape)}")
    _check_targets(probs, targets)
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    dtype = _reduce_dtype(probs)
    confidence, prediction = probs.to(dtype).max(dim=-1)  # (N,), (N,)
    correct = (prediction == targets).to(dtype)  # (N,)
    # Inner edges k/num_bins for k = 1..num_bins-1, computed as a division so that each edge is the
    # correctly rounded k/num_bins. bucketize(right=False) gives edges[i-1] < x <= edges[i]: the
    # upper edge is inclusive and everything <= 1/num_bins (0 included) lands in bin 0.
    edges = torch.arange(1, num_bins, dtype=dtype, device=probs.device) / num_bins  # (num_bins-1,)
    bin_index = torch.bucketize(confidence, edges, right=False)  # (N,) in [0, num_bins)
    # One-hot membership instead of scatter_add / weighted bincount: deterministic on every device.
    member = bin_index.unsqueeze(1) == torch.arange(num_bins, device=probs.device)  # (N, num_bins)
    count = member.sum(0)  # (num_bins,) int64
    member = member.to(dtype)
    denom = count.clamp_min(1).to(dtype)
    accuracy = (member * correct.unsqueeze(1)).sum(0) / denom  # (num_bins,)
    mean_confidence = (member * confidence.unsqueeze(1)).sum(0) / denom  # (num_bins,)
    return accuracy, mean_confidence, count


def expected_calibration_error(probs: Tensor, targets: Tensor, num_bins: int = 15) -> float:
    """Expected calibration error, L1: Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|.

    Uses the bins of :func:`reliability_bins` (equal width, upper edge inclusive).

    Args:
        probs: predicted probabilities (N, C), N >= 1.
        targets: true classes (N,), int64.
        num_bins: number of equal-width bins on [0, 1].
    """
    if probs.shape[0] == 0:
        raise ValueError("expected_calibration_error needs at least one sample")
    accuracy, confidence, count = reliability_bins(probs, targets, num_bins)
    weight = count.to(accuracy.dtype) / probs.shape[0]  # (num_bins,)
    return float((weight * (accuracy - confidence).abs()).sum())


def uncertainty_scores(member_probs: Tensor) -> dict[str, Tensor]:
    """Per-sample uncertainty scores of the ensemble; higher means more uncertain.

    Args:
        member_probs: per-member probabilities (M, N, C).

    Returns:
        ``{"msp": 1 − max_c p̄_c, "entropy": H[p̄], "mi": mean_m KL(p_m ‖ p̄)}``, each of shape
        (N,) in float64 (float32 on MPS). "mi" equals H[p̄] − mean_m H[p_m] and is exactly 0 when
        the members are identical; it is clamped at 0 (non-negative in exact arithmetic, only
        round-off can push it below).
    """
    _check_member_probs(member_probs)
    probs = member_probs.to(_reduce_dtype(member_probs))  # (M, N, C)
    mean_probs = member_mean(probs)  # (N, C)
    # KL(p_m ‖ p̄) = Σ_c p_m log p_m − p_m log p̄; xlogy makes a class with p_m = 0 contribute 0.
    # p̄ >= p_m / M > 0 wherever p_m > 0, but a subnormal p_m / M can round to 0: p̄ is floored at the
    # smallest normal number, which changes nothing else (and such a term is ~1e-36 at most).
    # Identical members: p̄ is p_m bit for bit, both terms are the same numbers and every KL is 0.
    floored_mean = mean_probs.clamp_min(torch.finfo(probs.dtype).tiny)  # (N, C)
    kl = (torch.xlogy(probs, probs) - torch.xlogy(probs, floored_mean)).sum(-1)  # (M, N)
    return {
        "msp": 1.0 - mean_probs.max(dim=-1).values,
        "entropy": entropy(mean_probs),
        "mi": kl.mean(0).clamp_min(0.0),
    }


def pairwise_disagreement(member_probs: Tensor) -> Tensor:
    """Fraction of samples on which the top-1 predictions of members i and j differ.

    Args:
        member_probs: per-member probabilities (M, N, C).

    Returns:
        Symmetric (M, M) matrix with zero diagonal, float64 (float32 on MPS).
    """
    _check_member_probs(member_probs)
    prediction = member_probs.argmax(dim=-1)  # (M, N)
    differ = prediction.unsqueeze(1) != prediction.unsqueeze(0)  # (M, M, N)
    return differ.to(_reduce_dtype(member_probs)).mean(-1)  # (M, M)


def pairwise_jsd(member_probs: Tensor) -> Tensor:
    """Mean over samples of the Jensen-Shannon divergence between members i and j.

    JSD(p_i, p_j) = H((p_i + p_j)/2) − (H(p_i) + H(p_j))/2, natural log, in [0, log 2].

    Args:
        member_probs: per-member probabilities (M, N, C).

    Returns:
        Symmetric (M, M) matrix with zero diagonal, float64 (float32 on MPS).
    """
    _check_member_probs(member_probs)
    num_members, num_samples, num_classes = member_probs.shape
    dtype = _reduce_dtype(member_probs)
    probs = member_probs.to(dtype)  # (M, N, C)
    result = torch.zeros(num_members, num_members, dtype=dtype, device=member_probs.device)
    if num_members == 1:
        return result
    # Only pairs i < j are computed (the matrix is symmetric with a zero diagonal).
    first, second = torch.triu_indices(num_members, num_members, offset=1, device=member_probs.device)  # (P,)
    member_entropy = entropy(probs)  # (M, N)
    # The mixtures take P·N·C values; chunk over samples to bound memory (e.g. CIFAR-100, M = 10).
    chunk = max(1, _JSD_CHUNK_ELEMENTS // (first.numel() * num_classes))
    total = torch.zeros(first.numel(), dtype=dtype, device=member_probs.device)  # (P,)
    for start in range(0, num_samples, chunk):
        part = slice(start, start + chunk)
        mixture = 0.5 * (probs[first, part] + probs[second, part])  # (P, n, C)
        jsd = entropy(mixture) - 0.5 * (member_entropy[first, part] + member_entropy[second, part])  # (P, n)
        total += jsd.clamp_min(0.0).sum(-1)
    mean_jsd = total / num_samples  # (P,)
    result[first, second] = mean_jsd
    result[second, first] = mean_jsd
    return result


def _nll(probs: Tensor, targets: Tensor) -> Tensor:
    """Mean of −log p[y] over samples, with p[y] clamped at NLL_EPS; probs (..., N, C) -> (...)."""
    index = targets.expand(*probs.shape[:-1]).unsqueeze(-1)  # (..., N, 1)
    true_prob = probs.gather(-1, index).squeeze(-1)  # (..., N)
    return -true_prob.clamp_min(NLL_EPS).log().mean(-1)


def predictive_metrics(member_probs: Tensor, targets: Tensor, num_bins: int = 15) -> dict:
    """Accuracy, calibration, uncertainty and diversity of an ensemble on one test set.

    Args:
        member_probs: per-member probabilities (M, N, C).
        targets: true classes (N,), int64.
        num_bins: ECE bins (for the ensemble and for every member).

    Returns:
        A dict with exactly these keys (Python floats unless noted):
        ``acc`` top-1 accuracy of p̄; ``nll`` mean −log p̄[y] (p̄[y] clamped at 1e-12);
        ``brier`` mean Σ_c (p̄_c − 1[y=c])²; ``ece``; ``entropy`` mean H[p̄];
        ``expected_entropy`` mean over samples of mean_m H[p_m]; ``mi`` mean of the per-sample
        (clamped) mutual information mean_m KL(p_m ‖ p̄), entropy − expected_entropy up to round-off
        and exactly 0 for identical members; ``disagreement`` mean over member pairs i < j and
        samples of 1[argmax p_i ≠ argmax p_j] (0.0 when M == 1); ``member_acc``, ``member_nll``,
        ``member_ece`` lists of M floats; ``pairwise_disagreement`` and ``pairwise_jsd`` M×M
        nested lists.
    """
    _check_member_probs(member_probs)
    _check_targets(member_probs, targets)
    num_members = member_probs.shape[0]
    dtype = _reduce_dtype(member_probs)
    probs = member_probs.to(dtype)  # (M, N, C)
    mean_probs = member_mean(probs)  # (N, C)
    one_hot = torch.nn.functional.one_hot(targets, probs.shape[-1]).to(dtype)  # (N, C)
    scores = uncertainty_scores(member_probs)
    expected_entropy = entropy(probs).mean(0)  # (M, N) -> (N,)

    member_correct = (probs.argmax(-1) == targets).to(dtype)  # (M, N)
    disagreement_matrix = pairwise_disagreement(member_probs)  # (M, M)
    first, second = torch.triu_indices(num_members, num_members, offset=1, device=member_probs.device)
    disagreement = float(disagreement_matrix[first, second].mean()) if num_members > 1 else 0.0

    return {
        "acc": float((mean_probs.argmax(-1) == targets).to(dtype).mean()),
        "nll": float(_nll(mean_probs, targets)),
        "brier": float(((mean_probs - one_hot) ** 2).sum(-1).mean()),
        "ece": expected_calibration_error(mean_probs, targets, num_bins),
        "entropy": float(scores["entropy"].mean()),
        "expected_entropy": float(expected_entropy.mean()),
        "mi": float(scores["mi"].mean()),
        "disagreement": disagreement,
        "member_acc": member_correct.mean(-1).tolist(),
        "member_nll": _nll(probs, targets).tolist(),
        "member_ece": [expected_calibration_error(p, targets, num_bins) for p in probs],
        "pairwise_disagreement": disagreement_matrix.tolist(),
        "pairwise_jsd": pairwise_jsd(member_probs).tolist(),
    }


def ood_detection(id_scores: Tensor, ood_scores: Tensor) -> dict[str, float]:
    """AUROC, AUPR and FPR95 of separating OOD (positive) from ID samples by a score.

    A higher score means "more OOD". Tied scores form one threshold, as in scikit-learn:
    ``auroc`` equals ``roc_auc_score`` (a tied ID/OOD pair counts one half), ``aupr`` equals
    ``average_precision_score`` (Σ_k (R_k − R_{k−1}) P_k over thresholds from high to low), and
    ``fpr95`` is the false-positive rate on ID at the first threshold, scanning from high to low,
    where the true-positive rate on OOD is >= 0.95 (``roc_curve(..., drop_intermediate=False)``).

    Args:
        id_scores: scores of in-distribution samples (N_id,), N_id >= 1, finite.
        ood_scores: scores of out-of-distribution samples (N_ood,), N_ood >= 1, finite (a NaN would
            sort as the most OOD sample; it raises NonFiniteOutputError instead).
    """
    if id_scores.numel() == 0 or ood_scores.numel() == 0:
        raise ValueError(
            f"ood_detection needs at least one ID and one OOD score, got {id_scores.numel()} and {ood_scores.numel()}"
        )
    _check_finite(id_scores, "ID scores")
    _check_finite(ood_scores, "OOD scores")
    dtype = _reduce_dtype(id_scores)
    device = id_scores.device
    scores = torch.cat([id_scores.reshape(-1).to(dtype), ood_scores.reshape(-1).to(device, dtype)])  # (N,)
    labels = torch.cat(
        [
            torch.zeros(id_scores.numel(), dtype=dtype, device=device),
            torch.ones(ood_scores.numel(), dtype=dtype, device=device),
        ]
    )  # (N,)
    order = torch.sort(scores, descending=True, stable=True).indices
    scores, labels = scores[order], labels[order]
    # The last position of each run of equal scores is one threshold: everything up to it is
    # predicted positive. Counting only there treats tied scores as a single threshold.
    last_of_group = torch.ones_like(scores, dtype=torch.bool)  # (N,)
    last_of_group[:-1] = scores[1:] != scores[:-1]
    true_pos = labels.cumsum(0)[last_of_group]  # (T,)
    false_pos = torch.arange(1, scores.numel() + 1, device=device, dtype=dtype)[last_of_group] - true_pos  # (T,)
    num_pos, num_neg = float(ood_scores.numel()), float(id_scores.numel())
    zero = torch.zeros(1, dtype=dtype, device=device)
    tpr = torch.cat([zero, true_pos / num_pos])  # (T+1,) starting at the (0, 0) corner
    fpr = torch.cat([zero, false_pos / num_neg])  # (T+1,)

    # Trapezoids: a threshold group holding both ID and OOD samples adds a diagonal segment,
    # i.e. each tied ID/OOD pair counts one half.
    auroc = ((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2).sum()
    precision = true_pos / (true_pos + false_pos)  # (T,)
    aupr = ((tpr[1:] - tpr[:-1]) * precision).sum()
    # tpr is non-decreasing and reaches 1, so the first index with tpr >= 0.95 always exists.
    first_reach = torch.nonzero(tpr >= 0.95)[0, 0]
    return {"auroc": float(auroc), "aupr": float(aupr), "fpr95": float(fpr[first_reach])}


def ood_metrics(id_member_probs: Tensor, ood_member_probs: Tensor) -> dict[str, float | None]:
    """OOD detection quality of each uncertainty score (msp, entropy, mi), OOD as the positive class.

    Args:
        id_member_probs: per-member probabilities on the in-distribution test set (M, N_id, C).
        ood_member_probs: per-member probabilities on the OOD test set (M, N_ood, C).

    Returns:
        ``{"auroc_msp", "aupr_msp", "fpr95_msp", "auroc_entropy", ..., "fpr95_mi"}`` as floats. For a
        single model (M = 1) the three ``*_mi`` values are None: its mi is 0 on every sample, and
        the 0.5 / 1.0 a constant score would get are not a detection result.
    """
    id_scores = uncertainty_scores(id_member_probs)
    ood_scores = uncertainty_scores(ood_member_probs)
    single = id_member_probs.shape[0] == 1 and ood_member_probs.shape[0] == 1
    result: dict[str, float | None] = {}
    for name in ("msp", "entropy", "mi"):
        if name == "mi" and single:
            result.update({f"{metric}_mi": None for metric in ("auroc", "aupr", "fpr95")})
            continue
        for metric, value in ood_detection(id_scores[name], ood_scores[name]).items():
            result[f"{metric}_{name}"] = value
    return result
