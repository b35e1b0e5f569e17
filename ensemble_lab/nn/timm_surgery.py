"""Module surgery: a network built elsewhere (a timm model) made into a method's ensemble, layer by layer.

Every ``nn.Linear`` becomes the factory's linear (``attention_linear`` inside an attention module,
``head_linear`` for the model's classifier), every ``nn.Conv2d`` its conv2d, every
``nn.LayerNorm`` / ``nn.BatchNorm2d`` its norm and every ``nn.Dropout`` with p > 0 its dropout. The new
layer gets the old one's weights: its shared weight is the old weight, every member's bias and norm
affine a copy of the old one. Where the factory's layer is the plain torch class, the old module stays
(a shared layer). The network then runs on member-major rows (M·B, ...) like the library's own backbones.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.factories import LayerFactory

#: the plain torch classes a factory's role may return: the old module is then kept as it is
PLAIN = (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.BatchNorm2d, nn.Dropout)


def _in_attention(name: str, classes: dict[str, str]) -> bool:
    """Whether module ``name`` sits inside a module whose class name ends with "Attention" (timm's
    Attention, WindowAttention, ...)."""
    parts = name.split(".")
    return any(classes.get(".".join(parts[:i]), "").endswith("Attention") for i in range(1, len(parts)))


@torch.no_grad()
def _copy(new: nn.Module, old: nn.Module) -> None:
    """Every tensor of ``old`` into ``new``'s of the same name: as it is where the shapes agree, repeated for
    every member where ``new`` holds (M, ...) rows of it."""
    theirs = dict(old.named_parameters(recurse=False)) | dict(old.named_buffers(recurse=False))
    for key, tensor in list(new.named_parameters(recurse=False)) + list(new.named_buffers(recurse=False)):
        source = theirs.get(key)
        if source is None:
            continue
        tensor.copy_(source if tensor.shape == source.shape else source.unsqueeze(0).expand_as(tensor))  # (M, ...) rows


def _conv_arguments(name: str, conv: nn.Conv2d) -> dict[str, Any]:
    """The arguments a member conv takes, or a ConfigError for what it cannot express."""
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ConfigError(
            f"layer {name} ({conv}) has groups, dilation or padding a member convolution does not take; "
            "this method cannot convert the model (DeepEnsemble can)"
        )
    return dict(stride=conv.stride, padding=conv.padding, bias=conv.bias is not None)


def _replacement(
    name: str, module: nn.Module, layers: LayerFactory, classes: dict[str, str], classifier: nn.Module | None
) -> nn.Module | None:
    """The factory's layer for ``module`` (weights not yet copied), or None where it has none."""
    build: Callable[..., nn.Module]
    if isinstance(module, nn.Linear):
        build = (
            layers.head_linear if module is classifier else layers.attention_linear if _in_attention(name, classes) else layers.linear
        )
        return build(module.in_features, module.out_features, bias=module.bias is not None)
    if type(module) is nn.Conv2d:
        return layers.conv2d(module.in_channels, module.out_channels, module.kernel_size, **_conv_arguments(name, module))
    if isinstance(module, nn.Dropout) and module.p > 0:
        return layers.dropout(module.p)
    if type(module) is nn.BatchNorm2d or isinstance(module, nn.LayerNorm) and type(module).__name__ == "LayerNorm":
        return _norm(name, module, layers)  # timm's own LayerNorm is nn.LayerNorm's forward; LayerNorm2d is another
    if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)) and _members_own_norms(layers):  # never leave it shared unasked
        raise ConfigError(
            f"layer {name} is timm's {type(module).__name__}, a norm that per-member norms cannot convert: "
            "pass --model.norm shared (every member then shares it)"
        )
    if isinstance(module, nn.Conv2d):  # a subclass (same padding, weight standardisation): its forward is not a conv's
        raise ConfigError(f"layer {name} is timm's {type(module).__name__}, which this method cannot convert (DeepEnsemble can)")
    return None


def _members_own_norms(layers: LayerFactory) -> bool:
    """Whether ``layers`` gives each member its own norms (``--model.norm per_member``), not one shared norm."""
    return layers.norm2d is not nn.BatchNorm2d or layers.layer_norm is not nn.LayerNorm


def _norm(name: str, module: nn.Module, layers: LayerFactory) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d):
        if not (module.affine and module.track_running_stats):
            raise ConfigError(f"layer {name} ({module}) has no affine or running statistics; pass --model.norm shared")
        norm = layers.norm2d(module.num_features)
        for setting in ("eps", "momentum"):  # timm's, where the factory's norm has them
            if hasattr(norm, setting):
                setattr(norm, setting, getattr(module, setting))
        return norm
    assert isinstance(module, nn.LayerNorm)
    if len(module.normalized_shape) != 1 or not module.elementwise_affine or module.bias is None:
        raise ConfigError(f"layer {name} ({module}) is not a LayerNorm over the last dim with scale and shift; pass --model.norm shared")
    return layers.layer_norm(module.normalized_shape[0], eps=module.eps)


def convert_layers(model: nn.Module, layers: LayerFactory, classifier: nn.Module | None = None) -> nn.Module:
    """``model`` with every linear, conv, norm and dropout replaced by ``layers``' (see the module docstring),
    in place; ``classifier``: the model's output layer (``head_linear``). Returns ``model``."""
    classes = {name: type(module).__name__ for name, module in model.named_modules()}
    for name, module in list(model.named_modules()):
        new = _replacement(name, module, layers, classes, classifier)
        if new is None or type(new) in PLAIN and isinstance(module, type(new)):
            continue  # the plain layer: the old one, shared by the members, stays
        _copy(new, module)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return model
