"""The architecture of a report row: the backbone its runs were trained with (results.json ``config``).

A report of runs on several backbones (an MLP, a ResNet-18 and a ViT, as configs/study/architectures_digits.yaml)
is a comparison within each architecture: its rows are grouped and ordered by architecture, each architecture
has its own baseline row (report/significance.py) and its own best value in bold (report/layout.py). A
report whose runs all share one backbone (or recorded none) reads as before. A timm backbone is one architecture
per timm model: ``timm/<model name>`` (``timm/resnet18``, ``timm/vit_tiny_patch16_224``), never just "timm".
"""

from collections.abc import Mapping
from typing import Any

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.backbones import BACKBONES, options_class
from ensemble_lab.nn.timm_backbone import PREFIX, TimmOptions
from ensemble_lab.runs.legacy_keys import translate_flat

#: where a run's flat config records its backbone
BACKBONE_KEY = "model.init_args.backbone"


def architecture(doc: Mapping[str, Any]) -> str | None:
    """The short name of a run's backbone ("mlp", "resnet18", "vit", ``timm/<model name>``, ...), read from
    results.json's ``config`` (flat keys, older option names translated); a backbone this version does not know
    keeps its class name; None when the run recorded none."""
    config = doc.get("config")
    if not isinstance(config, Mapping) or not config:
        return None
    try:
        flat = translate_flat(dict(config))  # older option names: today's
    except ConfigError:  # a hand-written record the translation refuses: as it is
        flat = dict(config)
    recorded = flat.get(f"{BACKBONE_KEY}.class_path", flat.get(BACKBONE_KEY))
    if not isinstance(recorded, str) or not recorded:
        return None
    try:
        cls = options_class(recorded)
    except ConfigError:  # not one of ours: its own name, without the module path
        return recorded if "/" in recorded else recorded.rsplit(".", 1)[-1]
    if cls is TimmOptions:  # two timm models are two architectures: the model's name, as the short spelling writes it
        return timm_name(flat.get(f"{BACKBONE_KEY}.init_args.model_name"))
    return cls.name


def timm_name(model_name: Any) -> str:
    """``timm/<model name>`` of a recorded ``--model.backbone.model_name`` (given with or without the prefix);
    none recorded: TimmOptions' default model."""
    if not isinstance(model_name, str) or not model_name:
        model_name = TimmOptions().model_name
    return PREFIX + model_name.removeprefix(PREFIX)


def architecture_order(name: str | None) -> tuple[int, str]:
    """Sort key of an architecture: the backbone registry's order (mlp, resnet18, wide_resnet, vit), then others by name."""
    known = list(BACKBONES)
    return (known.index(name), "") if name in known else (len(known), str(name or ""))
