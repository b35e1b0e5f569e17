"""Old option keys, translated in this one place: command-line flags, config files, a run's config.yaml,
checkpoint hyper-parameters, results.json ``config`` records and study records.

Before options belonged to their objects, every model took the backbone options and the distillation and
repulsion options flat (``--model.hidden_sizes``, ``--model.teacher``, ``--model.repulsion 0.1``, ...).
``LEGACY_MODEL_KEYS`` says where each now lives. A record written before that change (it holds every
flat key) also gets the defaults of two options of the last release that it predates: Masksembles
without ``mask_placement`` placed its masks at ``block_outputs``; a PackedEnsemble with γ > 1 without
``min_channels_per_group`` / ``group_block_entry`` grouped every conv (0 and true).
"""

from collections.abc import Mapping, Sequence
from typing import Any

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.backbone_options import plain
from ensemble_lab.nn.backbones import BACKBONES, backbone_options, class_path, options_class

#: the backbones whose options used to sit flat on every model; one added since (vit) never had flat options
FLAT_BACKBONES = ("mlp", "resnet18", "wide_resnet")
#: backbone options that used to sit flat on every model
BACKBONE_KEYS = tuple(dict.fromkeys(o for name in FLAT_BACKBONES for o in BACKBONES[name].options))
#: old model option (``--model.<old>``) -> where it lives now (``--model.<new>``)
LEGACY_MODEL_KEYS: dict[str, str] = {
    "teacher": "distillation.teacher",
    "distill_temperature": "distillation.temperature",
    "distill_alpha": "distillation.alpha",
    "distill_match": "distillation.match",
    "repulsion": "repulsion.strength",
    "repulsion_bandwidth": "repulsion.bandwidth",
    **{option: f"backbone.{option}" for option in BACKBONE_KEYS},
}
#: keys every model's record (config.yaml, hyper-parameters) held before this change: a record with all of
#: them was written by ensemble-lab then, not by hand
RECORDED_BEFORE = ("distill_temperature", "distill_alpha", "distill_match", "repulsion_bandwidth")
#: options a record of the last release lacks, with the value its run was trained with: method -> (when, {key: value})
PREDATED: dict[str, list[tuple[Any, dict[str, Any]]]] = {
    "Masksembles": [(lambda args: True, {"mask_placement": "block_outputs"})],
    "PackedEnsemble": [(lambda args: int(args.get("gamma", 1) or 1) > 1, {"min_channels_per_group": 0, "group_block_entry": True})],
}
MODEL_PREFIX = "model.init_args."
#: the old distillation options' defaults: without a teacher they had to keep them
OLD_DISTILL_DEFAULTS: dict[str, Any] = {"temperature": 4.0, "alpha": 0.5, "match": "mean"}


def _backbone_record(backbone: Any, given: Mapping[str, Any]) -> Any:
    """The new ``backbone`` value from an old record's backbone name and its flat options (those it owns,
    None read as the default); a backbone already in the new form, or unknown, is returned as it is."""
    if not isinstance(backbone, str):
        return backbone
    try:
        name = options_class(backbone).name
    except ConfigError:
        return backbone  # unknown: the model refuses it with the list of backbones
    # another backbone's option is refused, unless at its default (records of early releases hold them all)
    init_args = {k: plain(v) for k, v in backbone_options(name, **given).items()}
    return {"class_path": class_path(BACKBONES[name].options_class), "init_args": init_args}


def translate_model_args(args: Mapping[str, Any], method: str | None = None, strict: bool = False) -> tuple[dict[str, Any], list[str]]:
    """A model's options (``init_args`` of a config, or checkpoint hyper-parameters) with old keys in their new
    places, and the old keys found. ``method``: the class name (or path) the options belong to.

    A short backbone name becomes its options object's ``{"class_path", "init_args"}`` with every option at its
    value or default, so that an old and a new record of one network compare equal. Distillation options
    without a teacher are a ConfigError when ``strict`` (options a user gives), else kept as they are (a
    record is read, never refused).
    """
    new = dict(args)
    found = [key for key in LEGACY_MODEL_KEYS if key in new]
    recorded = all(key in new for key in RECORDED_BEFORE)
    # distillation: no teacher means off (the other options then held their defaults)
    teacher = new.pop("teacher", None)
    distill = {k.removeprefix("distill_"): new.pop(k) for k in ("distill_temperature", "distill_alpha", "distill_match") if k in new}
    changed = [f"distill_{k}" for k, v in distill.items() if v != OLD_DISTILL_DEFAULTS[k]]
    if teacher is None and changed and "distillation" not in new:  # no ensemble-lab record has them: the user's
        if strict:
            raise ConfigError(f"--model.{changed[0]} applies only when distilling; pass --model.distillation.teacher <checkpoint> or drop it")
        new.update({f"distill_{k}": v for k, v in distill.items()})
    elif "teacher" in found or distill:
        new.setdefault("distillation", None if teacher is None else {"teacher": teacher, **distill})
    # repulsion: a number (the old λ; 0: off) is the strength
    bandwidth = new.pop("repulsion_bandwidth", None)
    strength = new.get("repulsion")
    if isinstance(strength, (int, float)) and not isinstance(strength, bool):
        new["repulsion"] = None if strength == 0 else {"strength": strength, **({} if bandwidth is None else {"bandwidth": bandwidth})}
    else:
        found = [key for key in found if key != "repulsion"]  # already the new form
        if bandwidth is not None and strength is None and "repulsion" not in new:
            new["repulsion"] = None
    # the backbone: its own options under it
    given = {k: new.pop(k) for k in BACKBONE_KEYS if k in new}
    if "backbone" in new or given:
        backbone = new.get("backbone", "mlp" if recorded else None)
        if backbone is None:  # an override file without the backbone: its options go under it
            new["backbone"] = {"init_args": {k: plain(v) for k, v in given.items() if v is not None}}
        else:
            new["backbone"] = _backbone_record(backbone, given)
    if recorded and method is not None:
        for when, defaults in PREDATED.get(method.rsplit(".", 1)[-1], []):
            if when(new):
                for key, value in defaults.items():
                    new.setdefault(key, value)
    return new, found


def predated_options(hparams: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The options of ``PREDATED`` a checkpoint's hyper-parameters lack, at the values their run was trained with.

    Unlike a config file (a missing option takes today's default), a checkpoint's record holds every option its
    release had: one it lacks was added since, and the run was trained as that release behaved. ``method``: the
    class name (or path) the record belongs to.
    """
    translated, _ = translate_model_args(hparams, method)
    missing: dict[str, Any] = {}
    for when, defaults in PREDATED.get(method.rsplit(".", 1)[-1], []):
        if when(translated):
            missing.update({key: value for key, value in defaults.items() if key not in hparams})
    return missing


def translate_config(config: Any) -> Any:
    """A (sub)command's configuration (config.yaml, a config file) with its model's old keys translated."""
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        return config
    model = dict(config["model"])
    if isinstance(model.get("init_args"), Mapping):
        model["init_args"], _ = translate_model_args(model["init_args"], model.get("class_path"))
    elif "class_path" not in model:  # a plain mapping of the model's options
        model, _ = translate_model_args(model)
    return {**config, "model": model}


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}.{key}").items()}
    return {prefix: value}


def translate_flat(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A flat ``dotted.key -> value`` configuration (results.json ``config``, a study record) with old model keys
    translated, as the flat form of :func:`translate_config`'s result."""
    top = {k.removeprefix(MODEL_PREFIX): v for k, v in flat.items() if k.startswith(MODEL_PREFIX) and "." not in k.removeprefix(MODEL_PREFIX)}
    if not any(key in top for key in LEGACY_MODEL_KEYS) and not isinstance(top.get("backbone"), str):
        return dict(flat)
    new, _ = translate_model_args(top, flat.get("model.class_path"))
    kept = {k: v for k, v in flat.items() if not (k.startswith(MODEL_PREFIX) and k.removeprefix(MODEL_PREFIX) in top)}
    for key, value in new.items():
        kept.update(_flat(value, MODEL_PREFIX + key))
    return kept


#: the flags old command lines spell a model option with
_FLAG_PREFIXES = ("--model.init_args.", "--model.")


def _split(arg: str) -> tuple[str, str | None]:
    flag, sep, value = arg.partition("=")
    return flag, value if sep else None


def _is_null(value: str) -> bool:
    return value.strip().lower() in ("null", "none", "~", "")


def translate_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """A command line with old model flags in their new spelling, and one note per old flag naming the new one.

    ``--model.backbone mlp`` (a short name) becomes the options class, so ``--model.backbone.<option>`` can follow;
    an old backbone option given as null (the default) is dropped; ``--model.repulsion 0`` is ``null`` (off).
    """
    args, notes, out = list(argv), [], []
    selection: list[str] = []  # --model.backbone <class>: before any backbone option
    first_option: int | None = None
    i = 0
    while i < len(args):
        flag, value = _split(args[i])
        takes_next = value is None and i + 1 < len(args) and not args[i + 1].startswith("--")
        if value is None and takes_next:
            value = args[i + 1]
        step = 2 if takes_next else 1
        old = next((flag.removeprefix(p) for p in _FLAG_PREFIXES if flag.startswith(p)), None)
        if old == "backbone" and value is not None:
            entry = BACKBONES.get(value.strip())
            selection = [f"--model.backbone={class_path(entry.options_class) if entry else value}"]
            if first_option is None:
                out += selection
                selection = []
            i += step
            continue
        if old not in LEGACY_MODEL_KEYS or value is None:
            out += args[i : i + step]
            i += step
            continue
        new = LEGACY_MODEL_KEYS[old]
        if old == "repulsion":
            try:
                number = float(value)
            except ValueError:  # the new --model.repulsion <options object / null>
                out += args[i : i + step]
                i += step
                continue
            new_arg = "--model.repulsion=null" if number == 0 else f"--model.{new}={value}"
        elif old in BACKBONE_KEYS and _is_null(value):
            new_arg = ""  # None was the backbone's default: nothing to set
        else:
            new_arg = f"--model.{new}={value}"
        notes.append(f"{flag} is deprecated (it still works): use --model.{new}")
        if old in BACKBONE_KEYS and first_option is None:
            first_option = len(out)
        out += [new_arg] if new_arg else []
        i += step
    if selection and first_option is not None:  # the backbone was chosen after its options: choose it first
        out[first_option:first_option] = selection
    return out, notes
