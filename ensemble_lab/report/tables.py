"""The report's tables as Markdown, LaTeX (booktabs) and CSV, and its files (report.md / .tex / .csv / .json).

A :class:`Table` is a list of columns, each a (set, metric) pair, with one row per group that has any of them.
The default layout is one table per test set, a weight-space and a cost table; ``--metrics`` keeps the
chosen columns; ``--preset paper`` the paper's columns per role; ``--preset single_basin`` one table per id set.
A cell is ``mean ± std`` over the row's runs, with † when Welch's t-test over seeds finds it different from the
baseline row's, ‡ when a paired bootstrap over test samples does (a row or its baseline has a single run); a
table's footnotes explain only the marks its cells can carry.
"""

import csv
import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensemble_lab.config.run_config import MISSING, option_default
from ensemble_lab.io import atomic_write_bytes
from ensemble_lab.metrics.registry import direction
from ensemble_lab.report.groups import CALIBRATED, COST, RUN_COLUMNS, WEIGHTS, Group, Stat, format_stat, row_name, run_groups

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
    """id acc, nll, ece, ece after temperature scaling, mi, disagreement and the mean loss barrier of set ``name``."""
    calibrated = CALIBRATED.format(name)
    wanted = [Column(name, m, m) for m in ("acc", "nll", "ece")] + [Column(calibrated, "ece", "ece +T")]
    wanted += [Column(name, m, m) for m in ("mi", "disagreement")] + [Column(WEIGHTS, "barrier_loss_mean", "barrier_loss_mean")]
    present = [c for c in wanted if any(_stat(g, c).n for g in groups)]
    return Table(f"{name}: single basin", tuple(present), "id")


def _stat(group: Group, column: Column) -> Stat:
    return group.stats.get(column.source, {}).get(column.metric) or Stat(None, None, 0)


def _rows(groups: Sequence[Group], table: Table) -> list[Group]:
    return [g for g in groups if any(column.source in g.stats for column in table.columns)]


def _mark(group: Group, column: Column) -> str:
    """The cell's mark: † or ‡ when it differs significantly from the baseline (by the test that mark stands for), else ""."""
    comparison = group.significance.get(column.source, {}).get(column.metric)
    return MARKS.get(comparison.test or "", "") if comparison is not None and comparison.significant else ""


def _best(rows: Sequence[Group], column: Column, digits: int) -> set[int]:
    """Indices of the rows with the best shown mean of ``column`` (ties all bold); none for unranked metrics."""
    sign = direction(column.metric)
    means = [(k, round(s.mean, digits)) for k, g in enumerate(rows) if (s := _stat(g, column)).mean is not None]
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


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def to_markdown(groups: list[Group], tables: Sequence[Table] | None = None, digits: int = 3, alpha: float = 0.05) -> str:
    """One Markdown table per entry of ``tables`` (default layout: per test set, weight space, cost, then an overview)."""
    default = tables is None
    tables = table_layout(groups) if tables is None else tables
    total = sum(len(g.runs) for g in groups)
    parts = [f"Mean ± sample std over runs (n = runs per row); {total} run{'s' if total != 1 else ''}."]
    for table in tables:
        rows = _rows(groups, table)
        cells = [
            [row_name(g), str(g.num_members), str(g.datamodule), str(len(g.runs))]
            + [format_stat(_stat(g, c), len(g.runs), digits) + (f" {mark}" if (mark := _mark(g, c)) else "") for c in table.columns]
            for g in rows
        ]
        notes = footnotes(rows, table)
        parts.append(
            f"### {table.title}\n\n"
            + _markdown_table(["run", "M", "data", "n", *(c.header for c in table.columns)], cells)
            + "".join(f"\n\n{note}" for note in notes)
        )
    if differences := row_differences(groups):
        parts.append("### options that differ between rows of one method\n\n" + "\n".join(differences))
    if default and (overview := overview_table(groups, [t.columns[0].source for t in tables], digits)):
        parts.append(overview)
    return "\n\n".join(parts) + "\n"


#: LaTeX's special characters, and the symbols of the notes, as LaTeX
LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "†": r"$^\dagger$", "‡": r"$^\ddagger$"}  # fmt: skip
LATEX_SPECIAL.update({"α": r"$\alpha$", "≥": r"$\geq$", "<": r"$<$", ">": r"$>$"})  # < and > in text mode print as ¡ and ¿


def latex_escape(text: str) -> str:
    r"""``text`` with LaTeX's special characters escaped (``_`` -> ``\_``, ``&`` -> ``\&``, ...)."""
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex_stat(stat: Stat, runs: int, digits: int = 3, bold: bool = False, mark: str = "") -> str:
    r"""``$0.961 \pm 0.004$`` (bold: ``\mathbf``; mark: † or ‡ as a superscript), ``(n=k)`` after it when k < runs; blank without a value."""
    text = format_stat(Stat(stat.mean, stat.std, runs), runs, digits)
    if not text:
        return ""
    body = text.replace(",", "{,}").replace(" ± ", r" \pm ")
    body = (rf"\mathbf{{{body}}}" if bold else body) + {"†": r"^{\dagger}", "‡": r"^{\ddagger}"}.get(mark, "")
    return f"${body}$" + (f" (n={stat.n})" if stat.n != runs else "")


def to_latex(groups: list[Group], tables: Sequence[Table] | None = None, digits: int = 3, alpha: float = 0.05) -> str:
    r"""One booktabs table (``\toprule \midrule \bottomrule``) per entry of ``tables``; best value per ranked column in bold."""
    tables = table_layout(groups) if tables is None else tables
    several_data = len({g.datamodule for g in groups}) > 1
    arrows = {1: r" $\uparrow$", -1: r" $\downarrow$", 0: ""}
    parts = [r"% ensemble-lab report: needs \usepackage{booktabs}. Mean $\pm$ sample std over runs; best per column in bold."]
    for table in tables:
        rows = _rows(groups, table)
        table = Table(table.title, tuple(c for c in table.columns if any(_stat(g, c).n for g in rows)), table.role)  # no blank columns
        best = [_best(rows, c, digits) for c in table.columns]
        lead = ["run", "$M$"] + (["data"] if several_data else []) + ["$n$"]
        header = lead + [latex_escape(c.header) + arrows[direction(c.metric)] for c in table.columns]
        lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{latex_escape(table.title)}}}",
                 rf"\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]  # fmt: skip
        for k, g in enumerate(rows):
            cells = (
                [latex_escape(row_name(g)), str(g.num_members)]
                + ([latex_escape(str(g.datamodule))] if several_data else [])
                + [str(len(g.runs))]
            )
            cells += [latex_stat(_stat(g, c), len(g.runs), digits, k in best[i], _mark(g, c)) for i, c in enumerate(table.columns)]
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        for note in footnotes(rows, table):
            lines.append(r"\par\smallskip{\footnotesize " + latex_escape(note) + "}")
        parts.append("\n".join(lines + [r"\end{table}"]))
    return "\n\n".join(parts) + "\n"


#: the long format's columns: what the row is, the cell, and the test against the baseline
CSV_FIELDS = ("method", "label", "run", "num_members", "datamodule", "set", "role", "metric", "mean", "std", "n",
              "baseline", "test", "difference", "p", "correction", "p_adjusted", "ci_low", "ci_high", "significant")  # fmt: skip


def to_rows(groups: list[Group], tables: Sequence[Table] | None = None) -> list[dict[str, Any]]:
    """Long format: one row per (group, set, metric) cell of ``tables``, with mean, std, n and the test against the baseline."""
    rows, seen = [], set()
    for table in table_layout(groups) if tables is None else tables:
        for column in table.columns:
            for g in _rows(groups, table):
                if column.metric not in g.stats.get(column.source, {}) or (id(g), column.source, column.metric) in seen:
                    continue
                seen.add((id(g), column.source, column.metric))
                s, c = _stat(g, column), g.significance.get(column.source, {}).get(column.metric)
                low, high = c.ci if c is not None and c.ci is not None else (None, None)
                rows.append({"method": g.method, "label": g.label, "run": row_name(g), "num_members": g.num_members,
                             "datamodule": g.datamodule, "set": "" if column.source in (WEIGHTS, COST) else column.source,
                             "role": g.roles.get(column.source, ""), "metric": column.metric, "mean": s.mean, "std": s.std, "n": s.n,
                             "baseline": row_name(g.baseline) if g.baseline is not None else None, "test": c and c.test,
                             "difference": c and c.difference, "p": c and c.p, "correction": c and c.correction,
                             "p_adjusted": c and c.p_adjusted, "ci_low": low, "ci_high": high,
                             "significant": c and c.significant})  # fmt: skip
    return rows


def to_csv(groups: list[Group], tables: Sequence[Table] | None = None) -> str:
    """The long format (:func:`to_rows`) as CSV text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_FIELDS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(to_rows(groups, tables))
    return buffer.getvalue()


def to_json(groups: list[Group]) -> str:
    """report.json: every group with its runs, every statistic and every comparison with its baseline."""
    return json.dumps(
        [
            {
                "method": g.method,
                "label": g.label,
                "variant": g.variant,
                "run": row_name(g),
                "num_members": g.num_members,
                "datamodule": g.datamodule,
                "n": len(g.runs),
                "seeds": g.seeds,
                "runs": [str(r) for r in g.runs],
                "roles": g.roles,
                "stats": {name: {k: s.as_json() for k, s in m.items()} for name, m in g.stats.items()},
                "baseline": row_name(g.baseline) if g.baseline is not None else None,
                "significance": {name: {k: c.as_json() for k, c in m.items()} for name, m in g.significance.items() if m},
            }  # fmt: skip
            for g in groups
        ],
        indent=2,
    )


def render(groups: list[Group], format: str, tables: Sequence[Table] | None = None, digits: int = 3, alpha: float = 0.05) -> str:
    """The report in ``format``: "markdown", "latex" or "csv"."""
    if format == "csv":
        return to_csv(groups, tables)
    return (to_latex if format == "latex" else to_markdown)(groups, tables, digits, alpha)


def write_report(groups: list[Group], out: Path, digits: int = 3, tables: Sequence[Table] | None = None, alpha: float = 0.05) -> list[Path]:
    """Write report.md, report.tex, report.csv (long format) and report.json into ``out``, each atomically, and the cost figure."""
    out = Path(out)
    files = {"report.md": to_markdown(groups, tables, digits, alpha), "report.tex": to_latex(groups, tables, digits, alpha),
             "report.csv": to_csv(groups, tables), "report.json": to_json(groups)}  # fmt: skip
    for name, text in files.items():
        atomic_write_bytes(out / name, text.encode())
    written = [out / name for name in files]
    if figure := quality_cost(groups):
        from ensemble_lab.figures.per_run import save_png  # matplotlib only when drawing

        written.append(save_png(figure, out / "quality_vs_cost.png"))
    return written


def _shown_option(config: dict[str, Any], key: str) -> str:
    """A row's value of ``key``; one its configuration leaves out holds its class's default (dropped for pooling)."""
    if key in config:
        return json.dumps(config[key], default=str)
    default = option_default(config, key)
    return "(unset)" if default is MISSING else f"{json.dumps(default, default=str)} (default)"


def row_differences(groups: Sequence[Group]) -> list[str]:
    """For each method with several rows (labels or variants): the options in which its rows' configurations differ."""
    lines = []
    by_method: dict[str | None, list[Group]] = {}
    for group in groups:
        by_method.setdefault(group.method, []).append(group)
    for method, members in by_method.items():
        configs = {row_name(g): g.config for g in members if g.config}
        if len(configs) < 2:
            continue
        keys = sorted({k for c in configs.values() for k in c if len({json.dumps(d.get(k), default=str) for d in configs.values()}) > 1})
        for k in keys:
            shown = {name: _shown_option(c, k) for name, c in configs.items()}
            common, count = Counter(shown.values()).most_common(1)[0]
            if count == 1 or len(shown) <= 2:  # no value most rows share: list every row's
                values = "; ".join(f"{name}: {value}" for name, value in shown.items())
            else:  # the rows that set it apart, then what the others have
                values = "; ".join(f"{name}: {value}" for name, value in shown.items() if value != common)
                values += f"; the other {count} rows: {common}"
            lines.append(f"- {method} rows differ in `{k}` ({values})")
    return lines


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
        metrics = {WEIGHTS: RUN_COLUMNS, COST: ("parameters", "images_per_s")}.get(name) or OVERVIEW_COLUMNS.get(
            role, OVERVIEW_COLUMNS["id"]
        )
        columns += [(name, m) for m in metrics if any(m in g.stats.get(name, {}) for g in groups)]
    rows = [
        [row_name(g), str(g.num_members), str(len(g.runs))]
        + [format_stat(g.stats.get(name, {}).get(metric), len(g.runs), digits) for name, metric in columns]
        for g in groups
    ]
    header = ["run", "M", "n", *(metric if name in (WEIGHTS, COST) else f"{name} {metric}" for name, metric in columns)]
    return "### overview: every set in one table\n\n" + _markdown_table(header, rows)


def quality_cost(groups: list[Group]) -> Any:
    """The quality-against-cost figure of the groups that measured their cost; None if fewer than two did."""
    measured = [g for g in groups if COST in g.stats]
    if len(measured) < 2:
        return None
    # matplotlib only when drawing; looks: each row's colour and marker, as in every comparison figure
    from ensemble_lab.figures.per_run import quality_cost_figure
    from ensemble_lab.report.figures import looks

    id_set = next((n for g in measured for n, role in g.roles.items() if role == "id"), None)
    ood_set = next((n for g in measured for n, role in g.roles.items() if role == "ood"), None)
    quality = [(id_set, "acc"), (id_set, "nll"), (ood_set, "auroc_msp")]
    cost = {"images_per_s": 1.0, "parameters": 1.0, "peak_tensor_bytes": 2.0**-20}  # key -> scale (bytes shown in MiB)
    shown = {"peak_tensor_bytes": "peak_tensor_MiB"}
    points = []
    for g, look in zip(measured, looks(run_groups(measured))):
        stats = {f"{name} {metric}": g.stats.get(name or "", {}).get(metric) for name, metric in quality}
        values = {k: (v.mean, v.std) for k, v in stats.items() if v is not None and v.mean is not None}
        for key, scale in cost.items():
            if (stat := g.stats[COST].get(key)) is not None and stat.mean is not None:
                values[shown.get(key, key)] = (stat.mean * scale, None if stat.std is None else stat.std * scale)
        points.append((look, values))
    columns = [shown.get(key, key) for key in cost if any(shown.get(key, key) in values for _, values in points)]
    return quality_cost_figure(points, [f"{name} {metric}" for name, metric in quality if name], columns)
