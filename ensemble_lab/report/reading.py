"""The report's input: every results.json below the given paths (runs set aside by ``study --rerun_changed``
left out), read as JSON and checked to be what ``ensemble-lab test`` writes; a file that is not is skipped
with one line on stderr."""

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ensemble_lab.errors import EnsembleLabError


def find_results(paths: Sequence[str | Path]) -> list[Path]:
    """Every results.json at or below ``paths``, sorted, without duplicates."""
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise EnsembleLabError(f"{path} does not exist; give run or study directories (or results.json files)")
        # below a directory, runs set aside by `study --rerun_changed` (<run>.prev-N/) are not today's
        found.update([path] if path.is_file() else (p for p in path.rglob("results.json") if not _set_aside(p.relative_to(path))))
    return sorted(p.resolve() for p in found if p.name == "results.json")


def _set_aside(relative: Path) -> bool:
    return any(re.search(r"\.prev-\d+$", part) for part in relative.parts[:-1])


def read_document(path: Path) -> dict[str, Any] | None:
    """A JSON file as a mapping, or None (with a line on stderr) for one unreadable, not a mapping or malformed."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        print(f"ensemble-lab report: skipping {path}: {error}", file=sys.stderr)
        return None
    if not isinstance(document, dict):
        print(f"ensemble-lab report: skipping {path}: not a results document", file=sys.stderr)
        return None
    if (why := _malformed(document)) is not None:
        print(f"ensemble-lab report: skipping {path}: {why}", file=sys.stderr)
        return None
    return document


def load_results(path: Path) -> dict[str, Any] | None:
    """A run's results.json, or None (with a line on stderr) for one that is unreadable or not what `test` writes."""
    document = read_document(path)
    if document is None:
        return None
    absent = [key for key in ("method", "sets") if document.get(key) is None]
    if absent:  # another tool's results.json (or a hand-made one) would be a row of blanks
        print(
            f"ensemble-lab report: skipping {path}: not a results document of `ensemble-lab test` ({' and '.join(map(repr, absent))} missing)",
            file=sys.stderr,
        )
        return None
    return document


#: the keys a row is built from, and the type each must have where present (null is allowed)
_SHAPE: dict[str, type] = {
    "method": str, "run_name": str, "datamodule": str, "num_members": int, "seed": int,
    "sets": dict, "sets_calibrated": dict, "cost": dict, "config": dict,
}  # fmt: skip


def _malformed(document: dict[str, Any]) -> str | None:
    """Why a JSON document is not a results.json the report can read (a key of the wrong type), else None."""
    for key, kind in _SHAPE.items():
        value = document.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"its {key!r} is {type(value).__name__} {json.dumps(value, default=str)[:40]}, not a {kind.__name__}"
    for group in ("sets", "sets_calibrated"):
        for name, metrics in (document.get(group) or {}).items():
            if not isinstance(metrics, dict):
                return f"its {group}.{name} is {type(metrics).__name__}, not a mapping of metrics"
    return None
