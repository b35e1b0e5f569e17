"""Joint predictive log-likelihood with dyadic sampling (Osband et al. 2022, "The Neural Testbed").

Marginal NLL scores one input at a time, so it cannot tell members that disagree *consistently* (member m
is wrong about the same kind of input everywhere) from members whose disagreement is noise. The joint
likelihood of τ labels at once can: an ensemble's joint predictive of labels y_1..y_τ at inputs x_1..x_τ is
the mixture mean_m Π_t p_m(y_t | x_t), not the product of the marginals p̄(y_t | x_t).

Dyadic sampling makes τ inputs informative at test sizes: a batch is built from 2 distinct anchor inputs
drawn uniformly from the test set, and its τ inputs are drawn from the two anchors (so each anchor appears
several times and the members' agreement *across* repeats of an input is what is scored). As in the
Testbed's reference code, each of the τ inputs picks one of the two anchors uniformly with replacement;
``balanced=True`` instead uses each anchor exactly τ/2 times. For one batch with anchors a, b used n_a and
n_b = τ − n_a times:

    joint NLL = −log mean_m p_m(y_a | x_a)^{n_a} · p_m(y_b | x_b)^{n_b}

(computed with logsumexp over members). We report the mean over many sampled batches **divided by τ**,
a per-input number on the scale of the marginal ``nll``: for identical members (a single model) it is
exactly the mean marginal NLL of the sampled inputs. Members that disagree move it away from that:
repeats of one input lower it (mean_m p_m^n >= p̄^n, Jensen), members that each back a different
anchor raise it. The Testbed itself reports the
joint NLL undivided (a sum over the τ inputs): multiply by τ to compare. p_m(y) is clamped at 1e-12 as in
``nll``. Names ``joint_nll_2`` and ``joint_nll_10`` (τ = 2 and 10).
"""

import math

import torch
from torch import Tensor

from ensemble_lab.errors import ConfigError
from ensemble_lab.metrics.classification import NLL_EPS, check_finite, reduce_dtype
from ensemble_lab.metrics.registry import JOINT_NLL_FACTS

#: the batch sizes τ reported, as ``joint_nll_<τ>``
JOINT_TAUS = (2, 10)
#: batches sampled per τ by default: the standard error of the mean is then a few thousandths of a nat
DEFAULT_BATCHES = 10_000

#: registry facts (their home is the registry: one row each there)
FACTS = JOINT_NLL_FACTS


def dyadic_batches(
    num_samples: int, tau: int, num_batches: int, generator: torch.Generator, balanced: bool = False
) -> tuple[Tensor, Tensor]:
    """Sample dyadic batches: anchors (B, 2) of distinct sample indices and how often each is used (B, 2).

    Args:
        num_samples: N, the number of test samples (>= 2).
        tau: τ, the number of inputs per batch (>= 1; even when ``balanced``).
        num_batches: B, the number of batches (>= 1).
        generator: the seeded random generator (CPU) that draws the anchors and the repeats.
        balanced: each anchor used exactly τ/2 times instead of τ uniform draws from the two anchors.

    Returns:
        ``(anchors, counts)``: int64 tensors (B, 2); each row of ``counts`` sums to τ.
    """
    if num_samples < 2:
        raise ConfigError(f"dyadic sampling needs at least 2 test samples, got {num_samples}")
    if tau < 1 or num_batches < 1:
        raise ConfigError(f"tau and num_batches must be >= 1, got tau={tau}, num_batches={num_batches}")
    if balanced and tau % 2:
        raise ConfigError(f"balanced dyadic sampling uses each anchor tau/2 times: tau must be even, got {tau}")
    first = torch.randint(0, num_samples, (num_batches,), generator=generator)  # (B,)
    # a uniform offset in 1..N-1 makes the second anchor uniform over the other N-1 samples
    second = (first + torch.randint(1, num_samples, (num_batches,), generator=generator)) % num_samples  # (B,)
    if balanced:
        uses_first = torch.full((num_batches,), tau // 2, dtype=torch.int64)
    else:
        uses_first = torch.randint(0, 2, (num_batches, tau), generator=generator).sum(1)  # (B,) draws that hit anchor 1
    return torch.stack([first, second], 1), torch.stack([uses_first, tau - uses_first], 1)


def joint_nll(
    member_probs: Tensor,
    targets: Tensor,
    tau: int,
    num_batches: int = DEFAULT_BATCHES,
    generator: torch.Generator | None = None,
    balanced: bool = False,
) -> float:
    """Mean over dyadic batches of the ensemble's joint NLL of τ labels, divided by τ (module docstring).

    Args:
        member_probs: per-member probabilities (M, N, C), N >= 2.
        targets: true classes (N,), int64.
        tau: τ, the number of inputs per batch.
        num_batches: the number of sampled batches averaged.
        generator: a seeded CPU generator; None uses one seeded with 0, so the result is reproducible.
        balanced: use each anchor exactly τ/2 times instead of τ uniform draws (see ``dyadic_batches``).
    """
    if member_probs.dim() != 3 or member_probs.shape[0] == 0:
        raise ValueError(f"member_probs must have shape (M, N, C) with M >= 1, got {tuple(member_probs.shape)}")
    if targets.dim() != 1 or targets.shape[0] != member_probs.shape[1]:
        raise ValueError(f"targets must have shape ({member_probs.shape[1]},), got {tuple(targets.shape)}")
    check_finite(member_probs, "member probabilities")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    anchors, counts = dyadic_batches(member_probs.shape[1], tau, num_batches, generator, balanced)
    anchors, counts = anchors.to(member_probs.device), counts.to(member_probs.device)
    probs = member_probs.to(reduce_dtype(member_probs))  # (M, N, C)
    index = targets.view(1, -1, 1).expand(probs.shape[0], -1, 1)  # (M, N, 1)
    log_true = probs.gather(-1, index).squeeze(-1).clamp_min(NLL_EPS).log()  # (M, N): log p_m(y_n)
    # log Π_t p_m(y_t) = n_a log p_m(y_a) + n_b log p_m(y_b), per member and batch
    joint = (log_true[:, anchors] * counts.to(probs.dtype)).sum(-1)  # (M, B, 2) -> (M, B)
    log_mixture = torch.logsumexp(joint, dim=0) - math.log(probs.shape[0])  # (B,)
    return float(-log_mixture.mean() / tau)


def joint_nll_metrics(
    member_probs: Tensor, targets: Tensor, num_batches: int = DEFAULT_BATCHES, seed: int = 0, balanced: bool = False
) -> dict[str, float]:
    """``joint_nll_2`` and ``joint_nll_10``: :func:`joint_nll` at τ = 2 and 10, each from a generator seeded ``seed``.

    Args:
        member_probs: per-member probabilities (M, N, C), N >= 2.
        targets: true classes (N,), int64.
        num_batches: the number of sampled batches per τ.
        seed: the seed of the batch sampler (the same anchors for every method compared on one set).
        balanced: use each anchor exactly τ/2 times.
    """
    return {
        f"joint_nll_{tau}": joint_nll(member_probs, targets, tau, num_batches, torch.Generator().manual_seed(seed), balanced)
        for tau in JOINT_TAUS
    }
