"""The metrics a run's results.json lacks (it was tested before they existed), computed from its saved predictions.

``ensemble-lab test`` writes the extended metrics of evaluation/extended.py (calibration errors, selective
prediction, the logit OOD scores, joint NLL, conformal sets) for every set. For a run tested earlier with
``--save_predictions true``, the report computes them with the same function from ``predictions/<set>.npz``, so
the numbers equal what a test today writes. What the saved files cannot give stays blank: max logit and energy
need ``member_logits`` (files written before they were saved hold probabilities only), the conformal sets need
the validation split's predictions (``predictions/val_split.npz``), an ood set's scores need the first id set's.
A key results.json has is never replaced.
"""

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ensemble_lab.evaluation.extended import ExtendedInputs
from ensemble_lab.evaluation.sets import set_metrics
from ensemble_lab.runs.results import VAL_SPLIT

#: a key every set of a run tested with the extended metrics has, by role (its absence says the run predates them)
MARKER = {"id": "aurc_msp", "shift": "aurc_msp", "ood": "auroc_variation_ratio"}
#: the conformal α of runs whose results.json does not record one (the default of ``--conformal_alpha``)
DEFAULT_ALPHA = 0.1


def load_predictions(path: Path) -> dict[str, Tensor] | None:
    """The arrays of a saved predictions file (member_probs, targets, member_logits where saved), or None."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as saved:
            return {name: torch.from_numpy(saved[name]) for name in saved.files}
    except (OSError, ValueError):
        return None


def fill_from_predictions(path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` (the results.json at ``path``) with each set's missing extended metrics computed from the run's saved
    predictions; ``doc`` itself when nothing is missing or no predictions were saved."""
    sets = doc.get("sets")
    if not isinstance(sets, dict):
        return doc
    roles = {name: str(m.get("role", "id")) for name, m in sets.items() if isinstance(m, dict)}
    lacking = [name for name, role in roles.items() if MARKER.get(role, "aurc_msp") not in sets[name]]
    folder = path.parent / "predictions"
    if not lacking or not folder.is_dir():
        return doc
    first_id = next((n for n, role in roles.items() if role == "id"), None)
    wanted = lacking + ([first_id] if first_id and any(roles[n] == "ood" for n in lacking) else [])
    loaded = {name: arrays for name in dict.fromkeys(wanted) if (arrays := load_predictions(folder / f"{name}.npz")) is not None}
    loaded = {name: arrays for name, arrays in loaded.items() if "member_probs" in arrays}  # regression saves mean / var: nothing to fill
    # an ood set is scored against the first id set: without its predictions, none of the ood sets is
    usable = {n: a for n, a in loaded.items() if roles[n] != "ood" or (first_id in loaded)}
    if not usable:
        return doc
    collected = {name: (a["member_probs"], a["targets"]) for name, a in usable.items()}
    logits = {name: a["member_logits"] for name, a in usable.items() if "member_logits" in a}
    val = load_predictions(folder / f"{VAL_SPLIT}.npz")
    inputs = ExtendedInputs(
        logits if len(logits) == len(usable) else None,
        (val["member_probs"], val["targets"]) if val is not None else None,
        float(doc.get("conformal_alpha") or (doc.get("config") or {}).get("conformal_alpha") or DEFAULT_ALPHA),
    )
    computed = set_metrics(collected, {n: roles[n] for n in collected}, inputs)
    filled = {
        name: {**metrics, **{k: v for k, v in computed[name].items() if k not in metrics}} if name in lacking and name in computed else metrics
        for name, metrics in sets.items()
    }
    return {**doc, "sets": filled}
