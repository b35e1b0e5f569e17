"""Deep Ensembles of sizes 1..K assembled from a study's saved predictions, temperature-scaled, at no training cost.

The pool: every SingleModel run of the study (one independently trained network each, ``predictions/<set>.npz`` of
``test --save_predictions true``). When the study has fewer single runs than its DeepEnsemble rows' M, the
DeepEnsemble runs' members join the pool: each was trained from its own initialisation, so it is one more
independent network. A Deep Ensemble of size k averages the member probabilities of k networks of the pool; for
each size we take every subset of the pool when there are at most MAX_SUBSETS, else MAX_SUBSETS distinct subsets
drawn once with a fixed seed, and average their TS-NLL. Each subset's temperature is fitted on the saved
validation split (``predictions/val_split.npz``) as ``test --calibration temperature`` fits it (one T shared by
the members, minimising the validation NLL of the averaged probabilities: metrics/calibration.py), then applied
to each test set. A row's own TS-NLL (:func:`run_ts_nll`) is fitted the same way on its run's validation split.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from ensemble_lab.metrics.calibration import ensemble_nll, fit_temperature, log_probs
from ensemble_lab.runs.results import VAL_SPLIT

#: subsets averaged per size at most (all of them when the pool has no more)
MAX_SUBSETS = 10
#: the largest Deep Ensemble assembled (the pool's size when smaller)
MAX_SIZE = 16
#: the seed of the subsets drawn when there are more than MAX_SUBSETS
SUBSET_SEED = 0
#: the method classes whose runs make the pool
SINGLE, DEEP_ENSEMBLE = "SingleModel", "DeepEnsemble"


class Row(Protocol):
    """What a report row gives: its method class, number of members and run directories."""

    @property
    def method(self) -> str | None: ...  # noqa: D102

    @property
    def num_members(self) -> int | None: ...  # noqa: D102

    @property
    def runs(self) -> Sequence[Path]: ...  # noqa: D102


@dataclass(frozen=True)
class Curve:
    """The TS-NLL of Deep Ensembles of sizes 1..len(ts_nll) on one test set (mean and std over the subsets of each size)."""

    ts_nll: tuple[float, ...]
    std: tuple[float, ...]
    pool: int  # networks in the pool
    with_de_members: bool  # the pool took the DeepEnsemble runs' members (too few single runs)


def ts_nll(member_log_probs: Tensor, targets: Tensor, temperature: Tensor) -> float:
    """NLL of the averaged probabilities of ``member_log_probs`` (M, N, C) after dividing by ``temperature``."""
    return float(ensemble_nll(member_log_probs, targets, temperature))


#: a pool as a cache key: its networks (run, member index) in order
PoolKey = tuple[tuple[Path, int], ...]


class Saved:
    """The runs' saved predictions, fitted temperatures and Deep-Ensemble curves, each read or computed once.

    One per report call: the Deep-Ensemble columns (report/de_table.py) fill it and the figure (report/de_figure.py)
    reads the same temperatures, curves and TS-NLLs back, so the two never disagree and nothing is fitted twice.
    """

    def __init__(self) -> None:
        """An empty cache."""
        self._predictions: dict[tuple[Path, str], tuple[Tensor, Tensor] | None] = {}
        self._temperatures: dict[Path, Tensor | None] = {}
        self._run_ts_nll: dict[tuple[Path, str], float | None] = {}
        #: per pool: each assembled subset's temperature, fitted on the validation split (every set uses it)
        self.subset_temperatures: dict[PoolKey, dict[tuple[int, ...], Tensor]] = {}
        #: per pool and set: its curve, or why it has none
        self.curves: dict[tuple[PoolKey, str], Curve | str] = {}

    def predictions(self, run: Path, set_name: str) -> tuple[Tensor, Tensor] | None:
        """Member log probabilities (M, N, C), float64, and targets (N,) of <run>/predictions/<set_name>.npz (the saved
        logits' log-softmax where saved, else the log of the probabilities); None without a readable file."""
        key = (Path(run), set_name)
        if key not in self._predictions:
            self._predictions[key] = _read(key[0] / "predictions" / f"{set_name}.npz")
        return self._predictions[key]

    def temperature(self, run: Path) -> Tensor | None:
        """The shared temperature of a run's members fitted on its saved validation split; None without one."""
        if run not in self._temperatures:
            val = self.predictions(run, VAL_SPLIT)
            self._temperatures[run] = None if val is None else fit_temperature(*val)
        return self._temperatures[run]

    def run_ts_nll(self, run: Path, set_name: str) -> float | None:
        """A run's TS-NLL on ``set_name`` (its temperature fitted on its own validation split); None without the predictions."""
        key = (Path(run), set_name)
        if key not in self._run_ts_nll:
            temperature, test = self.temperature(run), self.predictions(run, set_name)
            self._run_ts_nll[key] = None if temperature is None or test is None else ts_nll(test[0], test[1], temperature)
        return self._run_ts_nll[key]


def _read(path: Path) -> tuple[Tensor, Tensor] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as saved:
            targets = torch.from_numpy(saved["targets"]).long()
            if "member_logits" in saved.files:
                return torch.log_softmax(torch.from_numpy(saved["member_logits"]).double(), dim=-1), targets
            return log_probs(torch.from_numpy(saved["member_probs"])), targets
    except (OSError, ValueError, KeyError):
        return None


def pool_of(rows: Sequence[Row]) -> tuple[list[tuple[Path, int]], bool]:
    """The networks (run, member index) of the pool of one datamodule's rows, and whether DeepEnsemble members joined it."""
    singles = [(run, 0) for r in rows if r.method == SINGLE for run in r.runs]
    deep = [r for r in rows if r.method == DEEP_ENSEMBLE and r.num_members]
    wanted = max((r.num_members or 0 for r in deep), default=0)
    if len(singles) >= wanted:
        return singles, False
    return singles + [(run, m) for r in deep for run in r.runs for m in range(r.num_members or 0)], True


def subsets(pool: int, size: int, limit: int = MAX_SUBSETS, seed: int = SUBSET_SEED) -> list[tuple[int, ...]]:
    """Every subset of ``size`` of ``range(pool)`` when there are at most ``limit``, else ``limit`` distinct ones
    drawn with ``seed`` (the same for the same arguments)."""
    if math.comb(pool, size) <= limit:
        return list(combinations(range(pool), size))
    generator, chosen = np.random.default_rng([seed, pool, size]), set[tuple[int, ...]]()
    while len(chosen) < limit:
        chosen.add(tuple(sorted(generator.choice(pool, size, replace=False).tolist())))
    return sorted(chosen)


def _members(saved: Saved, pool: Sequence[tuple[Path, int]], set_name: str) -> tuple[Tensor, Tensor] | str:
    """The pool's log probabilities (P, N, C) and targets of one set, or why there are none."""
    loaded = [saved.predictions(run, set_name) for run, _ in pool]
    if any(item is None for item in loaded):
        return f"a pool run saved no predictions/{set_name}.npz"
    found = [item for item in loaded if item is not None]
    if any(lp.shape[1:] != found[0][0].shape[1:] or not torch.equal(t, found[0][1]) for lp, t in found):
        return f"the pool runs' {set_name} predictions are not of the same samples"
    return torch.stack([found[k][0][m] for k, (_, m) in enumerate(pool)]), found[0][1]  # (P, N, C)


def de_curves(rows: Sequence[Row], set_names: Sequence[str], saved: Saved | None = None) -> tuple[dict[str, Curve], dict[str, str]]:
    """The Deep-Ensemble curve of each set of ``set_names`` from one datamodule's rows, and why a set has none.

    Args:
        rows: the rows of one datamodule (their method, M and runs); the pool is :func:`pool_of` them.
        set_names: the test sets.
        saved: the cache of predictions to read through (a new one by default).

    Returns:
        ({set: Curve}, {set: reason}): every set lands in one of the two.
    """
    saved = saved or Saved()
    pool, with_de = pool_of(rows)
    if not pool:
        return {}, dict.fromkeys(set_names, "no SingleModel or DeepEnsemble runs to assemble Deep Ensembles from")
    key = tuple(pool)
    found = {name: saved.curves.get((key, name)) or _curve(saved, pool, with_de, name) for name in set_names}
    saved.curves.update({(key, name): found[name] for name in set_names})
    return {n: c for n, c in found.items() if isinstance(c, Curve)}, {n: c for n, c in found.items() if isinstance(c, str)}


def _curve(saved: Saved, pool: Sequence[tuple[Path, int]], with_de: bool, name: str) -> Curve | str:
    """The curve of set ``name`` from ``pool``, or why there is none; the subsets' temperatures fitted once per pool."""
    key = tuple(pool)
    if key not in saved.subset_temperatures:
        val = _members(saved, pool, VAL_SPLIT)
        if isinstance(val, str):
            return val + " (test with --save_predictions true)"
        drawn = [s for k in range(1, min(len(pool), MAX_SIZE) + 1) for s in subsets(len(pool), k)]
        saved.subset_temperatures[key] = {s: fit_temperature(val[0][list(s)], val[1]) for s in drawn}  # every set uses it
    temperature = saved.subset_temperatures[key]
    test = _members(saved, pool, name)
    if isinstance(test, str):
        return test
    by_size: dict[int, list[float]] = {}
    for s, t in temperature.items():
        by_size.setdefault(len(s), []).append(ts_nll(test[0][list(s)], test[1], t))
    mean = tuple(float(np.mean(v)) for v in by_size.values())
    std = tuple(float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in by_size.values())
    return Curve(mean, std, len(pool), with_de)
