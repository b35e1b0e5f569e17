"""Metric functions on member probabilities: accuracy, calibration, uncertainty, diversity (OOD detection: ood.py).

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
- Functions ending in ``_metrics`` return plain Python floats and lists, ready for a logger or
  ``results.json``; the others return tensors.
"""

import torch
from torch import Tensor

from ensemble_lab.errors import NonFiniteOutputError

NLL_EPS = 1e-12
"""Lower clamp on the probability of the true class in NLL (documented in the module docstring)."""

# Upper bound on the elements of the (pairs, samples, classes) mixture tensor built at once by
# pairwise_jsd: 2**24 float64 values = 128 MiB. Larger inputs are processed in sample chunks.
_JSD_CHUNK_ELEMENTS = 2**24


def reduce_dtype(t: Tensor) -> torch.dtype:
    """Dtype used for reductions: float64, except on MPS, which does not support it."""
    return torch.float32 if t.device.type == "mps" else torch.float64


def check_finite(values: Tensor, what: str) -> None:
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
    check_finite(member_probs, "member probabilities")


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


def _binned(probs: Tensor, targets: Tensor, num_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-1 confidence (N,), correctness (N,) (float64; float32 on MPS) and bin membership (N, num_bins) bool."""
    if probs.dim() != 2:
        raise ValueError(f"probs must have shape (N, C), got {tuple(probs.shape)}")
    _check_targets(probs, targets)
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    dtype = reduce_dtype(probs)
    confidence, prediction = probs.to(dtype).max(dim=-1)  # (N,), (N,)
    correct = (prediction == targets).to(dtype)  # (N,)
    # Inner edges k/num_bins for k = 1..num_bins-1, computed as a division so that each edge is the
    # correctly rounded k/num_bins. bucketize(right=False) gives edges[i-1] < x <= edges[i]: the
    # upper edge is inclusive and everything <= 1/num_bins (0 included) lands in bin 0.
    edges = torch.arange(1, num_bins, dtype=dtype, device=probs.device) / num_bins  # (num_bins-1,)
    bin_index = torch.bucketize(confidence, edges, right=False)  # (N,) in [0, num_bins)
    # One-hot membership instead of scatter_add / weighted bincount: deterministic on every device.
    return confidence, correct, bin_index.unsqueeze(1) == torch.arange(num_bins, device=probs.device)  # (N, num_bins)


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
    confidence, correct, member = _binned(probs, targets, num_bins)  # (N,), (N,), (N, num_bins)
    count = member.sum(0)  # (num_bins,) int64
    dtype = confidence.dtype
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
    return float(calibration_terms(probs, targets, num_bins).mean(0).abs().sum())


def calibration_terms(probs: Tensor, targets: Tensor, num_bins: int = 15) -> Tensor:
    """(N, num_bins): sample i's correct_i − confidence_i in the column of its bin, 0 elsewhere.

    ECE = Σ_b |mean_i terms[i, b]|, since |B_b|/N · |acc(B_b) − conf(B_b)| = |Σ_{i ∈ B_b} (correct_i −
    confidence_i)| / N; a weighted mean over samples (a bootstrap resample's counts) gives the resample's ECE.
    Bins as :func:`reliability_bins`.

    Args:
        probs: predicted probabilities (N, C).
        targets: true classes (N,), int64.
        num_bins: number of equal-width bins on [0, 1].
    """
    confidence, correct, member = _binned(probs, targets, num_bins)
    return member.to(confidence.dtype) * (correct - confidence).unsqueeze(1)  # (N, num_bins)


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
    probs = member_probs.to(reduce_dtype(member_probs))  # (M, N, C)
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
    return differ.to(reduce_dtype(member_probs)).mean(-1)  # (M, M)


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
    dtype = reduce_dtype(member_probs)
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


#: the ensemble metrics that are means over samples of a per-sample term (see ``sample_terms``)
SAMPLE_MEANS = ("acc", "nll", "brier", "entropy", "expected_entropy", "mi", "disagreement")


def sample_terms(member_probs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Per-sample terms (N,) whose means over the samples are the metrics of ``SAMPLE_MEANS``.

    acc: 1[argmax p̄ = y]; nll: −log p̄[y] (p̄[y] clamped at 1e-12); brier: Σ_c (p̄_c − 1[y=c])²;
    entropy: H[p̄]; expected_entropy: mean_m H[p_m]; mi: the clamped mean_m KL(p_m ‖ p̄) of
    ``uncertainty_scores``; disagreement: the fraction of member pairs i < j whose argmax differ (0 when M = 1).
    A weighted mean (a bootstrap resample's counts) gives the metric of the resampled set.

    Args:
        member_probs: per-member probabilities (M, N, C).
        targets: true classes (N,), int64.
    """
    _check_member_probs(member_probs)
    _check_targets(member_probs, targets)
    num_members = member_probs.shape[0]
    probs = member_probs.to(reduce_dtype(member_probs))  # (M, N, C)
    mean_probs = member_mean(probs)  # (N, C)
    one_hot = torch.nn.functional.one_hot(targets, probs.shape[-1]).to(probs.dtype)  # (N, C)
    scores = uncertainty_scores(member_probs)
    prediction = probs.argmax(-1)  # (M, N)
    first, second = torch.triu_indices(num_members, num_members, offset=1, device=probs.device)  # (P,) pairs i < j
    differ = (prediction[first] != prediction[second]).to(probs.dtype)  # (P, N)
    return {
        "acc": (mean_probs.argmax(-1) == targets).to(probs.dtype),
        "nll": -mean_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).clamp_min(NLL_EPS).log(),
        "brier": ((mean_probs - one_hot) ** 2).sum(-1),
        "entropy": scores["entropy"],
        "expected_entropy": entropy(probs).mean(0),
        "mi": scores["mi"],
        "disagreement": differ.mean(0) if num_members > 1 else torch.zeros_like(scores["mi"]),
    }


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
    probs = member_probs.to(reduce_dtype(member_probs))  # (M, N, C)
    terms = sample_terms(member_probs, targets)
    member_correct = (probs.argmax(-1) == targets).to(probs.dtype)  # (M, N)
    means = {name: float(terms[name].mean()) for name in SAMPLE_MEANS}
    return {
        **{name: means[name] for name in ("acc", "nll", "brier")},
        "ece": expected_calibration_error(member_mean(probs), targets, num_bins),
        **{name: means[name] for name in ("entropy", "expected_entropy", "mi", "disagreement")},
        "member_acc": member_correct.mean(-1).tolist(),
        "member_nll": _nll(probs, targets).tolist(),
        "member_ece": [expected_calibration_error(p, targets, num_bins) for p in probs],
        "pairwise_disagreement": pairwise_disagreement(member_probs).tolist(),
        "pairwise_jsd": pairwise_jsd(member_probs).tolist(),
    }
