"""``ensemble-lab report``: the paper's tables (mean ± std over seeds) from results.json files: the
command's options, then the rows (report/groups.py), their significance marks (report/significance.py)
and the tables (report/tables.py)."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ensemble_lab.errors import ConfigError
from ensemble_lab.metrics.registry import OOD_SCORES
from ensemble_lab.report import tables as report_tables
from ensemble_lab.report.columns import PRESETS, preset_columns
from ensemble_lab.report.de_curve import Saved
from ensemble_lab.report.de_table import add_de_equivalents
from ensemble_lab.report.groups import DEFAULT_BASELINE, Group, build_report, run_groups
from ensemble_lab.report.significance import add_significance, choose_baselines
from ensemble_lab.report.tables import render, table_layout


def parser() -> argparse.ArgumentParser:
    """Options of ``ensemble-lab report``."""
    p = argparse.ArgumentParser(
        prog="ensemble-lab report",
        description="Mean ± std over seeds of every results.json below PATH..., grouped by (run label, num_members, datamodule) and "
        "never pooling runs trained differently, as Markdown, LaTeX or CSV tables, each row compared with a baseline row.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="run or study directories, or results.json files")
    p.add_argument(
        "--out", type=Path, default=None, help="also write report.md, report.tex, report.csv and report.json into this directory"
    )
    p.add_argument("--format", choices=("markdown", "latex", "csv"), default="markdown", help="what to print (default markdown)")
    p.add_argument("--sets", nargs="+", default=None, metavar="SET", help="only these test sets, in this order")
    p.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        metavar="METRIC",
        help="only these columns: keys of results.json, e.g. acc nll brier entropy expected_entropy auroc_mi",
    )
    p.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=None,
        help="paper: id / shift acc, nll, ece and ood aupr, auroc, fpr95, mi; single_basin: one table of id acc, nll, ece, "
        "ece after temperature scaling, mi, disagreement, loss barrier; diversity: the same with the effective weights' mean "
        "cosine instead of the barrier; calibration: id / shift nll, joint_nll_10, ece, adaptive, "
        "classwise and maximum ECE, Brier reliability and resolution; selective: id / shift AURC, AUGRC, risk at 80%% coverage, "
        "coverage at 5%% risk (of --ood_score's confidence), APS conformal coverage and set size, and ood AUROC of --ood_score, "
        "max logit, energy, variation ratio and expected entropy",
    )
    p.add_argument(
        "--ood_score",
        choices=OOD_SCORES,
        default="msp",
        help="the OOD score of --preset paper's aupr / auroc / fpr95, and the confidence of --preset selective (default msp)",
    )
    p.add_argument(
        "--ood_positive",
        choices=("ood", "id"),
        default="ood",
        help="the positive class of --preset paper's aupr and fpr95: ood (the paper's, default) or id (most OOD tables': "
        "aupr_in, and fpr95_in = the fraction of OOD images accepted when 95%% of ID images are)",
    )
    p.add_argument("--digits", type=int, default=3, help="decimals in the tables (default 3)")
    p.add_argument(
        "--baseline",
        default=None,
        metavar="LABEL",
        help="the row every other row is tested against (its label, method or row name; default: the SingleModel row "
        "if there is one; none: no tests)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="significance level: † marks p < alpha by Welch's t-test over seeds, ‡ by a paired bootstrap over test samples "
        "(a row or the baseline has a single run) (default 0.05)",
    )
    p.add_argument(
        "--correction",
        choices=("holm", "none"),
        default="holm",
        help="correction for multiple comparisons over each row's tests on one set: holm (default; the chance of any false "
        "mark in a row stays below alpha) or none",
    )
    p.add_argument(
        "--resamples", type=int, default=1000, help="bootstrap resamples of the test samples, for rows with a single run (default 1000)"
    )
    p.add_argument("--bootstrap_seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    p.add_argument("--figures", action="store_true", help="also draw the comparison figures into <out>/figures/ (needs --out)")
    p.add_argument("--figure_format", nargs="+", choices=("png", "pdf", "svg"), default=["png"], help="formats of --figures (default png)")
    p.add_argument("--dpi", type=int, default=200, help="resolution of --figures PNGs (default 200)")
    return p


def read_options(argv: Sequence[str], cli: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """``argv`` parsed by ``cli`` (default: ``parser()``) and checked, reading no results; argparse's errors go
    through ``cli.error``, the others are a ConfigError."""
    cli = cli or parser()
    options = cli.parse_args(list(argv))
    if not 0 <= options.digits <= 12:
        cli.error(f"--digits must be between 0 and 12, got {options.digits}")
    if not 0 < options.alpha < 1:
        raise ConfigError(f"--alpha must be between 0 and 1 (exclusive), got {options.alpha}; 0.05 is usual")
    if options.resamples < 10:
        raise ConfigError(f"--resamples must be at least 10, got {options.resamples}; 1000 is usual")
    if options.dpi < 10:
        raise ConfigError(f"--dpi must be at least 10, got {options.dpi}; 200 to 300 suits a paper")
    if options.metrics and options.preset:
        raise ConfigError("give --metrics or --preset, not both")
    if options.figures and options.out is None:
        raise ConfigError("--figures needs --out DIR (the figures go to DIR/figures/)")
    if options.out is not None and options.out.exists() and not options.out.is_dir():
        raise ConfigError(f"--out {options.out} is a file; give a directory (it is created if missing)")
    return options


def report_main(argv: Sequence[str]) -> None:
    """``ensemble-lab report PATH... [--out DIR] [--format markdown|latex|csv] [--metrics M... | --preset P] [--baseline LABEL] [--correction holm|none] ...``."""
    options = read_options(argv)
    columns = preset_columns(options.preset, options.ood_score, options.ood_positive) if options.preset else options.metrics
    groups = build_report(options.paths, options.sets, columns)
    saved = Saved()  # the Deep-Ensemble fits of this report: the columns fill it, the figure reads it back
    add_de_equivalents(groups, explicit=columns is not None, saved=saved)  # dee, de_gain_*: from the study's runs (report/de_table.py)
    baselines = choose_baselines(groups, options.baseline)
    if not baselines:
        why = "--baseline none" if options.baseline else f"no {DEFAULT_BASELINE} row; give --baseline LABEL"
        print(f"ensemble-lab report: no significance marks ({why})", file=sys.stderr)
    for line in add_significance(groups, baselines, options.alpha, options.resamples, options.bootstrap_seed, options.correction):
        print(f"ensemble-lab report: significance: {line}", file=sys.stderr)
    tables = table_layout(groups, options.preset, options.metrics)
    print(render(groups, options.format, tables, options.digits, options.alpha))
    notes = sys.stdout if options.format == "markdown" else sys.stderr  # a CSV or LaTeX on stdout stays clean
    if options.out is not None:
        for path in report_tables.write_report(groups, options.out, options.digits, tables, options.alpha):
            print(f"wrote {path}", file=notes)
    if options.figures:
        for path in draw_figures(groups, options.out, options.figure_format, options.dpi, saved):
            print(f"wrote {path}", file=notes)


def draw_figures(groups: Sequence[Group], out: Path, formats: Sequence[str] = ("png",), dpi: int = 200, saved: Saved | None = None) -> list[Path]:
    """Every comparison figure of the rows (report/figures.py), into <out>/figures/; rows in table order. ``saved``: the
    cache add_de_equivalents filled for these rows, so the Deep-Ensemble figure reuses its temperature fits."""
    from ensemble_lab.report import figures as report_figures  # matplotlib only when drawing

    return report_figures.draw_report_figures(run_groups(groups), Path(out), tuple(formats), dpi, saved)


def to_markdown(groups: list[Group], digits: int = 3) -> str:
    """The default Markdown report of ``groups`` (rendered by report/tables.py)."""
    return render(groups, "markdown", None, digits)


def write_report(groups: list[Group], out: Path, digits: int = 3) -> list[Path]:
    """report.md, report.tex, report.csv and report.json of the default layout (report/tables.py)."""
    return report_tables.write_report(groups, out, digits)
