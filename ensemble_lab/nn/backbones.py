"""Registry of backbones: short name -> its options class (``MLPOptions``, ``ResNet18Options``,
``WideResNetOptions``, ``ViTOptions``, ``TimmOptions``, each beside its builder) and the options it owns, with their defaults.

A backbone brings its own options object (``--model.backbone mlp --model.backbone.hidden_sizes [64,32]``);
``backbone_from`` turns what a config or a checkpoint records into one. ``build_backbone`` fills in the defaults of options left out (or None) and
refuses an option that belongs to another backbone instead of ignoring it. A backbone also says how
to change its widths (``resized_options``), for methods whose members are narrower or wider networks, and what its
depth and width are (``backbone_dimensions``), so that a report tells a depth sweep from a width sweep. The builders check the
values themselves (mlp: positive hidden sizes; resnet18: a positive width; wide_resnet: a depth
of 6n + 4 and a positive widen factor; vit: its options object, when made).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.backbone_options import BackboneOptions, Resize, options_of
from ensemble_lab.nn.factories import LayerFactory
from ensemble_lab.nn.mlp import MLPOptions
from ensemble_lab.nn.resnet import ResNet18Options
from ensemble_lab.nn.timm_backbone import TimmOptions, timm_from
from ensemble_lab.nn.vit import ViTOptions
from ensemble_lab.nn.wide_resnet import WideResNetOptions

__all__ = ["BACKBONES", "Backbone", "BackboneOptions", "Resize", "backbone_from", "build_backbone"]


@dataclass(frozen=True)
class Backbone:
    """A backbone's options class and the options it takes, with their defaults."""

    #: its options object: ``--model.backbone <this class>``
    options_class: type[BackboneOptions]
    #: the backbone's own options (``--model.backbone.<name>``) and their defaults
    options: Mapping[str, Any]
    #: builder keywords only a resize sets (no option): sizes a narrower member scales besides its options
    derived: tuple[str, ...] = ()


def _entry(cls: type[BackboneOptions], derived: tuple[str, ...] = ()) -> tuple[str, Backbone]:
    return cls.name, Backbone(cls, options_of(cls), derived)


#: short name -> the backbone; a new backbone adds its options class here
BACKBONES: dict[str, Backbone] = dict(
    [_entry(MLPOptions), _entry(ResNet18Options), _entry(WideResNetOptions, ("stem_width",)), _entry(ViTOptions), _entry(TimmOptions)]
)


def class_path(cls: type[BackboneOptions]) -> str:
    """The class path config.yaml records for a backbone's options class (as jsonargparse writes it: from
    ``ensemble_lab.nn``, which exports every one)."""
    return cls.class_path()


def options_class(name: str) -> type[BackboneOptions]:
    """The options class named by a short name ("mlp"), a class name ("MLPOptions") or a class path."""
    for short, backbone in BACKBONES.items():
        cls = backbone.options_class
        if name in (short, cls.__name__, class_path(cls), f"{cls.__module__}.{cls.__qualname__}"):
            return cls
    classes = ", ".join(b.options_class.__name__ for b in BACKBONES.values())
    raise ConfigError(f"backbone={name!r} is not known; allowed: {', '.join(BACKBONES)} (or their options classes {classes})")


def backbone_from(value: "BackboneOptions | str | Mapping[str, Any]") -> BackboneOptions:
    """The backbone's options object from what a config, a checkpoint or Python gives: an options object, a
    short name or class path (the defaults), or ``{"class_path": ..., "init_args": {...}}``."""
    if isinstance(value, BackboneOptions):
        return value.options_class()(**value.options())  # its own copy (a signature's default object is shared)
    if isinstance(value, str):
        return timm_from(value) or options_class(value)()  # "timm/<model name>": that timm model
    if isinstance(value, Mapping) and isinstance(value.get("class_path"), str):
        cls = options_class(value["class_path"])
        given = dict(value.get("init_args") or {})
        unknown = sorted(set(given) - set(BACKBONES[cls.name].options))
        if unknown:
            takes = ", ".join(f"--model.backbone.{o}" for o in BACKBONES[cls.name].options)
            raise ConfigError(f"--model.backbone.{unknown[0]} is not an option of the {cls.name} backbone; it takes {takes}")
        return cls(**given)
    raise ConfigError(f"--model.backbone must name a backbone ({', '.join(BACKBONES)}, timm/<model name>), got {value!r}")


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
    takes = ", ".join(f"--model.backbone.{option}" for option in own) or "no options"
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
    return BACKBONES[name].options_class(**resolved).build(layers, input_shape, num_classes, dropout=dropout, **derived)


def resized_options(name: str, options: Mapping[str, Any], resize: Resize, groups: int = 1) -> dict[str, Any]:
    """Backbone ``name``'s resolved ``options`` with every width w replaced by resize(w, multiple), such
    that every layer's channel counts divide by ``groups``; a ConfigError where no width can do that."""
    own = BACKBONES[name].options
    return BACKBONES[name].options_class(**{k: v for k, v in options.items() if k in own}).resized(resize, groups)


def backbone_dimensions(name: str, options: Mapping[str, Any]) -> dict[str, int]:
    """Backbone ``name``'s depth and width (those it has) with ``options``, defaults for options left out or None."""
    own = BACKBONES[name].options if name in BACKBONES else {}
    resolved = backbone_options(name, **{option: options.get(option) for option in own})  # a ConfigError for an unknown name
    return BACKBONES[name].options_class(**resolved).dimensions()
