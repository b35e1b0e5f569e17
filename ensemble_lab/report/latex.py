"""The report's tables as LaTeX (booktabs): report.tex, the best value of each ranked column in bold."""

from collections.abc import Sequence

from ensemble_lab.metrics.registry import direction
from ensemble_lab.report.groups import Group, Stat, format_stat, row_name
from ensemble_lab.report.layout import (
    Table,
    architecture_cells,
    best_rows,
    blank_mark,
    cell_mark,
    cell_stat,
    footnotes,
    shown,
    table_layout,
    table_rows,
)

#: LaTeX's special characters, and the symbols of the notes, as LaTeX
LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "†": r"$^\dagger$", "‡": r"$^\ddagger$"}  # fmt: skip
LATEX_SPECIAL.update({"α": r"$\alpha$", "≥": r"$\geq$", "<": r"$<$", ">": r"$>$", "–": "--", "−": "$-$"})  # < and > in text mode print as ¡ and ¿


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
        rows = table_rows(groups, table)
        table = Table(table.title, tuple(c for c in table.columns if shown(rows, c)), table.role)  # no blank columns
        best = [best_rows(rows, c, digits) for c in table.columns]
        arch = architecture_cells(rows)
        lead = [*arch(None), "run", "$M$"] + (["data"] if several_data else []) + ["$n$"]
        header = lead + [latex_escape(c.header) + arrows[direction(c.metric)] for c in table.columns]
        lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{latex_escape(table.title)}}}",
                 rf"\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]  # fmt: skip
        for k, g in enumerate(rows):
            cells = (
                [latex_escape(c) for c in arch(g)]
                + [latex_escape(row_name(g)), str(g.num_members)]
                + ([latex_escape(str(g.datamodule))] if several_data else [])
                + [str(len(g.runs))]
            )
            cells += [
                latex_stat(cell_stat(g, c), len(g.runs), digits, k in best[i], cell_mark(g, c)) or ("--" if blank_mark(g, c) else "")
                for i, c in enumerate(table.columns)
            ]
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        for note in footnotes(rows, table):
            lines.append(r"\par\smallskip{\footnotesize " + latex_escape(note) + "}")
        parts.append("\n".join(lines + [r"\end{table}"]))
    return "\n\n".join(parts) + "\n"
