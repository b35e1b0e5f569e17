"""Calibration after training: temperature scaling fitted on the held-out validation split.

Member m's logits z_m are divided by a temperature T before the softmax, and the ensemble's
prediction is the mean of the scaled members, p̄ = mean_m softmax(z_m / T). T minimises the NLL
of p̄ on the validation split (one T shared by all members, or one per member). Only log
probabilities are needed: log_softmax(z) = z − logsumexp(z), and softmax((z − c) / T) = softmax(z / T).
T changes no member's argmax, so member accuracies and disagreement stay as they are (and a single
model's accuracy); the ensemble's argmax of p̄ can move for M > 1, since the members' scaled
probabilities average differently. ``temperature_warnings`` says when a fitted T should not be trusted
(an extreme T, or too few validation images per fitted T; the bounds below).
"""

import torch
from torch import Tensor

CALIBRATIONS = ("none", "temperature", "temperature_per_member")
#: a fitted temperature outside [T_LOW, T_HIGH] earns a warning. A trained network's T is of order 1
#: (a few for an overconfident one); T < 0.05 multiplies the logits by more than 20 (every prediction nearly one-hot:
#: typically a member with few or no validation errors, whose NLL keeps falling as T -> 0), T > 20
#: divides them by more than 20 (nearly uniform predictions).
T_LOW, T_HIGH = 0.05, 20.0
#: fewer validation images than this per fitted temperature earns a warning. T is fitted on the images
#: the model gets wrong or nearly wrong; at the 90-98% validation accuracy of the shipped benchmarks, 500
#: images hold 10 to 50 errors, fewer leave T decided by a handful of images (Guo et al. fitted one T on
#: 5,000 CIFAR images).
MIN_IMAGES_PER_TEMPERATURE = 500


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


def temperature_warnings(temperature: Tensor | float | list[float], val_images: int) -> list[str]:
    """One line per reason to distrust a fitted temperature: a small validation split, and each extreme T.

    Args:
        temperature: the fitted T, a scalar (one shared T) or one per member (a list, or a tensor of shape (M,)).
        val_images: the number of validation images it was fitted on.
    """
    values = torch.as_tensor(temperature, dtype=torch.float64)
    shared = values.dim() == 0
    values = values.reshape(-1)  # (1,) or (M,)
    lines = []
    per = val_images / values.numel()
    if per < MIN_IMAGES_PER_TEMPERATURE:
        lines.append(
            f"{values.numel()} temperature(s) fitted on {val_images} validation images, {per:.0f} per temperature (under "
            f"{MIN_IMAGES_PER_TEMPERATURE}): T rests on a few misclassified images; raise --data.val_size or fit one shared T"
        )
    for m, t in enumerate(values.tolist()):
        if not T_LOW <= t <= T_HIGH:
            who = "the shared temperature" if shared else f"member {m}'s temperature"
            side = (
                f"below {T_LOW:g} (logits multiplied by over {1 / T_LOW:g}: with few or no validation errors the NLL keeps falling as T -> 0)"
                if t < T_LOW
                else f"above {T_HIGH:g} (logits divided by over {T_HIGH:g}: nearly uniform predictions)"
            )
            lines.append(f"{who} T = {t:.3g} is {side}; compare the calibrated test nll with the uncalibrated one")
    return lines
