"""REPAIR (Jordan et al. 2023): renormalise the hidden units of an interpolated network to undo variance collapse.

Averaging two aligned networks' weights shrinks the spread of each hidden unit's pre-activation (the
interpolated network's units are averages of partly decorrelated units). REPAIR measures, on a fixed set of
training batches, the mean and std of every repaired unit's pre-activation in endpoint a (μ_a, σ_a), in the
aligned endpoint b (μ_b, σ_b) and in the interpolated network (μ_α, σ_α), and rescales the interpolated
layer so the unit has mean (1 − α)·μ_a + α·μ_b and std (1 − α)·σ_a + α·σ_b: the affine map
z ↦ (z − μ_α)·s + μ_target with s = σ_target / σ_α is folded into the layer's weight rows and bias,

    W' = s·W  (row-wise),    b' = s·(b − μ_α) + μ_target.

Layers are repaired one at a time in forward order, each measured with the layers before it already repaired,
so every repaired unit has exactly its target statistics on the batches. A layer whose output goes straight
into a BatchNorm is not repaired: re-estimating that norm's statistics at every point (what connectivity does
with ``--reset_norm``) is the paper's "reset BN" special case of the same correction.
"""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, fx, nn

from ensemble_lab.connectivity.barriers import norm_layers, reestimate_norms
from ensemble_lab.connectivity.permutations import NORMS, LayersAsLeaves, PermutationSpec
from ensemble_lab.evaluation.member_networks import State, interpolate

#: per repaired layer: the (mean, std) of each of its units' pre-activations, float64 (n,) each
UnitStats = dict[str, tuple[Tensor, Tensor]]
#: modules that pass their input through unchanged in eval mode: a norm after them still follows the layer
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d)
#: a unit whose pre-activation varies less than this is left unscaled (its mean is still moved)
_EPS = 1e-12


def _followed_by_norm(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node``'s output reaches a norm layer through pass-through modules only."""
    for user in node.users:
        module = modules.get(str(user.target)) if user.op == "call_module" else None
        if isinstance(module, NORMS) or isinstance(module, _PASS_THROUGH) and _followed_by_norm(user, modules):
            return True
    return False


def repairable_layers(plain: nn.Module, spec: PermutationSpec) -> list[str]:
    """The layers REPAIR corrects, in forward order: every Linear / Conv2d with a bias whose outputs are hidden
    units (a permutation group of ``spec``, so not the logits) and whose output does not go into a BatchNorm."""
    graph = LayersAsLeaves().trace(plain)  # spec was derived from the same trace, so it succeeds
    modules = dict(plain.named_modules())
    hidden = {key for key, axes in spec.axes.items() if any(axis == 0 for axis, _ in axes)}
    layers = []
    for node in graph.nodes:
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None and f"{node.target}.weight" in hidden:
            if not _followed_by_norm(node, modules):
                layers.append(str(node.target))
    return layers


@torch.no_grad()
def unit_stats(plain: nn.Module, state: State, layers: Sequence[str], batches: Sequence[Tensor]) -> UnitStats:
    """The mean and (population) std of every unit of ``layers`` over all ``batches`` (and spatial positions), with
    ``plain`` holding ``state`` (its norms re-estimated on the batches first when it has any)."""
    plain.load_state_dict(state)
    reestimate_norms(plain, batches if norm_layers(plain) else ())
    modules = dict(plain.named_modules())
    sums: dict[str, list[Tensor]] = {}

    def hook(name: str) -> Callable[[nn.Module, object, Tensor], None]:
        """A forward hook adding ``name``'s output to its count, sum and sum of squares per unit."""

        def record(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            units = output.detach().double().movedim(1, -1).reshape(-1, output.shape[1])  # (B·H·W, n)
            totals = sums.setdefault(name, [torch.zeros((), dtype=torch.float64)] + [torch.zeros(output.shape[1], dtype=torch.float64)] * 2)
            totals[0] = totals[0] + units.shape[0]
            totals[1] = totals[1] + units.sum(0).cpu()
            totals[2] = totals[2] + units.square().sum(0).cpu()

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers]
    try:
        for x in batches:
            plain(x)
    finally:
        for handle in handles:
            handle.remove()
    stats = {}
    for name, (count, total, squares) in sums.items():
        mean = total / count
        stats[name] = (mean, (squares / count - mean.square()).clamp_min(0).sqrt())
    return stats


def correct(weight: Tensor, bias: Tensor, now: tuple[Tensor, Tensor], target: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """(weight, bias) of a layer whose units have statistics ``now`` = (μ, σ), folded with z ↦ (z − μ)·σ_target/σ + μ_target."""
    (mean, std), (target_mean, target_std) = now, target
    scale = torch.where(std > _EPS, target_std / std.clamp_min(_EPS), torch.ones_like(std))  # (n,)
    shape = (-1,) + (1,) * (weight.dim() - 1)  # one factor per output row (Linear) or channel (Conv2d)
    new_weight = weight * scale.reshape(shape).to(weight)
    new_bias = (bias.double() - mean.to(bias.device)) * scale.to(bias.device) + target_mean.to(bias.device)
    return new_weight, new_bias.to(bias.dtype)


@torch.no_grad()
def repaired_state(
    plain: nn.Module,
    a: State,
    b: State,
    alpha: float,
    layers: Sequence[str],
    batches: Sequence[Tensor],
    ends: tuple[UnitStats, UnitStats] | None = None,
) -> State:
    """interpolate(a, b, alpha) with every unit of ``layers`` renormalised to (1 − α)·(μ_a, σ_a) + α·(μ_b, σ_b).

    Args:
        plain: the plain network the states belong to (its weights are overwritten).
        a: the state at α = 0 (member i).
        b: the state at α = 1 (member j, aligned to i).
        alpha: the interpolation weight in [0, 1].
        layers: the layers to repair, in forward order (``repairable_layers``).
        batches: preprocessed training batches the statistics are measured on.
        ends: the endpoints' ``unit_stats`` (a's, b's), when already measured for this pair; None: measured here.
    """
    stats_a, stats_b = ends if ends is not None else (unit_stats(plain, a, layers, batches), unit_stats(plain, b, layers, batches))
    state = interpolate(a, b, alpha)
    for name in layers:  # in forward order: each layer measured with the ones before it already repaired
        now = unit_stats(plain, state, [name], batches)[name]
        target = tuple((1 - alpha) * x + alpha * y for x, y in zip(stats_a[name], stats_b[name]))
        weight, bias = correct(state[f"{name}.weight"], state[f"{name}.bias"], now, target)  # type: ignore[arg-type]
        state = {**state, f"{name}.weight": weight, f"{name}.bias": bias}
    return state


def repairer(plain: nn.Module, layers: Sequence[str], batches: Sequence[Tensor]) -> Callable[[State, State], Callable[[float], State]]:
    """(state a, aligned state b) -> (α -> the repaired state at α), the endpoints' statistics measured once per pair."""

    def pair(a: State, b: State) -> Callable[[float], State]:
        ends = (unit_stats(plain, a, layers, batches), unit_stats(plain, b, layers, batches))
        return lambda alpha: repaired_state(plain, a, b, alpha, layers, batches, ends)

    return pair
