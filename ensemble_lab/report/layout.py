"""The report's table layout: which tables, which columns, and what each cell says beside its value.

A :class:`Table` is a list of columns, each a (set, metric) pair, with one row per group that has any of them.
The default layout is one table per test set, a weight-space and a cost table; ``--metrics`` keeps the
chosen columns; ``--preset paper`` the paper's columns per role; ``--preset single_basin`` and ``--preset diversity``
one table per id set.
A cell is ``mean ± std`` over the row's runs, with † when Welch's t-test over seeds finds it different from the
baseline row's, ‡ when a paired bootstrap over test samples does (a row or its baseline has a single run); a
table's footnotes explain only the marks its cells can carry. The best value of a ranked column (the metric
registry's direction) is bold in LaTeX. Rows of several backbones are compared and ranked only within their
architecture (report/architecture.py): each has its own baseline row and its own best value, and the tables
lead with the architecture and method columns. The renderings are report/tables.py (Markdown, CSV, JSON) and
report/latex.py.
"""

from collections.abc import Callable, Sequence
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
    if preset in ONE_TABLE:
        return [_one_table(groups, name, preset) for name in names if _role(groups, name) == "id" and not name.endswith(CALIBRATED.format(""))]
    tables = []
    for name in names + ([WEIGHTS, COST] if preset is None else []):
        members = [g for g in groups if name in g.stats]
        if not members:
            continue
        # no all-blank columns (e.g. CUDA's peak memory in a CPU study)
        keys = [k for k in members[0].stats[name] if any(g.stats[name].get(k, Stat(None, None, 0)).n or k in g.blank.get(name, {}) for g in members)]
        role = None if name in (WEIGHTS, COST) else _role(groups, name)
        if keys:
            tables.append(Table(name + (f" ({role})" if role else ""), tuple(Column(name, k, k) for k in keys), role))
    return tables


def _role(groups: Sequence[Group], name: str) -> str | None:
    return next((g.roles[name] for g in groups if name in g.roles), None)


#: the presets of one table per id set: their run-level columns (report/groups.py WEIGHTS) and the tables' title
ONE_TABLE = {
    "single_basin": (("barrier_loss_mean", "aligned_barrier_loss_mean"), "single basin"),
    "diversity": (("weight_cosine_mean",), "diversity"),
}


def _one_table(groups: Sequence[Group], name: str, preset: str) -> Table:
    """id acc, nll, ece, ece after temperature scaling, mi, disagreement and the preset's run-level columns (the mean
    loss barrier, raw and aligned, of single_basin; the effective weights' mean cosine of diversity) of set ``name``."""
    run_level, title = ONE_TABLE[preset]
    calibrated = CALIBRATED.format(name)
    wanted = [Column(name, m, m) for m in ("acc", "nll", "ece")] + [Column(calibrated, "ece", "ece +T")]
    wanted += [Column(name, m, m) for m in ("mi", "disagreement")] + [Column(WEIGHTS, m, m) for m in run_level]
    present = [c for c in wanted if any(cell_stat(g, c).n for g in groups)]
    return Table(f"{name}: {title}", tuple(present), "id")


def architecture_cells(rows: Sequence[Group]) -> Callable[[Group | None], list[str]]:
    """The leading cells of a row (of the header for None): its architecture and method when ``rows`` span several
    architectures (report/architecture.py), none otherwise."""
    if len({g.architecture for g in rows}) < 2:
        return lambda group: []
    return lambda group: ["architecture", "method"] if group is None else [str(group.architecture), str(group.method)]


def cell_stat(group: Group, column: Column) -> Stat:
    """The row's statistic of ``column`` (an empty one where it has none)."""
    return group.stats.get(column.source, {}).get(column.metric) or Stat(None, None, 0)


def blank_mark(group: Group, column: Column) -> str:
    """A dash ("–") for a cell without a value whose row says why (report/de_table.py), else ""."""
    return "–" if not cell_stat(group, column).n and column.metric in group.blank.get(column.source, {}) else ""


def shown(rows: Sequence[Group], column: Column) -> bool:
    """Whether ``column`` has a value, or a reason for its blank, in any of ``rows``."""
    return any(cell_stat(g, column).n or blank_mark(g, column) for g in rows)


def table_rows(groups: Sequence[Group], table: Table) -> list[Group]:
    """The groups that have any of ``table``'s sets: its rows."""
    return [g for g in groups if any(column.source in g.stats for column in table.columns)]


def cell_mark(group: Group, column: Column) -> str:
    """The cell's mark: † or ‡ when it differs significantly from the baseline (by the test that mark stands for), else ""."""
    comparison = group.significance.get(column.source, {}).get(column.metric)
    return MARKS.get(comparison.test or "", "") if comparison is not None and comparison.significant else ""


def best_rows(rows: Sequence[Group], column: Column, digits: int) -> set[int]:
    """Indices of the rows with the best shown mean of ``column`` among the rows of their architecture (ties
    all bold; rows of different backbones are never ranked together); none for unranked metrics."""
    sign = direction(column.metric)
    best: set[int] = set()
    for architecture in dict.fromkeys(g.architecture for g in rows):
        means = [(k, round(s.mean, digits)) for k, g in enumerate(rows)
                 if g.architecture == architecture and (s := cell_stat(g, column)).mean is not None]  # fmt: skip
        if sign and len(means) >= 2:
            top = max(sign * v for _, v in means)
            best |= {k for k, v in means if sign * v == top}
    return best


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
    return lines + blank_notes(rows, table)


def blank_notes(rows: Sequence[Group], table: Table) -> list[str]:
    """The notes of ``table``'s rows about its columns (what a computed column means), then one line per reason a cell shows "–"."""
    columns = [c for c in table.columns if any(c.metric in g.blank.get(c.source, {}) or g.notes.get(c.source) for g in rows)]
    lines = list(dict.fromkeys(line for c in columns for g in rows for line in g.notes.get(c.source, [])))
    why: dict[str, tuple[dict[str, None], dict[str, None]]] = {}  # reason -> (its columns, its rows), in order
    for g in rows:
        for c in columns:
            if blank_mark(g, c):
                headers, names = why.setdefault(g.blank[c.source][c.metric], ({}, {}))
                headers[c.header], names[row_name(g)] = None, None
    every = len({row_name(g) for g in rows})
    return lines + [
        f"– in {', '.join(headers)} of {'every row' if len(names) == every else ', '.join(names)}: {reason}."
        for reason, (headers, names) in why.items()
    ]
