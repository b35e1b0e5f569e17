"""What results.json records of each test set beyond its metrics, from the datamodule's ``test_set_details``.

Each corrupted set's entry gets its ``corrupted`` (the pooled set it belongs to), ``corruption`` and
``severity``, and each OOD set its ``ood_kind`` (near / far), beside its role. Where a datamodule reports
every corruption × severity as its own set (``--data.per_corruption true``), a shift set
``<corrupted>_mean`` (e.g. ``cifar10c_mean``) holds the averages of Google's uncertainty baselines,
``c_acc``, ``c_nll`` and ``c_ece``: plain means over every (corruption, severity) pair evaluated
(metrics/corruptions.py), and ``averaged_sets``, the sets they are the mean of.
"""

from collections.abc import Mapping
from typing import Any

from ensemble_lab.metrics.corruptions import corruption_averages

#: the name of the averages' set of corrupted dataset ``<corrupted>``
MEAN_SET = "{}_mean"


def _details(datamodule: Any) -> Mapping[str, Mapping[str, Any]]:
    return dict(getattr(datamodule, "test_set_details", None) or {})


def add_corruption_averages(datamodule: Any, *groups: dict[str, dict[str, Any]]) -> None:
    """Add ``<corrupted>_mean`` (c_acc, c_nll, c_ece) to each of ``groups`` (``sets``, ``sets_calibrated``) that
    holds the per-corruption sets of ``datamodule``; nothing where it has none."""
    by_corrupted: dict[str, list[str]] = {}
    for name, detail in _details(datamodule).items():
        if "corrupted" in detail:
            by_corrupted.setdefault(str(detail["corrupted"]), []).append(name)
    details = _details(datamodule)
    for sets in groups:
        for corrupted, names in by_corrupted.items():
            present = [n for n in names if n in sets]
            if not present:
                continue
            pairs = {(details[n]["corruption"], details[n]["severity"]): sets[n] for n in present}
            sets[MEAN_SET.format(corrupted)] = {"role": "shift", "corrupted": corrupted, **corruption_averages(pairs), "averaged_sets": present}


def add_set_details(document: dict[str, Any], datamodule: Any) -> None:
    """Write each set's details beside its role in results.json's ``sets`` and ``sets_calibrated``."""
    details = _details(datamodule)
    for key in ("sets", "sets_calibrated"):
        sets = document.get(key) or {}
        for name, metrics in sets.items():
            if name in details:
                role = {"role": metrics["role"]} if "role" in metrics else {}
                sets[name] = {**role, **details[name], **metrics}
