"""What a run is: its resolved configuration as flat ``dotted.key -> value`` pairs, and how two differ.

``ensemble-lab study`` compares a run's recorded configuration with the one its study file gives
today (an edit of a method's config file counts, not just its path); ``ensemble-lab report`` pools
only runs whose configurations agree in everything but the seed.
"""

import functools
import importlib
import inspect
import json
from collections.abc import Mapping
from typing import Any

#: keys that only place a run (its directory, checkpoint, the files it was read from); never compared
PLACEMENT = frozenset({"config", "ckpt_path", "trainer.logger", "trainer.default_root_dir", "checkpoint.dirpath", "run_name"})
#: what a run shows on the terminal while it runs; never compared
DISPLAY = frozenset({"trainer.enable_progress_bar", "trainer.enable_model_summary", "verbose"})
#: never compared: where a run is and what it prints
UNCOMPARED = PLACEMENT | DISPLAY
#: keys that make runs of one experiment differ by design; report pools over them (a distilled run's
#: teacher is its own seed's run of the teacher method: students of one study row differ in it; so does a
#: spawned run's parent checkpoint; and a tabular run's --data.split: the UCI benchmark reports the mean over its splits)
REPLICATE = frozenset(
    {"seed_everything", "model.init_args.member_checkpoints", "model.init_args.distillation.teacher", "model.init_args.spawn_from", "data.init_args.split"}
)
#: what a run writes to results.json and the report prints, not what it trains
OUTPUT = frozenset({"save_predictions", "figures", "overwrite", "test_after_fit", "eval_sets_every", "calibration", "conformal_alpha"})
#: options only training reads: a later test's value of them changes nothing it computes, so what a run
#: records for them is always what it was trained with
TRAINING_ONLY = frozenset({
    "checkpoint", "early_stopping", "nan_guard", "test_after_fit", "test_checkpoint", "eval_sets_every",
    "model.init_args.optimizer", "model.init_args.lr_scheduler",
    *(f"trainer.{k}" for k in (
        "max_epochs", "min_epochs", "max_steps", "min_steps", "max_time", "limit_train_batches", "limit_val_batches",
        "val_check_interval", "check_val_every_n_epoch", "num_sanity_val_steps", "log_every_n_steps",
        "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm", "overfit_batches",
        "reload_dataloaders_every_n_epochs", "detect_anomaly",
    )),
})  # fmt: skip


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": value}``; lists and scalars are values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def comparable(flat: Mapping[str, Any], ignore: frozenset[str] = UNCOMPARED) -> dict[str, Any]:
    """``flat`` without the keys in ``ignore`` (and anything below them)."""
    return {k: v for k, v in flat.items() if not any(k == i or k.startswith(f"{i}.") for i in ignore)}


def _under(key: str, names: frozenset[str]) -> bool:
    return any(key == n or key.startswith(f"{n}.") for n in names)


def as_tested(trained: Mapping[str, Any], tested: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """What a test of a run really ran with, and what it changed from the run's training.

    ``trained`` and ``tested``: flat resolved configurations (the run's config.yaml, the test's own).
    Returns the tested configuration (every option the test reads at its test value, the training-only
    ones at their training value; placement and display left out, as ``comparable`` does) and
    ``"key: trained -> tested"`` for every option, output options aside, whose value the test changed.
    """
    kept = comparable(trained)
    used = {k: v for k, v in comparable(tested).items() if not _under(k, TRAINING_ONLY)}
    config = {k: used.get(k, v) for k, v in kept.items() if k in used or _under(k, TRAINING_ONLY)}
    config.update({k: v for k, v in used.items() if k not in config})
    return config, differences(comparable(kept, OUTPUT), comparable(config, OUTPUT))


def _shown(value: Any) -> str:
    return "(unset)" if value is _MISSING else json.dumps(value) if not isinstance(value, str) else value


_MISSING = object()
#: what ``option_default`` returns for an option it knows no default of
MISSING = _MISSING


@functools.cache
def _init_defaults(class_path: str) -> dict[str, Any]:
    """{argument: default} of ``class_path``'s ``__init__`` as JSON values; {} if it cannot be imported.

    Follows ``**kwargs`` up the class hierarchy, as the CLI does: a method's options include its base's.
    """
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return {}
    defaults: dict[str, Any] = {}
    for klass in getattr(cls, "__mro__", ()):
        if "__init__" not in vars(klass):
            continue
        try:
            parameters = inspect.signature(vars(klass)["__init__"]).parameters.values()
        except (ValueError, TypeError):
            break
        for p in parameters:
            if p.default is not inspect.Parameter.empty and p.name not in defaults:
                try:
                    defaults[p.name] = json.loads(json.dumps(p.default))  # (1, 8, 8) reads as the [1, 8, 8] a config holds
                except TypeError:
                    pass  # a class or callable default: not a config value
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    return defaults


def option_default(flat: Mapping[str, Any], key: str) -> Any:
    """The default of ``<component>.init_args.<option>`` for the class ``flat`` names there, else ``_MISSING``."""
    component, sep, option = key.partition(".init_args.")
    class_path = flat.get(f"{component}.class_path")
    if not sep or "." in option or not isinstance(class_path, str):
        return _MISSING
    return _init_defaults(class_path).get(option, _MISSING)


def without_defaults(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``flat`` without the ``<component>.init_args.*`` options that hold their class's default.

    Runs recorded before an option existed lack its key; runs recorded after hold its default: both
    were trained alike, and compare equal once defaults are dropped.
    """
    return {k: v for k, v in flat.items() if v != option_default(flat, k)}


def differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every key whose value differs (a missing key reads ``(unset)``), sorted.

    An option one side lacks because it did not exist when that run was recorded counts as unchanged
    when the other side holds its default: the run was trained as the option's default does.
    """
    keys = sorted(set(before) | set(after))
    changed = []
    for k in keys:
        old, new = before.get(k, _MISSING), after.get(k, _MISSING)
        if old == new:
            continue
        if old is _MISSING and new == option_default(after, k) or new is _MISSING and old == option_default(before, k):
            continue
        changed.append(f"{k}: {_shown(old)} -> {_shown(new)}")
    return changed
