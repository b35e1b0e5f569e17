"""Member i of an ensemble as a plain network, and straight lines between members in weight space.

The layers say what their members are: a layer with per-member tensors answers ``member_state(i)``
with the tensors a plain nn.Linear / nn.Conv2d / nn.BatchNorm2d would hold for member i (BatchEnsemble:
W ∘ F_i and b_i; low-rank: W + A_i B_i; Deep Ensemble: slice i). A layer shared by every member
(BatchEnsemble's shared BatchNorm) gives its own state; a network answering ``member_state(i)`` itself (a
Deep Ensemble of a timm model: stacked copies) gives member i's whole state at once. Member i's network is the method's
``member_network()``: the backbone built from plain layers at the members' widths (the SingleModel
network, or a narrower one for Packed-Ensembles), its layers paired with the ensemble's in order of
appearance, as assembling a Deep Ensemble from SingleModel checkpoints pairs them the other way.
Nothing here looks at a method's or a layer's class.
"""


import torch
from torch import Tensor, nn

from ensemble_lab.errors import EnsembleLabError

#: a plain network's full state dict, keyed as ``plain.state_dict()``
State = dict[str, Tensor]


def stateful_layers(network: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module holding tensors of its own (parameters or buffers), in order of appearance."""
    owns = lambda m: next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None
    return [(name, module) for name, module in network.named_modules() if owns(module)]


def own_state(module: nn.Module) -> State:
    """The tensors ``module`` holds itself (not its children's), as its state dict names them (detached)."""
    persistent = [(k, v) for k, v in module.named_buffers(recurse=False) if k not in module._non_persistent_buffers_set]
    return {k: v.detach() for k, v in list(module.named_parameters(recurse=False)) + persistent}


def has_member_layers(network: nn.Module) -> bool:
    """Whether any layer holds per-member tensors (answers ``member_state``); False: the members share every weight."""
    return any(callable(getattr(module, "member_state", None)) for module in network.modules())


def _shapes(state: dict[str, Tensor]) -> str:
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in state.items()) or "no tensors"


def member_state(network: nn.Module, plain: nn.Module, i: int, method: str = "this method") -> State:
    """Member ``i`` of ensemble ``network`` as a full state dict of ``plain`` (detached; ``network``'s device and dtypes).

    Raises an EnsembleLabError naming the first layer that does not pair (another layer count, other
    tensor names or shapes): that method's members are not plain networks of the backbone.
    """
    unsupported = f"connectivity is not supported for {method}: its members are not plain networks of the backbone"
    whole = getattr(network, "member_state", None)
    if callable(whole):  # a network that answers for all its layers at once (stacked copies: nn.stacked)
        given, wanted = whole(i), plain.state_dict()
        if given.keys() != wanted.keys() or any(given[k].shape != wanted[k].shape for k in wanted):
            raise EnsembleLabError(f"{unsupported} (the network gives {_shapes(given)}; one member's plain network holds {_shapes(wanted)})")
        return given
    ours, theirs = stateful_layers(network), stateful_layers(plain)
    if len(ours) != len(theirs):
        raise EnsembleLabError(f"{unsupported} ({len(ours)} layers with tensors, one member's plain network has {len(theirs)})")
    state: State = {}
    for (name, layer), (plain_name, plain_layer) in zip(ours, theirs):
        ask = getattr(layer, "member_state", None)
        given = ask(i) if callable(ask) else own_state(layer)  # shared by every member
        wanted = own_state(plain_layer)
        if given.keys() != wanted.keys() or any(given[k].shape != wanted[k].shape for k in wanted):
            raise EnsembleLabError(
                f"{unsupported} (layer {name} gives {_shapes(given)}; one member's plain {plain_name or 'network'} holds {_shapes(wanted)})"
            )
        state.update({f"{plain_name}.{k}" if plain_name else k: v for k, v in given.items()})
    return state


@torch.no_grad()
def member_states(network: nn.Module, plain: nn.Module, num_members: int, method: str) -> list[State]:
    """The state of every member of ensemble ``network`` as ``plain`` (one member's plain network) holds it;
    ``method`` names it in errors."""
    return [member_state(network, plain, i, method) for i in range(num_members)]


def interpolate(a: State, b: State, t: float) -> State:
    """(1 − t)·a + t·b for floating tensors (exactly a at t = 0 and b at t = 1); integer buffers (num_batches_tracked) from ``a``."""
    return {k: torch.lerp(v, b[k], t) if v.is_floating_point() else v for k, v in a.items()}
