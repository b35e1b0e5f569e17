"""Which axes of a plain network's tensors one permutation of hidden units acts on, read from the network itself.

Permuting the hidden units (channels) of a network, consistently in every tensor that produces or reads them,
leaves its function unchanged. The groups of axes that must be permuted together follow from the dataflow:
the network is traced (``torch.fx``), every tensor on the way gets a *channel space* (its axis 1), and

- a Linear / Conv2d (groups = 1) reads one space with its weight's axis 1 and produces a new one on its
  weight's and bias's axis 0;
- a BatchNorm keeps its input's space and holds it on axis 0 of its weight, bias and running statistics;
- an elementwise step (ReLU, dropout, identity, a mean over spatial axes) keeps its input's space;
- an addition (a residual connection) ties its operands' spaces into one: the residual stream of a stage is
  one group across every block that adds into it, the stem's or the projection shortcut's conv included;
- the network's input and its output (the logits) are fixed: a space tied to either is never permuted.

The spaces left free are the permutation groups. Nothing names a backbone's parameters, so the MLP, the
ResNet-18, the WRN and narrower Packed-Ensembles members (γ = 1) all get their spec from the same rules; a
layer the rules do not know (a grouped conv, an attention block) stops it with an error naming the layer.
"""

import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn import functional as F

from ensemble_lab.errors import EnsembleLabError

#: stateless modules and functions whose output has their input's channels, in the same order
ELEMENTWISE_MODULES = (nn.Identity, nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Dropout2d, nn.Softplus)
ELEMENTWISE_FUNCTIONS = {F.relu, torch.relu, F.gelu, torch.tanh, torch.sigmoid, F.dropout, F.dropout2d}
ELEMENTWISE_METHODS = {"relu", "tanh", "sigmoid", "contiguous"}
#: a norm layer: per-channel affine and running statistics on axis 0, the channel space kept
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class NotPermutable(EnsembleLabError):
    """The network holds a layer the permutation rules do not cover (so its hidden units cannot be matched)."""


@dataclass(frozen=True)
class PermutationSpec:
    """The permutation groups of a plain network, as data.

    ``groups`` maps a group's name (the layer that first produces its units) to the (state key, axis) pairs it
    permutes; ``sizes`` its number of units. ``axes`` is the inverse: per state key, (axis, group) pairs.
    """

    groups: dict[str, list[tuple[str, int]]]
    sizes: dict[str, int]
    axes: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, members in self.groups.items():
            for key, axis in members:
                self.axes.setdefault(key, []).append((axis, name))


class _Spaces:
    """Union-find over channel spaces; each space knows its size, the tensor axes on it and whether it is fixed."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []
        self.name: list[str] = []
        self.axes: list[list[tuple[str, int]]] = []

    def new(self, size: int, name: str, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.fixed.append(fixed)
        self.name.append(name)
        self.axes.append([])
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int, where: str) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        if self.size[a] != self.size[b]:
            raise NotPermutable(f"{where} adds tensors of {self.size[a]} and {self.size[b]} channels")
        first, second = min(a, b), max(a, b)  # the earlier space names the group
        self.parent[second] = first
        self.fixed[first] = self.fixed[first] or self.fixed[second]
        self.axes[first] += self.axes[second]
        return first


def _prefixed(module_name: str, key: str) -> str:
    return f"{module_name}.{key}" if module_name else key


def _module_step(spaces: _Spaces, name: str, module: nn.Module, space: int) -> int:
    """The channel space after ``module`` (called ``name``) reads ``space``; records the axes it holds."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        if getattr(module, "groups", 1) != 1:
            raise NotPermutable(f"layer {name} is grouped ({module}): its units can only move within their group")
        weight, known = module.weight, spaces.size[spaces.find(space)]
        if known and weight.shape[1] != known:  # 0: the input, whose size is the data's
            raise NotPermutable(f"layer {name} reads {weight.shape[1]} channels from a tensor of {known}")
        spaces.axes[spaces.find(space)].append((_prefixed(name, "weight"), 1))
        out = spaces.new(weight.shape[0], name)
        spaces.axes[out] += [(_prefixed(name, key), 0) for key, _ in module.named_parameters() if key in ("weight", "bias")]
        return out
    if isinstance(module, NORMS):
        held = [key for key, value in module.state_dict().items() if value.dim() == 1]  # not the scalar num_batches_tracked
        spaces.axes[spaces.find(space)] += [(_prefixed(name, key), 0) for key in held]
        return space
    if isinstance(module, ELEMENTWISE_MODULES) and not any(True for _ in module.parameters()):
        return space
    if isinstance(module, nn.Flatten):
        return _flatten(spaces, name, space)
    raise NotPermutable(f"layer {name} ({type(module).__name__}) is not one whose units weight matching knows how to permute")


def _flatten(spaces: _Spaces, name: str, space: int) -> int:
    """Flattening keeps a fixed space fixed (the MLP's input image); flattening hidden maps would interleave units."""
    if not spaces.fixed[spaces.find(space)]:
        raise NotPermutable(f"{name} flattens hidden feature maps: their units cannot be permuted as whole channels")
    return space


def _spatial_mean(node: fx.Node) -> bool:
    """Whether ``node`` (a ``.mean`` call) averages only axes after the channel axis 1."""
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    dims = (dims,) if isinstance(dims, int) else dims
    return isinstance(dims, (tuple, list)) and all(isinstance(d, int) and d >= 2 for d in dims)


class LayersAsLeaves(fx.Tracer):
    """Traces through containers and blocks, stopping at torch's modules and at any module with tensors of its own."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        owns = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
        return owns or super().is_leaf_module(m, module_qualified_name)


def permutation_spec(network: nn.Module) -> PermutationSpec:
    """The permutation groups of ``network`` (a plain member network), derived from its traced dataflow.

    Raises NotPermutable naming the first layer or operation the rules do not cover.
    """
    try:  # a module holding tensors of its own is a leaf: the rules judge it whole, never its internals
        graph = LayersAsLeaves().trace(network)
    except Exception as error:  # fx raises many kinds; any means the dataflow cannot be read
        raise NotPermutable(f"{type(network).__name__} cannot be traced ({error})") from None
    modules = dict(network.named_modules())
    spaces, space_of = _Spaces(), dict[fx.Node, int]()
    for node in graph.nodes:
        inputs = [space_of[a] for a in node.all_input_nodes]
        if node.op == "placeholder":
            space_of[node] = spaces.new(0, "input", fixed=True)  # the input's channels are the data's own
        elif node.op == "call_module":
            space_of[node] = _module_step(spaces, str(node.target), modules[str(node.target)], inputs[0])
        elif node.op == "call_function" and node.target in (operator.add, torch.add) and len(inputs) == 2:
            space_of[node] = spaces.union(inputs[0], inputs[1], f"the addition {node.name}")
        elif node.op == "call_function" and node.target in ELEMENTWISE_FUNCTIONS or (
            node.op == "call_method" and node.target in ELEMENTWISE_METHODS
        ):
            space_of[node] = inputs[0]
        elif node.op == "call_method" and node.target == "mean" and _spatial_mean(node):
            space_of[node] = inputs[0]
        elif node.op in ("call_function", "call_method") and "flatten" in str(node.target):
            space_of[node] = _flatten(spaces, node.name, inputs[0])
        elif node.op == "output":
            for s in inputs:
                spaces.fixed[spaces.find(s)] = True  # the logits' order is the classes'
        else:
            raise NotPermutable(f"the operation {node.name} ({node.op} {node.target}) is not one weight matching knows how to permute through")
    roots = sorted({spaces.find(s) for s in range(len(spaces.parent))})
    free = [r for r in roots if not spaces.fixed[r] and spaces.axes[r]]
    for r in free:
        keys = [key for key, _ in spaces.axes[r]]
        if len(keys) != len(set(keys)):  # a layer from a group into itself: matching it is not a linear assignment
            raise NotPermutable(f"a layer maps the units of {spaces.name[r]} onto themselves ({', '.join(sorted(set(k for k in keys if keys.count(k) > 1)))})")
    return PermutationSpec({spaces.name[r]: list(spaces.axes[r]) for r in free}, {spaces.name[r]: spaces.size[r] for r in free})
