"""Weight matching (Ainsworth et al. 2023, "Git Re-Basin"): permute member j's hidden units to line up with member i's.

Member j's network and any permutation of its hidden units (``permutations``: applied to every tensor axis
that produces or reads them) compute the same function, so a barrier between members i and j may be an
artefact of the arbitrary order in which each happened to learn its units. Weight matching picks, for every
permutation group g, the permutation P_g maximising

    Σ over tensors W of  ⟨W_i, P W_j⟩   (each of W_j's axes permuted by its group's P)

one group at a time: with the other groups held, the sum is linear in P_g, a linear assignment problem
over the (n_g, n_g) matrix of inner products between unit a of member i and unit b of member j (summed over
every tensor axis of the group), solved exactly by ``scipy.optimize.linear_sum_assignment``. Sweeps over the
groups in a seeded random order repeat until one changes nothing. Each step can only raise the objective.
Only parameters count in the objective (weights, biases, norm affines); the running statistics of a norm
layer are permuted with their channels but carry no information about the weights.
"""

import inspect
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import cache

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

import ensemble_lab.methods
from ensemble_lab.connectivity.permutations import NotPermutable, PermutationSpec, permutation_spec
from ensemble_lab.errors import ConfigError
from ensemble_lab.evaluation.member_networks import State
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.nn.backbones import BACKBONES
from ensemble_lab.nn.members import member_owned_parameters

#: the --align choices
ALIGNMENTS = ("none", "weight_matching")
#: the small MLP each exported method is probed on (wide enough for every method to build)
_PROBE_MLP = {"backbone": "mlp", "hidden_sizes": [16, 16]}


@dataclass
class Alignment:
    """The result of weight matching: ``perms[g]`` (n_g,) maps unit a of the aligned member to unit perms[g][a]
    of the original; ``objective`` is the matched inner product before the first sweep and after every sweep."""

    perms: dict[str, Tensor]
    objective: list[float] = field(default_factory=list)
    sweeps: int = 0


def permute(state: State, spec: PermutationSpec, perms: dict[str, Tensor]) -> State:
    """``state`` with every group's permutation applied on every axis the spec gives it (other entries as they are)."""
    out = dict(state)
    for key, axes in spec.axes.items():
        value = state[key]
        for axis, group in axes:
            value = value.index_select(axis, perms[group].to(value.device))
        out[key] = value
    return out


def _unit_rows(value: Tensor, axis: int) -> Tensor:
    """``value`` with ``axis`` first and the rest flattened: one row per unit (n, k)."""
    return value.movedim(axis, 0).reshape(value.shape[axis], -1)


def _cost(spec: PermutationSpec, group: str, a: State, b: State, perms: dict[str, Tensor], keys: Collection[str]) -> Tensor:
    """(n, n) inner products between unit r of ``a`` and unit c of ``b`` over the group's tensors, b's other axes permuted."""
    n = spec.sizes[group]
    cost = torch.zeros(n, n, dtype=torch.float64, device=next(iter(a.values())).device)
    for key, axis in spec.groups[group]:
        if key not in keys:
            continue
        other = b[key]
        for other_axis, other_group in spec.axes[key]:
            if other_axis != axis:
                other = other.index_select(other_axis, perms[other_group].to(other.device))
        cost += _unit_rows(a[key], axis) @ _unit_rows(other, axis).T  # (n, n)
    return cost


def objective(a: State, b: State, keys: Collection[str]) -> float:
    """Σ over ``keys`` of ⟨a[key], b[key]⟩, in float64: the quantity weight matching maximises (b already permuted)."""
    return float(sum(torch.sum(a[k].detach().double() * b[k].detach().double()).item() for k in keys))


def weight_matching(
    spec: PermutationSpec, a: State, b: State, keys: Collection[str], max_sweeps: int = 100, seed: int = 0
) -> Alignment:
    """The permutations of ``b``'s units that maximise its inner product with ``a`` over ``keys``, by coordinate descent.

    Args:
        spec: the permutation groups of the network both states belong to.
        a: the state to align to (member i).
        b: the state whose units are permuted (member j).
        keys: the entries that count in the objective (the network's parameters).
        max_sweeps: the most sweeps over all groups (each visits every group once).
        seed: seed of the order the groups are visited in each sweep.
    """
    a, b = ({k: v.detach().to(torch.float64) for k, v in s.items() if k in spec.axes or k in keys} for s in (a, b))  # once
    perms = {g: torch.arange(n) for g, n in spec.sizes.items()}
    names = list(spec.groups)
    result = Alignment(perms, [objective(a, b, keys)])
    generator = torch.Generator().manual_seed(seed)
    tolerance = 1e-12 * max(1.0, abs(result.objective[0]))
    for sweep in range(1, max_sweeps + 1):
        improved = False
        for index in torch.randperm(len(names), generator=generator).tolist():
            group = names[index]
            cost = _cost(spec, group, a, b, perms, keys)
            before = float(cost[torch.arange(len(perms[group]), device=cost.device), perms[group].to(cost.device)].sum())
            _, columns = linear_sum_assignment(cost.cpu().numpy(), maximize=True)  # rows come back in order 0..n-1
            after = float(cost[torch.arange(len(columns), device=cost.device), torch.as_tensor(columns, device=cost.device)].sum())
            if after > before + tolerance:  # else keep the current one: a tie must not undo the last sweep's choice
                perms[group] = torch.as_tensor(columns, dtype=torch.long)
                improved = True
        result.objective.append(objective(a, permute(b, spec, perms), keys))
        result.sweeps = sweep
        if not improved:
            break
    return result


def _passes(method: type[EnsembleModule], **options: object) -> bool:
    """Whether ``method`` built with ``options`` (on the meta device: no memory, no initialisation) passes the check."""
    try:
        with torch.device("meta"):
            model = method(num_members=2, **options)  # type: ignore[arg-type]
        _check(model.network, model.member_network(), method.__name__, "")
    except Exception:  # noqa: BLE001 - a probe: whatever stops a method or backbone from building or aligning counts as "not aligned"
        return False
    return True


@cache
def alignable() -> str:
    """Which runs --align weight_matching takes, for the error that refuses another: found by building every method
    ensemble_lab.methods exports on a small MLP, then every backbone (default options) with the first such method."""
    exported = (getattr(ensemble_lab.methods, name) for name in ensemble_lab.methods.__all__)
    classes = [c for c in exported if inspect.isclass(c) and issubclass(c, EnsembleModule) and c is not EnsembleModule]
    methods = [c for c in classes if _passes(c, **_PROBE_MLP)]
    backbones = [name for name in BACKBONES if methods and _passes(methods[0], backbone=name)]
    names = [c.__name__ for c in methods]
    listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)
    also = " (a DeepEnsemble also when assembled from SingleModel checkpoints)" if "DeepEnsemble" in names else ""
    return f"{listed} with their default options{also}, on the {', '.join(backbones)} backbones"


def _check(network: nn.Module, plain: nn.Module, method: str, takes: str) -> PermutationSpec:
    """check_alignable, its errors ending with ``takes`` (what --align takes)."""
    owned = {id(p) for p in member_owned_parameters(network)}
    shared = [name for name, p in network.named_parameters() if id(p) not in owned]
    if shared:
        raise ConfigError(
            f"--align weight_matching: {method}'s members share weights ({shared[0]}, ...), so permuting one member's units "
            f"would permute the others' too: alignment is meaningless there{takes}"
        )
    try:
        return permutation_spec(plain)
    except NotPermutable as error:
        raise ConfigError(f"--align weight_matching cannot align {method}'s members: {error}{takes}") from None


def check_alignable(network: nn.Module, plain: nn.Module, method: str) -> PermutationSpec:
    """The permutation spec of ``plain`` (one member of ensemble ``network``); a ConfigError, naming the runs
    --align takes, when the members share weights or their network holds a layer that cannot be permuted."""
    try:
        return _check(network, plain, method, "")
    except ConfigError as error:  # the list of what works is probed only when it is needed
        raise ConfigError(f"{error}; it aligns {alignable()}") from None


def align(plain: nn.Module, spec: PermutationSpec, a: State, b: State, seed: int = 0) -> tuple[State, Alignment]:
    """``b`` (a state of ``plain``) with its units permuted to match ``a`` by weight matching, and the alignment found."""
    keys = [name for name, _ in plain.named_parameters() if name in spec.axes]
    alignment = weight_matching(spec, a, b, keys, seed=seed)
    return permute(b, spec, alignment.perms), alignment
