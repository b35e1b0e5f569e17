"""One look for every figure: sizes at a paper's column width, font sizes, colours per method label, saving.

Figures are sized in inches at the width they are printed at (one column ≈ 3.3 in, the full text
width ≈ 6.9 in) with fonts of 7 to 8 pt, so they stay readable when a paper includes them at 100 %.
Colours belong to method labels, assigned in the paper's row order (``METHOD_ORDER``, which the report's tables follow too),
so a method keeps its colour in every figure of one report.
"""

import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import matplotlib
from matplotlib.figure import Figure

from ensemble_lab.errors import ConfigError
from ensemble_lab.io import atomic_write_bytes

#: the paper's row order of method classes, in tables and legends (the snapshot ensemble beside the Deep Ensemble it
#: approximates); other methods (custom ones) follow alphabetically
METHOD_ORDER = ("SingleModel", "MCDropout", "DeepEnsemble", "SnapshotEnsemble", "BatchEnsemble", "LowRankEnsemble", "PackedEnsemble", "MIMO", "Masksembles")

#: widths in inches: one column of a two-column paper, and the whole text width
COLUMN_WIDTH = 3.3
TEXT_WIDTH = 6.9
#: formats draw_report_figures and save_figure write
FORMATS = ("png", "pdf", "svg")
#: Okabe-Ito colour-blind-safe colours first (their yellow late, and darkened: #F0E442 is barely visible on white),
#: then more for long reports
PALETTE = (
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#8C564B",
    "#B59F00", "#7F7F7F", "#332288", "#17BECF",
)  # fmt: skip
#: one marker per label as well (prints in grey stay legible)
MARKERS = "osD^vP*Xh<>p"
#: matplotlib settings of every figure; fonts in points at the printed size
STYLE: dict[str, Any] = {
    "font.size": 7.5,
    "axes.titlesize": 7.5,
    "axes.labelsize": 7.5,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 8,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "legend.frameon": False,
    "savefig.bbox": "tight",  # a safety net beside constrained layout: nothing at an edge is cut off
    "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42,  # TrueType in PDFs: editable text, accepted by publishers
    "svg.fonttype": "none",  # text stays text in SVGs
}

#: line styles of the groups of one label that differ in M or options (the label keeps its colour)
LINESTYLES = ("-", "--", ":", "-.")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Look:
    """How one report row is drawn in every figure: legend text, colour and marker of its label, its line style."""

    name: str
    colour: str
    marker: str
    linestyle: str = "-"


def paper_style(draw: F) -> F:
    """Decorator: run a drawing function under :data:`STYLE` (matplotlib reads rc settings as artists are made)."""
    return cast(F, matplotlib.rc_context(cast(Any, STYLE))(draw))


def method_order_key(method: str | None, label: str) -> tuple[int, str, str]:
    """Sort key of a label: the report's paper row order of its method class, then the names."""
    order = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return order, str(method), label


def label_colours(labels: Iterable[tuple[str, str | None]]) -> dict[str, tuple[str, str]]:
    """{label: (colour, marker)} for (label, method class) pairs, in the paper's row order.

    The same set of labels always gets the same colours, whatever order the pairs come in; labels that share a
    colour (more labels than PALETTE has) get different markers.
    """
    methods = dict(labels)  # label -> method (the first one given)
    ordered = sorted(methods, key=lambda label: method_order_key(methods[label], label))
    # past the palette's end the colours repeat: the markers then shift by one, so no two labels share both
    return {label: (PALETTE[i % len(PALETTE)], MARKERS[(i + i // len(PALETTE)) % len(MARKERS)]) for i, label in enumerate(ordered)}


def who(method: str | None, num_members: int | None, label: str | None = None) -> str:
    """What a run is, for titles: ``"BatchEnsemble, M=4"`` (``"be_rank2 (BatchEnsemble), M=4"`` for another label)."""
    name = str(method or label or "?")
    if label and method and label != method:
        name = f"{label} ({method})"
    return name if num_members is None else f"{name}, M={num_members}"


def check_formats(formats: Sequence[str], dpi: int) -> None:
    """Raise ConfigError for a format outside :data:`FORMATS` or a dpi outside 10..1200."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"figure format {' '.join(unknown) or '(none)'} is not one of {', '.join(FORMATS)}; choose among them")
    if not 10 <= dpi <= 1200:
        raise ConfigError(f"dpi {dpi} is outside 10..1200; 200 to 300 suits print, 100 a screen")


def save_figure(fig: Figure, stem: Path, formats: Sequence[str] = ("png",), dpi: int = 200) -> list[Path]:
    """Write ``fig`` as ``<stem>.<format>`` for each format, atomically; returns the paths.

    Args:
        fig: the figure.
        stem: path without suffix, e.g. ``out/figures/reliability_digits``.
        formats: any of png, pdf, svg.
        dpi: resolution of PNGs (and of raster parts of PDF / SVG).
    """
    check_formats(formats, dpi)
    paths = []
    for fmt in dict.fromkeys(formats):
        buffer = io.BytesIO()
        with matplotlib.rc_context(cast(Any, STYLE)):
            fig.savefig(buffer, format=fmt, dpi=dpi)
        path = Path(stem).with_name(f"{Path(stem).name}.{fmt}")
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths
