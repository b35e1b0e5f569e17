"""The report's rows: results.json files read and grouped into mean ± std over seeds.

Every results.json below the given paths is one run. Runs are grouped by (run label, num_members,
datamodule), the label being ``--run_name`` (a study's method name) or else the method's class; runs of
one group whose resolved configurations differ in anything but the seed are never pooled: the group is
split into one row per configuration, and the report says what differs. For each test set a table has one
row per group and a column per metric, ``mean ± std`` over the group's runs. std is the sample standard
deviation (ddof = 1); with a single run it is left out (printed as the mean alone, null in CSV / JSON). A
metric some runs lack is averaged over the runs that have it and marked ``(n=k)``; one no run has is a blank cell.

This module groups the runs (report/reading.py finds and reads their results.json); the comparison against a baseline row is report/significance.py,
the tables (Markdown, LaTeX, CSV) and their files report/tables.py, the command report/main.py.
"""

import json
import math
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensemble_lab.config.run_config import (
    OUTPUT,
    REPLICATE,
    UNCOMPARED,
    comparable,
    flatten,
    without_defaults,
)
from ensemble_lab.errors import ConfigError, EnsembleLabError
from ensemble_lab.figures.style import METHOD_ORDER
from ensemble_lab.metrics.registry import DE_COLUMNS, lookup, names
from ensemble_lab.report.architecture import architecture, architecture_order
from ensemble_lab.report.columns import ID_COLUMNS, OOD_COLUMNS
from ensemble_lab.report.fill import fill_from_predictions
from ensemble_lab.report.reading import find_results, load_results, read_document
from ensemble_lab.runs.legacy_keys import translate_flat

if TYPE_CHECKING:  # torch only when comparing (report/significance.py)
    from ensemble_lab.metrics.significance import Comparison

#: the loss / error barriers between members, read from <run>/connectivity.json when present (``ensemble-lab connectivity``):
#: the chord barrier (Entezari et al.), then Frankle et al.'s (above the mean of the ends); docs/connectivity.md
BARRIER_COLUMNS = names(group="connectivity")
#: top-level (per run, not per set) metrics, shown in the "weight space" table: the weight cosines' means, the barriers
RUN_COLUMNS = names(place="run", per_member=False)
#: results.json's "cost" keys (metrics/cost.py)
COST_KEYS = names(place="cost")
WEIGHTS = "weight space"
#: the per-run cost table (metrics/cost.py): parameters, FLOPs per test image, test images/s, peak memory
COST = "cost"
#: the default reference of the significance tests: the single model
DEFAULT_BASELINE = "SingleModel"


@dataclass(frozen=True)
class Stat:
    """Mean, sample std (None with fewer than 2 values) and number of runs of one metric (and the runs' values)."""

    mean: float | None
    std: float | None
    n: int
    values: tuple[float, ...] = field(default=(), compare=False, repr=False)

    def as_json(self) -> dict[str, Any]:
        """``{"mean", "std", "n"}`` as report.json writes it."""
        return {"mean": self.mean, "std": self.std, "n": self.n}


@dataclass
class Group:
    """Runs sharing (label, num_members, datamodule) and one configuration, and their per-set statistics."""

    method: str | None
    num_members: int | None
    datamodule: str | None
    label: str | None = None  # --run_name (a study's method name), else the method's class name
    variant: str | None = None  # what sets this row apart from others of its label, when a label was split
    config: dict[str, Any] | None = None  # the options its runs were trained with (flat; seeds and placement aside)
    runs: list[Path] = field(default_factory=list)
    seeds: list[Any] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)  # set name -> role
    stats: dict[str, dict[str, Stat]] = field(default_factory=dict)  # set name (or WEIGHTS) -> metric -> Stat
    significance: "dict[str, dict[str, Comparison]]" = field(default_factory=dict)  # set name -> metric -> against the baseline
    baseline: "Group | None" = field(default=None, repr=False)  # the row it was compared with (None: none, or it is the baseline)
    blank: dict[str, dict[str, str]] = field(default_factory=dict)  # set -> metric -> why its cell shows "–" (report/de_table.py)
    notes: dict[str, list[str]] = field(default_factory=dict)  # set -> lines under the tables of its columns (report/de_table.py)
    architecture: str | None = None  # its runs' backbone (report/architecture.py); None: unrecorded


def _number(value: Any) -> float | None:
    """A finite float, or None for missing, null, NaN and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def summarize(values: Sequence[float]) -> Stat:
    """Mean and sample std (ddof = 1) of ``values``; std is None for fewer than two."""
    if not values:
        return Stat(None, None, 0)
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values), tuple(values))


def build_report(
    paths: Sequence[str | Path], sets: Sequence[str] | None = None, columns: Sequence[str] | Mapping[str, Sequence[str]] | None = None
) -> list[Group]:
    """Group the runs below ``paths`` and compute mean ± std of every reported metric.

    Args:
        paths: run directories, study directories or results.json files.
        sets: test sets to keep, in this order; None keeps all, in the order they first appear.
        columns: the metrics to summarize: None for the default columns of each role (ID_COLUMNS, OOD_COLUMNS);
            a list of keys of results.json (``--metrics``: set metrics go to every set, label-based ones not to ood
            sets; run-level ones to the weight-space / cost tables; an unknown key raises ConfigError naming
            the available ones); or a mapping role -> metrics (a preset; roles it leaves out keep their defaults).

    Returns:
        Groups in the paper's row order (per datamodule and architecture: single, MC Dropout, Deep Ensemble, BatchEnsemble, others).
    """
    files = find_results(paths)
    runs = [(f, d) for f in files if (d := load_results(f)) is not None]
    if not runs:
        where = ", ".join(str(p) for p in paths)
        raise EnsembleLabError(f"no readable results.json found below {where}; run `ensemble-lab fit` or `ensemble-lab test` first")
    # a run tested before the extended metrics existed gets them from its saved predictions (report/fill.py)
    runs = [(f, {**fill_from_predictions(f, d), **read_connectivity(f.parent)}) for f, d in runs]
    per_role, run_columns, cost_columns = _chosen_columns(columns, [d for _, d in runs])
    groups: dict[tuple, Group] = {}
    docs: dict[tuple, list[dict[str, Any]]] = {}
    for (key, variant), members in split_by_config(runs).items():
        method, num_members, datamodule, label = key
        group = Group(method, num_members, datamodule, label, variant, _trained_as(members[0][1]), architecture=architecture(members[0][1]))
        groups[(key, variant)] = group
        docs[(key, variant)] = [doc for _, doc in members]
        for path, doc in members:
            _add_run(groups[(key, variant)], path, doc)
    available = list(dict.fromkeys(n for g in groups.values() for n in g.roles))

    if sets:
        unknown = [s for s in sets if s not in available]
        if unknown:
            raise EnsembleLabError(f"--sets {' '.join(unknown)}: no such test set in the runs; available: {', '.join(available)}")
    for key, group in groups.items():
        seeds = [s for s in group.seeds if s is not None]
        if len(set(seeds)) < len(seeds):
            print(
                f"ensemble-lab report: warning: {group.label} (M={group.num_members}, {group.datamodule}) has several runs "
                f"with the same seed: {sorted(seeds)}",
                file=sys.stderr,
            )
        for name in sets or available:
            if name not in group.roles:
                continue
            found = [run_sets(d).get(name) for d in docs[key]]
            per_run = [m for m in found if isinstance(m, dict)]
            role = group.roles[name]
            chosen = per_role[role] if role in per_role else (OOD_COLUMNS if role == "ood" else ID_COLUMNS)
            group.stats[name] = {c: summarize([v for m in per_run if (v := _number(m.get(c))) is not None]) for c in chosen}
        group.stats[WEIGHTS] = {c: summarize([v for d in docs[key] if (v := _number(d.get(c))) is not None]) for c in run_columns}
        costs: list[dict[str, Any]] = [c for d in docs[key] if isinstance(c := d.get("cost"), dict)]
        if costs and cost_columns:  # runs tested before costs were measured have none
            group.stats[COST] = {c: summarize([v for d in costs if (v := _number(d.get(c))) is not None]) for c in cost_columns}
    absent = {c for c in BARRIER_COLUMNS if columns is None and not any(g.stats[WEIGHTS][c].n for g in groups.values())}
    if absent:
        for group in groups.values():  # no run's connectivity.json has it (or no run has one): no blank barrier column
            group.stats[WEIGHTS] = {c: s for c, s in group.stats[WEIGHTS].items() if c not in absent}
    for group in groups.values():
        if not group.stats[WEIGHTS]:
            del group.stats[WEIGHTS]
    order: dict[str | None, int] = {name: i for i, name in enumerate(METHOD_ORDER)}
    return sorted(
        groups.values(),
        key=lambda g: (str(g.datamodule), architecture_order(g.architecture), order.get(g.method, len(order)), str(g.method), natural(str(g.label)), g.num_members or 0, str(g.variant)),
    )


def natural(text: str) -> tuple[str | int, ...]:
    """Sort key that reads digit runs as numbers: be_w16 < be_w256 < be_w1024 (not be_w1024 < be_w16)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _chosen_columns(
    columns: Sequence[str] | Mapping[str, Sequence[str]] | None, docs: Sequence[dict[str, Any]]
) -> tuple[dict[str, Sequence[str]], Sequence[str], Sequence[str]]:  # (per role, run-level, cost)
    """(role -> set metrics, run-level metrics, cost metrics) of ``columns`` (see build_report)."""
    if columns is None:
        return {}, RUN_COLUMNS, COST_KEYS
    if isinstance(columns, Mapping):
        return dict(columns), RUN_COLUMNS, COST_KEYS
    in_sets = list(
        dict.fromkeys(k for d in docs for m in run_sets(d).values() if isinstance(m, dict) for k, v in m.items() if _number(v) is not None)
    )
    in_sets += [c for c in DE_COLUMNS if c not in in_sets]  # the report computes them (report/de_table.py)
    unknown = [c for c in columns if c not in in_sets and c not in RUN_COLUMNS and c not in COST_KEYS]
    if unknown:
        raise ConfigError(
            f"--metrics {' '.join(unknown)}: no such metric in the runs' results.json; available: {', '.join(in_sets)} "
            f"(per set), {', '.join(RUN_COLUMNS)} (per run), {', '.join(COST_KEYS)} (cost)"
        )
    chosen = [c for c in columns if c in in_sets]
    per_role: dict[str, Sequence[str]] = {"id": chosen, "shift": chosen, "ood": [c for c in chosen if not lookup(c).needs_labels]}
    return per_role, [c for c in columns if c in RUN_COLUMNS], [c for c in columns if c in COST_KEYS]


def read_connectivity(run: Path) -> dict[str, float | None]:
    """The BARRIER_COLUMNS of <run>/connectivity.json ({} without one, or an unreadable one)."""
    path = run / "connectivity.json"
    if not path.exists():
        return {}
    document = read_document(path)
    return {} if document is None else {k: _number(document.get(k)) for k in BARRIER_COLUMNS}


def _add_run(group: Group, path: Path, doc: dict[str, Any]) -> None:
    group.runs.append(path.parent)
    group.seeds.append(doc.get("seed"))
    for name, metrics in run_sets(doc).items():
        if isinstance(metrics, dict):
            group.roles.setdefault(name, str(metrics.get("role", "id")))


#: how a calibrated set is named in the report (``test --calibration``: results.json's sets_calibrated)
CALIBRATED = "{} +T"


def run_sets(doc: dict[str, Any]) -> dict[str, Any]:
    """A run's test sets by name: ``sets``, then each of ``sets_calibrated`` as "<name> +T"."""
    sets = dict(doc.get("sets") or {})
    calibrated = doc.get("sets_calibrated") or {}
    return {**sets, **{CALIBRATED.format(name): metrics for name, metrics in calibrated.items()}}


def _compared(config: Any) -> dict[str, Any]:
    if not isinstance(config, dict):
        return {}
    return without_defaults(comparable(translate_flat(flatten(config)), UNCOMPARED | REPLICATE | OUTPUT))  # older option names: today's


#: a training option's key beside the tested one, where a later test ran with another value ("dropout (fit)")
FIT_KEY = "{} (fit)"


def _tested_and_trained(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The options a run's test ran with (``config``) and those it was trained with (``fit_config``, recorded
    where a test changed some; else the same), seeds and placement aside. Runs written before results.json
    kept a config: {}; before it kept fit_config: ``config`` for both (a test then recorded the training's)."""
    tested = _compared(doc.get("config"))
    fit = doc.get("fit_config")
    return tested, (_compared(fit) if isinstance(fit, dict) else tested)


def _trained_as(doc: dict[str, Any]) -> dict[str, Any]:
    """What a run's results come from: the options its test ran with, and "<key> (fit)" for each option
    whose training value differs (its value in training; "(default)": the class's default)."""
    tested, trained = _tested_and_trained(doc)
    changed = sorted(k for k in set(tested) | set(trained) if tested.get(k, _UNSET) != trained.get(k, _UNSET))
    return {**tested, **{FIT_KEY.format(k): trained.get(k, "(default)") for k in changed}}


def split_by_config(runs: Sequence[tuple[Path, dict[str, Any]]]) -> dict[tuple, list[tuple[Path, dict[str, Any]]]]:
    """Runs by ((method, M, datamodule, label), variant): one variant per distinct configuration of a label.

    Runs are pooled only where the options their tests ran with and the options they were trained with
    both agree. A label with runs that differ is split (variant = the differing options' values, a training
    value as "<key> (fit)" where it is not the tested one) and a line on stderr says so; a label with one
    configuration has variant None.
    """
    by_label: dict[tuple, list[tuple[Path, dict[str, Any]]]] = {}
    for path, doc in runs:
        label = doc.get("run_name") or doc.get("method")
        by_label.setdefault((doc.get("method"), doc.get("num_members"), doc.get("datamodule"), label), []).append((path, doc))
    result: dict[tuple, list[tuple[Path, dict[str, Any]]]] = {}
    for key, members in by_label.items():
        # every training value beside its tested one: two runs tested alike but trained differently differ here
        configs = [{**t, **{FIT_KEY.format(k): v for k, v in f.items()}} for t, f in map(_tested_and_trained, (d for _, d in members))]
        distinct = [dict(c) for c in {json.dumps(c, sort_keys=True, default=str): c for c in configs}.values()]
        if len(distinct) == 1:
            result[(key, None)] = members
            continue
        keys = sorted({k for c in distinct for k in c if any(c.get(k, _UNSET) != d.get(k, _UNSET) for d in distinct)})
        # a training value is named only where some run's differs from its tested one (else the tested key says it)
        keys = [k for k in keys if not any(k == FIT_KEY.format(t) and all(c.get(k, _UNSET) == c.get(t, _UNSET) for c in distinct) for t in keys)]
        for config in distinct:
            variant = ", ".join(f"{k.removeprefix('model.init_args.')}={config.get(k, '(default)')}" for k in keys[:3])
            variant += f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            result[(key, variant)] = [m for m, c in zip(members, configs) if c == config]
        print(
            f"ensemble-lab report: {key[3]} (M={key[1]}, {key[2]}): {len(members)} runs were trained or tested differently "
            f"and are not pooled: {len(distinct)} rows, by {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}",
            file=sys.stderr,
        )
    return result


_UNSET = object()


def row_name(group: Group) -> str:
    """The row's label, with its method when the label is another name, and its variant when split."""
    name = str(group.label) if group.label in (None, group.method) else f"{group.label} ({group.method})"
    return name + (f" [{group.variant}]" if group.variant else "")


def format_stat(stat: Stat | None, runs: int, digits: int = 3) -> str:
    """``mean ± std`` (``mean`` alone for one run; blank when no run has it; ``(n=k)`` when k < runs)."""
    if stat is None or stat.mean is None:
        return ""
    shown = (lambda v: f"{v:,.0f}") if abs(stat.mean) >= 1000 else (lambda v: f"{v:.{digits}f}")  # counts, rates
    text = shown(stat.mean) + ("" if stat.std is None else f" ± {shown(stat.std)}")
    return text if stat.n == runs else f"{text} (n={stat.n})"


def run_groups(groups: Sequence[Group]) -> list[Any]:
    """The rows as the figures take them (report/figure_rows.RunGroup), in table order."""
    from ensemble_lab.report.figure_rows import RunGroup  # matplotlib only when drawing

    return [
        RunGroup(
            row_name(g) + ("" if g.num_members is None else f", M={g.num_members}"),
            str(g.label or g.method),
            g.method,
            g.num_members,
            tuple(g.runs),
            g.config or None,  # {}: its runs recorded no configuration
        )
        for g in groups
    ]
