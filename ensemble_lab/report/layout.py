"""The report's table layout: which tables, which columns, and what each cell says beside its value.

A :class:`Table` is a list of columns, each a (set, metric) pair, with one row per group that has any of them.
The default layout is one table per test set, a weight-space and a cost table; ``--metrics`` keeps the
chosen columns; ``--preset paper`` the paper's columns per role; ``--preset single_basin`` one table per id set.
A cell is ``mean ± std`` over the row's runs, with † when Welch's t-test over seeds finds it different from the
baseline row's, ‡ when a paired bootstrap over test samples does (a row or its baseline has a single run); a
table's footnotes explain only the marks its cells can carry. The best value of a ranked column (the metric
registry's direction) is bold in LaTeX. The renderings are report/tables.py (Markdown, CSV, JSON) and
report/latex.py.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from ensemble_lab.metrics.registry import direction
from ensemble_lab.report.groups import CALIBRATED, COST, WEIGHTS, Group, Stat, row_name

#: the mark of a significant cell, per test: two tests of different things (seeds, test samples) get two marks
MARKS = {"welch": "†", "bootstrap": "‡"}


@dataclass(frozen=True)
class Column:
    """One column: ``metric`` of the set (or WEIGHTS / COST) ``source``, headed ``header``."""

    source: str
    metric: str
    header: str


@dataclass(frozen=True)
class Table:
    """A titled table: its columns, and the role of its set (None for weight space, cost and mixed tables)."""

    title: str
    columns: tuple[Column, ...]
    role: str | None = None


def table_layout(groups: Sequence[Group], preset: str | None = None, metrics: Sequence[str] | None = None) -> list[Table]:
    """The tables of the report: the default layout, the columns ``metrics`` chose (build_report kept only those), or a preset's."""
    names = list(dict.fromkeys(n for g in groups for n in g.stats if n not in (WEIGHTS, COST)))
    if preset == "single_basin":
        return [_single_basin(groups, name) for name in names if _role(groups, name) == "id" and not name.endswith(CALIBRATED.format(""))]
    tables = []
    for name in names + ([WEIGHTS, COST] if preset is None else []):
        members = [g for g in groups if name in g.stats]
        if not members:
            continue
        # no all-blank columns (e.g. CUDA's peak memory in a CPU study)
        keys = [k for k in members[0].stats[name] if any(g.stats[name].get(k, Stat(None, None, 0)).n for g in members)]
        role = None if name in (WEIGHTS, COST) else _role(groups, name)
        if keys:
            tables.append(Table(name + (f" ({role})" if role else ""), tuple(Column(name, k, k) for k in keys), role))
    return tables


def _role(groups: Sequence[Group], name: str) -> str | None:
    return next((g.roles[name] for g in groups if name in g.roles), None)


def _single_basin(groups: Sequence[Group], name: str) -> Table:
    """id acc, nll, ece, ece after temperature scaling, mi, disagreement and the mean loss barrier (raw, aligned) of set ``name``."""
    calibrated = CALIBRATED.format(name)
    wanted = [Column(name, m, m) for m in ("acc", "nll", "ece")] + [Column(calibrated, "ece", "ece +T")]
    wanted += [Column(name, m, m) for m in ("mi", "disagreement")]
    wanted += [Column(WEIGHTS, m, m) for m in ("barrier_loss_mean", "aligned_barrier_loss_mean")]
    present = [c for c in wanted if any(cell_stat(g, c).n for g in groups)]
    return Table(f"{name}: single basin", tuple(present), "id")


def cell_stat(group: Group, column: Column) -> Stat:
    """The row's statistic of ``column`` (an empty one where it has none)."""
    return group.stats.get(column.source, {}).get(column.metric) or Stat(None, None, 0)


def table_rows(groups: Sequence[Group], table: Table) -> list[Group]:
    """The groups that have any of ``table``'s sets: its rows."""
    return [g for g in groups if any(column.source in g.stats for column in table.columns)]


def cell_mark(group: Group, column: Column) -> str:
    """The cell's mark: † or ‡ when it differs significantly from the baseline (by the test that mark stands for), else ""."""
    comparison = group.significance.get(column.source, {}).get(column.metric)
    return MARKS.get(comparison.test or "", "") if comparison is not None and comparison.significant else ""


def best_rows(rows: Sequence[Group], column: Column, digits: int) -> set[int]:
    """Indices of the rows with the best shown mean of ``column`` (ties all bold); none for unranked metrics."""
    sign = direction(column.metric)
    means = [(k, round(s.mean, digits)) for k, g in enumerate(rows) if (s := cell_stat(g, column)).mean is not None]
    if not sign or len(means) < 2:
        return set()
    best = max(sign * v for _, v in means)
    return {k for k, v in means if sign * v == best}


def footnotes(rows: Sequence[Group], table: Table) -> list[str]:
    """One line per mark the cells of ``table`` can carry (a test was made for them): what it means, which test
    made it and how it was corrected; none for a table whose cells were not tested (cost, a set the baseline lacks)."""
    tested = [(g, c) for g in rows for column in table.columns
              if (c := g.significance.get(column.source, {}).get(column.metric)) is not None and c.test in MARKS]  # fmt: skip
    sources = {column.source for column in table.columns}
    family = (
        "each row's tests of run-level metrics" if sources == {WEIGHTS} else "each row's tests on this set" if len(sources) == 1 else
        "each row's tests per set (run-level metrics apart)"
    )  # fmt: skip
    lines = []
    for test, mark in MARKS.items():
        used = [(g, c) for g, c in tested if c.test == test]
        if not used:
            continue
        bases = " / ".join(dict.fromkeys(row_name(g.baseline) for g, _ in used if g.baseline is not None))
        first = used[0][1]
        alpha = first.alpha if first.alpha is not None else 0.05
        corrected = f"after Holm's correction over {family}" if first.correction == "holm" else "uncorrected for multiple comparisons"
        how = (
            "Welch's t-test over seeds (two-sided, unequal variances)"
            if test == "welch"
            else f"a paired bootstrap over test samples ({first.resamples} resamples; a single-run row or baseline, so no "
            f"seed-to-seed variation; {100 * (1 - alpha):g}% percentile intervals in the CSV's ci_low, ci_high)"
        )
        lines.append(f"{mark} differs from {bases}: {how}, p < {alpha:g} {corrected}.")
    return lines
