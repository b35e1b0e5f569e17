"""A repulsive function-space term: members are pushed apart in what they predict on the same images.

loss = (the method's loss) + λ · mean over member pairs i < j and rows b of k(p_i(b), p_j(b)), with the RBF
kernel k(p, q) = exp(−‖p − q‖² / (2σ²)) on the members' softmax probabilities. k is 1 for identical predictions
and falls as two members disagree, so the term rewards diversity; σ sets how far apart counts as apart (squared
distances of probability vectors lie in [0, 2]). The authors' MNIST sweep tried such a kernel on member softmax
outputs; here it is an option of every method whose members all see the same training images
(``--model.repulsion.strength``, ``objectives.RepulsionOptions``).
"""

import torch
from torch import Tensor

from ensemble_lab.errors import ConfigError

#: σ of the kernel: at 0.5, two members that swap a confident prediction (‖p − q‖² ≈ 2) give k ≈ 0.02
DEFAULT_BANDWIDTH = 0.5


def repulsion_term(logits: Tensor, bandwidth: float) -> Tensor:
    """Mean RBF kernel between the members' probabilities on the same rows (a scalar in (0, 1]).

    Args:
        logits: training logits (M, B, C), M >= 2, every member on the same B images.
        bandwidth: σ > 0.
    """
    m = logits.shape[0]
    probs = logits.float().softmax(-1)  # (M, B, C)
    first, second = torch.triu_indices(m, m, offset=1, device=logits.device)  # (P,) pairs i < j
    distance = (probs[first] - probs[second]).pow(2).sum(-1)  # (P, B): ‖p_i − p_j‖²
    return torch.exp(-distance / (2.0 * bandwidth**2)).mean()


def add_repulsion(method_name: str, logits: Tensor, targets: Tensor, loss: Tensor, strength: float, bandwidth: float) -> tuple[Tensor, Tensor]:
    """(loss + λ · kernel, kernel); a ConfigError when the members did not all see the same images.

    Args:
        method_name: names the method in the error.
        logits: the method's training logits (M, B', C).
        targets: its training targets: (B',) when every member saw the batch, (M, B') when each saw its own images.
        loss: the method's training loss on them.
        strength: λ > 0.
        bandwidth: σ > 0.
    """
    if targets.dim() != 1 or logits.shape[0] < 2:
        raise ConfigError(
            f"--model.repulsion compares members on the same images, but {method_name} trains "
            + ("one member per step" if logits.shape[0] < 2 else "each member on its own images")
            + " (BatchEnsemble: keep --model.train_batch tile)"
        )
    kernel = repulsion_term(logits, bandwidth)
    return loss + strength * kernel, kernel
