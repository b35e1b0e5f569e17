"""Calibration after training: temperature scaling fitted on the held-out validation split.

Member m's logits z_m are divided by a temperature T before the softmax, and the ensemble's
prediction is the mean of the scaled members, p̄ = mean_m softmax(z_m / T). T minimises the NLL
of p̄ on the validation split (one T shared by all members, or one per member). Only log
probabilities are needed: log_softmax(z) = z − logsumexp(z), and softmax((z − c) / T) = softmax(z / T).
T changes no member's argmax, so member accuracies and disagreement stay as they are (and a single
model's accuracy); the ensemble's argmax of p̄ can move for M > 1, since the members' scaled
probabilities average differently.
"""

import torch
from torch import Tensor

CALIBRATIONS = ("none", "temperature", "temperature_per_member")


def log_probs(member_probs: Tensor) -> Tensor:
    """Member log probabilities from probabilities (M, N, C); exact zeros (softmax underflow) stay −inf-like."""
    return member_probs.double().clamp_min(torch.finfo(torch.float64).tiny).log()


def apply_temperature(member_log_probs: Tensor, temperature: Tensor) -> Tensor:
    """Member probabilities (M, N, C) after dividing every member's logits by ``temperature`` (scalar or (M,))."""
    t = temperature.to(member_log_probs).reshape(-1, 1, 1)  # (1 or M, 1, 1)
    return torch.softmax(member_log_probs / t, dim=-1)


def ensemble_nll(member_log_probs: Tensor, targets: Tensor, temperature: Tensor) -> Tensor:
    """NLL of p̄ = mean_m softmax(z_m / T) at the true classes (mean over samples)."""
    t = temperature.reshape(-1, 1, 1)
    member = torch.log_softmax(member_log_probs / t, dim=-1)  # (M, N, C)
    mean = torch.logsumexp(member, dim=0) - torch.log(torch.tensor(float(member.shape[0]), dtype=member.dtype))  # log p̄
    return -mean.gather(1, targets.view(-1, 1)).mean()


def fit_temperature(member_log_probs: Tensor, targets: Tensor, per_member: bool = False, steps: int = 100) -> Tensor:
    """The temperature(s) minimising the validation NLL of the ensemble, float64: shape () or (M,).

    Args:
        member_log_probs: validation member log probabilities (M, N, C).
        targets: validation classes (N,).
        per_member: one temperature per member instead of one shared by all.
        steps: L-BFGS iterations (over log T, so T stays positive).
    """
    # test runs under inference mode: the fit needs autograd, on ordinary copies of the inputs
    with torch.inference_mode(False), torch.enable_grad():
        lp, y = member_log_probs.detach().double().clone(), targets.clone()
        log_t = torch.zeros(lp.shape[0] if per_member else (), dtype=torch.float64, device=lp.device, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = ensemble_nll(lp, y, log_t.exp())
            loss.backward()
            return loss

        optimizer.step(closure)
        return log_t.detach().exp()
