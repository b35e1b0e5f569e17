"""``ensemble-lab report``: the paper's tables (mean ± std over seeds) from results.json files.

Every results.json below the given paths is one run. Runs are grouped by (run label, num_members,
datamodule), the label being ``--run_name`` (a study's method name) or else the method's class; runs of
one group whose resolved configurations differ in anything but the seed are never pooled: the group is
split into one row per configuration, and the report says what differs. For each test set a Markdown table has one row per group and a column per metric,
``mean ± std`` over the group's runs. std is the sample standard deviation (ddof = 1); with a
single run it is left out (printed as the mean alone, null in CSV / JSON). A metric some runs lack
is averaged over the runs that have it and marked ``(n=k)``; one no run has is a blank cell.
"""

import argparse
import csv
import io
import json
import math
import re
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemble_lab.cli.run_config import (
    OUTPUT,
    PLACEMENT,
    REPLICATE,
    comparable,
    flatten,
)
from ensemble_lab.errors import ConfigError, EnsembleLabError
from ensemble_lab.evaluation.cost import COST_KEYS
from ensemble_lab.run_files import atomic_write_bytes

#: columns of id and shift sets, and of ood sets (class-based metrics mean nothing on OOD data)
ID_COLUMNS = ("acc", "nll", "ece", "mi", "disagreement")
OOD_COLUMNS = tuple(f"{m}_{s}" for s in ("msp", "entropy", "mi") for m in ("auroc", "aupr", "fpr95")) + ("mi", "disagreement")
#: top-level (per run, not per set) metrics, shown in the "weight space" table
RUN_COLUMNS = ("weight_cosine_mean", "weight_cosine_stored_mean")
#: row order of the paper's tables; other methods follow alphabetically
METHOD_ORDER = ("SingleModel", "MCDropout", "DeepEnsemble", "BatchEnsemble", "LowRankEnsemble", "PackedEnsemble", "MIMO", "Masksembles")
WEIGHTS = "weight space"
#: the per-run cost table (evaluation/cost.py): parameters, FLOPs per test image, test images/s, peak memory
COST = "cost"


@dataclass(frozen=True)
class Stat:
    """Mean, sample std (None with fewer than 2 values) and number of runs of one metric."""

    mean: float | None
    std: float | None
    n: int


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


def _number(value: Any) -> float | None:
    """A finite float, or None for missing, null, NaN and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def summarize(values: Sequence[float]) -> Stat:
    """Mean and sample std (ddof = 1) of ``values``; std is None for fewer than two."""
    if not values:
        return Stat(None, None, 0)
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


def _load(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        print(f"ensemble-lab report: skipping {path}: {error}", file=sys.stderr)
        return None
    if not isinstance(document, dict):
        print(f"ensemble-lab report: skipping {path}: not a results document", file=sys.stderr)
        return None
    return document


def build_report(paths: Sequence[str | Path], sets: Sequence[str] | None = None) -> list[Group]:
    """Group the runs below ``paths`` and compute mean ± std of every reported metric.

    Args:
        paths: run directories, study directories or results.json files.
        sets: test sets to keep, in this order; None keeps all, in the order they first appear.

    Returns:
        Groups in the paper's row order (per datamodule: single, MC Dropout, Deep Ensemble, BatchEnsemble, others).
    """
    files = find_results(paths)
    runs = [(f, d) for f in files if (d := _load(f)) is not None]
    if not runs:
        where = ", ".join(str(p) for p in paths)
        raise EnsembleLabError(f"no readable results.json found below {where}; run `ensemble-lab fit` or `ensemble-lab test` first")
    groups: dict[tuple, Group] = {}
    docs: dict[tuple, list[dict[str, Any]]] = {}
    for (key, variant), members in split_by_config(runs).items():
        method, num_members, datamodule, label = key
        groups[(key, variant)] = Group(method, num_members, datamodule, label, variant, _trained_as(members[0][1]))
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
            print(f"ensemble-lab report: warning: {group.label} (M={group.num_members}, {group.datamodule}) has several runs with the same seed: {sorted(seeds)}", file=sys.stderr)
        for name in (sets or available):
            if name not in group.roles:
                continue
            found = [run_sets(d).get(name) for d in docs[key]]
            per_run = [m for m in found if isinstance(m, dict)]
            columns = OOD_COLUMNS if group.roles[name] == "ood" else ID_COLUMNS
            group.stats[name] = {c: summarize([v for m in per_run if (v := _number(m.get(c))) is not None]) for c in columns}
        group.stats[WEIGHTS] = {c: summarize([v for d in docs[key] if (v := _number(d.get(c))) is not None]) for c in RUN_COLUMNS}
        costs: list[dict[str, Any]] = [c for d in docs[key] if isinstance(c := d.get("cost"), dict)]
        if costs:  # runs tested before costs were measured have none
            group.stats[COST] = {c: summarize([v for d in costs if (v := _number(d.get(c))) is not None]) for c in COST_KEYS}
    order: dict[str | None, int] = {name: i for i, name in enumerate(METHOD_ORDER)}
    return sorted(
        groups.values(),
        key=lambda g: (str(g.datamodule), order.get(g.method, len(order)), str(g.method), str(g.label), g.num_members or 0, str(g.variant)),
    )


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


def _trained_as(doc: dict[str, Any]) -> dict[str, Any]:
    """What a run was trained with, seeds and placement aside (runs written before results.json kept it: {})."""
    config = doc.get("config")
    return comparable(flatten(config), PLACEMENT | REPLICATE | OUTPUT) if isinstance(config, dict) else {}


def split_by_config(runs: Sequence[tuple[Path, dict[str, Any]]]) -> dict[tuple, list[tuple[Path, dict[str, Any]]]]:
    """Runs by ((method, M, datamodule, label), variant): one variant per distinct configuration of a label.

    A label with runs trained differently is split (variant = the differing options' values) and a line
    on stderr says so; a label with one configuration has variant None.
    """
    by_label: dict[tuple, list[tuple[Path, dict[str, Any]]]] = {}
    for path, doc in runs:
        label = doc.get("run_name") or doc.get("method")
        by_label.setdefault((doc.get("method"), doc.get("num_members"), doc.get("datamodule"), label), []).append((path, doc))
    result: dict[tuple, list[tuple[Path, dict[str, Any]]]] = {}
    for key, members in by_label.items():
        configs = [_trained_as(doc) for _, doc in members]
        distinct = [dict(c) for c in {json.dumps(c, sort_keys=True, default=str): c for c in configs}.values()]
        if len(distinct) == 1:
            result[(key, None)] = members
            continue
        keys = sorted({k for c in distinct for k in c if any(c.get(k, _UNSET) != d.get(k, _UNSET) for d in distinct)})
        for config in distinct:
            variant = ", ".join(f"{k.removeprefix('model.init_args.')}={config.get(k, '(unset)')}" for k in keys[:3])
            variant += f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            result[(key, variant)] = [m for m, c in zip(members, configs) if c == config]
        print(
            f"ensemble-lab report: {key[3]} (M={key[1]}, {key[2]}): {len(members)} runs were trained differently and are "
            f"not pooled: {len(distinct)} rows, by {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}",
            file=sys.stderr,
        )
    return result


_UNSET = object()


def row_differences(groups: Sequence[Group]) -> list[str]:
    """For each method with several rows (labels or variants): the options in which its rows' configurations differ."""
    lines = []
    by_method: dict[str | None, list[Group]] = {}
    for group in groups:
        by_method.setdefault(group.method, []).append(group)
    for method, members in by_method.items():
        configs = {_row_name(g): g.config for g in members if g.config}
        if len(configs) < 2:
            continue
        keys = sorted({k for c in configs.values() for k in c if len({json.dumps(d.get(k), default=str) for d in configs.values()}) > 1})
        for k in keys:
            shown = {name: json.dumps(c.get(k), default=str) for name, c in configs.items()}
            common, count = Counter(shown.values()).most_common(1)[0]
            if count == 1 or len(shown) <= 2:  # no value most rows share: list every row's
                values = "; ".join(f"{name}: {value}" for name, value in shown.items())
            else:  # the rows that set it apart, then what the others have
                values = "; ".join(f"{name}: {value}" for name, value in shown.items() if value != common)
                values += f"; the other {count} rows: {common}"
            lines.append(f"- {method} rows differ in `{k}` ({values})")
    return lines


def _row_name(group: Group) -> str:
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


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def to_markdown(groups: list[Group], digits: int = 3) -> str:
    """One Markdown table per test set (rows = groups) and one for the weight-space metrics."""
    names = list(dict.fromkeys(n for g in groups for n in g.stats if n not in (WEIGHTS, COST))) + [WEIGHTS, COST]
    total = sum(len(g.runs) for g in groups)
    parts = [f"Mean ± sample std over runs (n = runs per row); {total} run{'s' if total != 1 else ''}."]
    for name in names:
        members = [g for g in groups if name in g.stats]
        if not members:
            continue
        role = next((g.roles[name] for g in members if name in g.roles), None)
        columns = list(members[0].stats[name])
        rows = [
            [_row_name(g), str(g.num_members), str(g.datamodule), str(len(g.runs))]
            + [format_stat(g.stats[name].get(c), len(g.runs), digits) for c in columns]
            for g in members
        ]
        title = f"### {name}" + (f" ({role})" if role else "")
        parts.append(title + "\n\n" + _markdown_table(["run", "M", "data", "n", *columns], rows))
    if differences := row_differences(groups):
        parts.append("### options that differ between rows of one method\n\n" + "\n".join(differences))
    if overview := overview_table(groups, names, digits):
        parts.append(overview)
    return "\n\n".join(parts) + "\n"


#: the overview's columns per role: what says how good, how calibrated and how diverse, set by set
OVERVIEW_COLUMNS = {"id": ("acc", "nll", "ece", "mi", "disagreement"), "ood": ("mi", "disagreement", "auroc_mi")}


def overview_table(groups: list[Group], names: list[str], digits: int = 3) -> str | None:
    """Every set in one table (``<set> <metric>`` columns, shift sets as id ones) and both weight cosines;
    None when the report has a single table anyway."""
    if len([n for n in names if n not in (WEIGHTS, COST)]) < 2:
        return None
    columns: list[tuple[str, str]] = []
    for name in names:
        role = next((g.roles[name] for g in groups if name in g.roles), "id")
        metrics = {WEIGHTS: RUN_COLUMNS, COST: ("parameters", "images_per_s")}.get(name) or OVERVIEW_COLUMNS.get(role, OVERVIEW_COLUMNS["id"])
        columns += [(name, m) for m in metrics if any(m in g.stats.get(name, {}) for g in groups)]
    rows = [
        [_row_name(g), str(g.num_members), str(len(g.runs))]
        + [format_stat(g.stats.get(name, {}).get(metric), len(g.runs), digits) for name, metric in columns]
        for g in groups
    ]
    header = ["run", "M", "n", *(metric if name in (WEIGHTS, COST) else f"{name} {metric}" for name, metric in columns)]
    return "### overview: every set in one table\n\n" + _markdown_table(header, rows)


def to_rows(groups: list[Group]) -> list[dict[str, Any]]:
    """Long format: one row per (group, set, metric) with mean, std and n."""
    return [
        {"method": g.method, "run": _row_name(g), "num_members": g.num_members, "datamodule": g.datamodule,
         "set": "" if name in (WEIGHTS, COST) else name, "role": g.roles.get(name, ""),
         "metric": metric, "mean": s.mean, "std": s.std, "n": s.n}  # fmt: skip
        for g in groups
        for name, metrics in g.stats.items()
        for metric, s in metrics.items()
    ]


def write_report(groups: list[Group], out: Path, digits: int = 3) -> list[Path]:
    """Write report.md, report.csv (long format) and report.json (groups with their runs) into ``out``."""
    out = Path(out)
    rows = to_rows(groups)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["method"])
    writer.writeheader()
    writer.writerows(rows)
    document = [
        {"method": g.method, "label": g.label, "variant": g.variant, "num_members": g.num_members,
         "datamodule": g.datamodule, "n": len(g.runs),
         "seeds": g.seeds, "runs": [str(r) for r in g.runs], "roles": g.roles,
         "stats": {name: {k: vars(s) for k, s in m.items()} for name, m in g.stats.items()}}  # fmt: skip
        for g in groups
    ]
    files = {"report.md": to_markdown(groups, digits), "report.csv": buffer.getvalue(), "report.json": json.dumps(document, indent=2)}
    for name, text in files.items():
        atomic_write_bytes(out / name, text.encode())
    written = [out / name for name in files]
    if figure := quality_cost(groups):
        from ensemble_lab.evaluation.figures import save_png  # matplotlib only when drawing

        written.append(save_png(figure, out / "quality_vs_cost.png"))
    return written


def quality_cost(groups: list[Group]) -> Any:
    """The quality-against-cost figure of the groups that measured their cost; None if fewer than two did."""
    measured = [g for g in groups if COST in g.stats]
    if len(measured) < 2:
        return None
    from ensemble_lab.evaluation.figures import quality_cost_figure

    id_set = next((n for g in measured for n, role in g.roles.items() if role == "id"), None)
    ood_set = next((n for g in measured for n, role in g.roles.items() if role == "ood"), None)
    quality = [(id_set, "acc"), (id_set, "nll"), (ood_set, "auroc_msp")]
    points = []
    for g in measured:
        stats = {f"{name} {metric}": g.stats.get(name or "", {}).get(metric) for name, metric in quality}
        stats.update({key: g.stats[COST].get(key) for key in ("images_per_s", "parameters")})
        points.append((_row_name(g), {k: (v.mean, v.std) for k, v in stats.items() if v is not None and v.mean is not None}))
    return quality_cost_figure(points, [f"{name} {metric}" for name, metric in quality if name], ["images_per_s", "parameters"])


def parser() -> argparse.ArgumentParser:
    """Options of ``ensemble-lab report``."""
    p = argparse.ArgumentParser(
        prog="ensemble-lab report",
        description="Mean ± std over seeds of every results.json below PATH..., grouped by (run label, num_members, datamodule) and never pooling runs trained differently, as Markdown tables.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="run or study directories, or results.json files")
    p.add_argument("--out", type=Path, default=None, help="also write report.md, report.csv and report.json into this directory")
    p.add_argument("--sets", nargs="+", default=None, metavar="SET", help="only these test sets, in this order")
    p.add_argument("--digits", type=int, default=3, help="decimals in the tables (default 3)")
    return p


def report_main(argv: Sequence[str]) -> None:
    """``ensemble-lab report PATH... [--out DIR] [--sets SET...] [--digits N]``."""
    cli = parser()
    options = cli.parse_args(list(argv))
    if not 0 <= options.digits <= 12:
        cli.error(f"--digits must be between 0 and 12, got {options.digits}")
    if options.out is not None and options.out.exists() and not options.out.is_dir():
        raise ConfigError(f"--out {options.out} is a file; give a directory (it is created if missing)")
    groups = build_report(options.paths, options.sets)
    print(to_markdown(groups, options.digits))
    if options.out is not None:
        for path in write_report(groups, options.out, options.digits):
            print(f"wrote {path}")
