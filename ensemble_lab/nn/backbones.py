"""Registry of backbones: name -> its builder and the options it owns, with their defaults.

A backbone brings its own options: the builder's keyword arguments named at registration, with the
builder's own defaults. ``build_backbone`` fills in the defaults of options left out (or None) and
refuses an option that belongs to another backbone instead of ignoring it. A backbone also says how
to change its widths (``resized_options``), for methods whose members are narrower or wider networks, and what its
depth and width are (``backbone_dimensions``), so that a report tells a depth sweep from a width sweep. The builders check the
values themselves (mlp: positive hidden sizes; resnet18: a positive width; wide_resnet: a depth
of 6n + 4 and a positive widen factor).
"""

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.factories import LayerFactory
from ensemble_lab.nn.mlp import mlp, mlp_resized
from ensemble_lab.nn.resnet import resnet18, resnet18_resized
from ensemble_lab.nn.vit import vit, vit_dimensions, vit_resized
from ensemble_lab.nn.wide_resnet import wide_resnet, wide_resnet_resized

#: resize(width, multiple) -> the new width, a multiple of ``multiple``
Resize = Callable[[int, int], int]


@dataclass(frozen=True)
class Backbone:
    """How to build one backbone and which options it takes."""

    #: build(layers, input_shape, num_classes, dropout=..., **options) -> network on member-major rows
    build: Callable[..., nn.Module]
    #: the backbone's own options (``--model.<name>``) and their defaults
    options: Mapping[str, Any]
    #: resized(options, resize, groups) -> the options with every width w replaced by resize(w, multiple),
    #: ``multiple`` being what keeps every layer's channel counts divisible by ``groups``
    resized: Callable[[Mapping[str, Any], Resize, int], dict[str, Any]]
    #: dimensions(options) -> {"depth": ..., "width": ...}: the sizes a sweep varies, those the backbone has
    dimensions: Callable[[Mapping[str, Any]], dict[str, int]]
    #: builder keywords only ``resized`` sets (no --model option): sizes a narrower member scales besides its options
    derived: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, build: Callable[..., nn.Module], resized: Callable[..., dict[str, Any]],
        dimensions: Callable[[Mapping[str, Any]], dict[str, int]], *options: str, derived: tuple[str, ...] = (),
    ) -> "Backbone":
        """A builder taking ``options`` (and ``derived``) as keyword arguments; their defaults are the builder's."""
        parameters = inspect.signature(build).parameters
        return cls(build, {name: parameters[name].default for name in options}, resized, dimensions, derived)


BACKBONES: dict[str, Backbone] = {
    # mlp: depth = hidden layers, width = the first one's size (a width sweep scales them all)
    "mlp": Backbone.of(mlp, mlp_resized, lambda o: {"depth": len(o["hidden_sizes"]), "width": o["hidden_sizes"][0]}, "hidden_sizes"),
    "resnet18": Backbone.of(resnet18, resnet18_resized, lambda o: {"width": o["width"]}, "width"),
    "wide_resnet": Backbone.of(
        wide_resnet, wide_resnet_resized, lambda o: {"depth": o["depth"], "width": o["widen_factor"]}, "depth", "widen_factor",
        derived=("stem_width",),
    ),
    "vit": Backbone.of(vit, vit_resized, vit_dimensions, "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "pooling", "attention_dropout"),
}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _owners(option: str) -> list[str]:
    return [name for name, backbone in BACKBONES.items() if option in backbone.options]


def backbone_options(name: str, **given: Any) -> dict[str, Any]:
    """Backbone ``name``'s own options: the values given, defaults for those left out or None.

    Raises a ConfigError for an unknown backbone, and for an option that belongs to another
    backbone or to none. Configs and checkpoints written before options were per backbone record
    both ``hidden_sizes`` [64, 32, 16] and ``width`` 64 whatever the backbone, so another
    backbone's option at its own default counts as not given.
    """
    if name not in BACKBONES:
        raise ConfigError(f"backbone={name!r} is not known; allowed: {', '.join(BACKBONES)}")
    own = BACKBONES[name].options
    takes = ", ".join(f"--model.{option}" for option in own) or "no options"
    for option, value in given.items():
        if value is None or option in own:
            continue
        owners = _owners(option)
        if not owners:
            raise ConfigError(f"--model.{option} is not an option of any backbone; {name} takes {takes}")
        if all(_plain(value) == _plain(BACKBONES[owner].options[option]) for owner in owners):
            continue  # an older run's record of the other backbone's default
        raise ConfigError(
            f"--model.{option} applies to the {' / '.join(owners)} backbone, not {name}; drop it ({name} takes {takes})"
        )
    return {option: default if given.get(option) is None else given[option] for option, default in own.items()}


def build_backbone(
    name: str, layers: LayerFactory, input_shape: Sequence[int], num_classes: int, dropout: float = 0.0, **options: Any
) -> nn.Module:
    """Build backbone ``name`` with the method's layers; options as :func:`backbone_options` resolves them, plus
    the ``derived`` sizes a resize gave (:func:`resized_options`)."""
    derived = {key: options.pop(key) for key in getattr(BACKBONES.get(name), "derived", ()) if key in options}
    resolved = backbone_options(name, **options)
    return BACKBONES[name].build(layers, input_shape, num_classes, dropout=dropout, **resolved, **derived)


def resized_options(name: str, options: Mapping[str, Any], resize: Resize, groups: int = 1) -> dict[str, Any]:
    """Backbone ``name``'s resolved ``options`` with every width w replaced by resize(w, multiple), such
    that every layer's channel counts divide by ``groups``; a ConfigError where no width can do that."""
    return BACKBONES[name].resized(options, resize, groups)


def backbone_dimensions(name: str, options: Mapping[str, Any]) -> dict[str, int]:
    """Backbone ``name``'s depth and width (those it has) with ``options``, defaults for options left out or None."""
    own = BACKBONES[name].options if name in BACKBONES else {}
    resolved = backbone_options(name, **{option: options.get(option) for option in own})  # a ConfigError for an unknown name
    return BACKBONES[name].dimensions(resolved)
