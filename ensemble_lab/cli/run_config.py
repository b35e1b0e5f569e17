"""What a run is: its resolved configuration as flat ``dotted.key -> value`` pairs, and how two differ.

``ensemble-lab study`` compares a run's recorded configuration with the one its study file gives
today (an edit of a method's config file counts, not just its path); ``ensemble-lab report`` pools
only runs whose configurations agree in everything but the seed.
"""

import json
from collections.abc import Mapping
from typing import Any

#: keys that only place a run (its directory, checkpoint, the files it was read from); never compared
PLACEMENT = frozenset({"config", "ckpt_path", "trainer.logger", "trainer.default_root_dir", "checkpoint.dirpath", "run_name"})
#: keys that make runs of one experiment differ by design; report pools over them
REPLICATE = frozenset({"seed_everything", "model.init_args.member_checkpoints"})
#: what a run writes to results.json and the report prints, not what it trains
OUTPUT = frozenset({"save_predictions", "figures", "overwrite", "test_after_fit"})


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


def comparable(flat: Mapping[str, Any], ignore: frozenset[str] = PLACEMENT) -> dict[str, Any]:
    """``flat`` without the keys in ``ignore`` (and anything below them)."""
    return {k: v for k, v in flat.items() if not any(k == i or k.startswith(f"{i}.") for i in ignore)}


def _shown(value: Any) -> str:
    return "(unset)" if value is _MISSING else json.dumps(value) if not isinstance(value, str) else value


_MISSING = object()


def differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every key whose value differs (a missing key reads ``(unset)``), sorted."""
    keys = sorted(set(before) | set(after))
    return [
        f"{k}: {_shown(before.get(k, _MISSING))} -> {_shown(after.get(k, _MISSING))}"
        for k in keys
        if before.get(k, _MISSING) != after.get(k, _MISSING)
    ]
