"""The report's tables as Markdown and CSV, report.json, and the report's files (report.md / .tex / .csv / .json).

Which tables and columns, and the marks of a cell: report/layout.py; LaTeX: report/latex.py. Besides the
tables, the Markdown report lists the options in which rows of one method differ, and an overview of every set.
"""

import csv
import io
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ensemble_lab.config.run_config import MISSING, option_default
from ensemble_lab.io import atomic_write_bytes
from ensemble_lab.report.groups import COST, RUN_COLUMNS, WEIGHTS, Group, format_stat, row_name, run_groups
from ensemble_lab.report.latex import to_latex
from ensemble_lab.report.layout import Table, architecture_cells, blank_mark, cell_mark, cell_stat, footnotes, table_layout, table_rows


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
        rows = table_rows(groups, table)
        lead = architecture_cells(rows)
        cells = [
            lead(g) + [row_name(g), str(g.num_members), str(g.datamodule), str(len(g.runs))]
            + [(format_stat(cell_stat(g, c), len(g.runs), digits) or blank_mark(g, c)) + (f" {mark}" if (mark := cell_mark(g, c)) else "") for c in table.columns]
            for g in rows
        ]
        notes = footnotes(rows, table)
        parts.append(
            f"### {table.title}\n\n"
            + _markdown_table([*lead(None), "run", "M", "data", "n", *(c.header for c in table.columns)], cells)
            + "".join(f"\n\n{note}" for note in notes)
        )
    if differences := row_differences(groups):
        parts.append("### options that differ between rows of one method\n\n" + "\n".join(differences))
    if default and (overview := overview_table(groups, [t.columns[0].source for t in tables], digits)):
        parts.append(overview)
    return "\n\n".join(parts) + "\n"


#: the long format's columns: what the row is, the cell, and the test against the baseline
CSV_FIELDS = ("method", "label", "run", "architecture", "num_members", "datamodule", "set", "role", "metric", "mean", "std", "n",
              "baseline", "test", "difference", "p", "correction", "p_adjusted", "ci_low", "ci_high", "significant")  # fmt: skip


def to_rows(groups: list[Group], tables: Sequence[Table] | None = None) -> list[dict[str, Any]]:
    """Long format: one row per (group, set, metric) cell of ``tables``, with mean, std, n and the test against the baseline."""
    rows, seen = [], set()
    for table in table_layout(groups) if tables is None else tables:
        for column in table.columns:
            for g in table_rows(groups, table):
                if column.metric not in g.stats.get(column.source, {}) or (id(g), column.source, column.metric) in seen:
                    continue
                seen.add((id(g), column.source, column.metric))
                s, c = cell_stat(g, column), g.significance.get(column.source, {}).get(column.metric)
                low, high = c.ci if c is not None and c.ci is not None else (None, None)
                rows.append({"method": g.method, "label": g.label, "run": row_name(g), "architecture": g.architecture,
                             "num_members": g.num_members,
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
                "architecture": g.architecture,
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
    """For each method with several rows (labels or variants) of one architecture: the options in which its rows'
    configurations differ (rows of different backbones differ in the backbone's options anyway)."""
    lines = []
    by_method: dict[tuple[str | None, str | None], list[Group]] = {}
    for group in groups:
        by_method.setdefault((group.method, group.architecture), []).append(group)
    for (method, _), members in by_method.items():
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
    from ensemble_lab.report.figure_rows import looks

    id_set = next((n for g in measured for n, role in g.roles.items() if role == "id"), None)
    ood_set = next((n for g in measured for n, role in g.roles.items() if role == "ood"), None)
    regression = any(getattr(g.stats.get(id_set or "", {}).get("rmse"), "n", 0) for g in measured)  # a run measured rmse on the id set
    quality = [(id_set, "rmse"), (id_set, "nll"), (ood_set, "auroc_variance")] if regression else [(id_set, "acc"), (id_set, "nll"), (ood_set, "auroc_msp")]
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
