"""The report's comparison figures: every method of a report in one figure, from the runs' saved files.

``draw_report_figures(groups, out)`` writes into ``<out>/figures/`` (docs/figures.md shows each):

- ``reliability_<set>``: per id / shift set, one reliability diagram per row with its samples per bin
  (needs ``predictions/<set>.npz``: test with ``--save_predictions true``);
- ``ood_roc_<set>_<score>`` and ``ood_pr_<set>_<score>``: per OOD set and score (msp, entropy, mi), every
  row's ROC / precision-recall curve against the first id set, AUROC / AUPR in the legend (predictions too);
- ``diversity_<set>``: disagreement and mi against quality, one marker per run (results.json alone);
- ``training_curves``: val/acc, val/nll, val/mi, val/disagreement and val/weight_cosine per epoch, mean ±
  std over seeds (the runs' TensorBoard event files);
- ``ensemble_size``: metrics against M for labels whose rows differ in M (results.json alone);
- ``scale``: accuracy, diversity (mi, disagreement), weight cosine and AUROC (mi) against the parameters of one member's
  network, for methods whose rows differ in size (a width or depth sweep, a line each; results.json alone).

A row's predictions are pooled over its runs: the curves, the ECE and AUROC / AUPR in titles and legends
are those of all its runs' samples together (the tables' numbers are means over runs, so they differ a little).
"""

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ensemble_lab.errors import ConfigError
from ensemble_lab.evaluation import comparison_figures as draw
from ensemble_lab.evaluation.figure_style import LINESTYLES, MARKERS, Look, check_formats, label_colours, save_figure, who
from ensemble_lab.evaluation.metrics import member_mean, uncertainty_scores
from ensemble_lab.evaluation.training_curves import CURVE_TAGS, has_epochs, mean_std, per_epoch, read_scalars
from ensemble_lab.nn.backbones import backbone_dimensions

SCORES = ("msp", "entropy", "mi")
#: (x, y) panels of the diversity figure: label metrics on id / shift sets, detection on ood sets
DIVERSITY_AXES = {"ood": (("disagreement", "auroc_msp"), ("mi", "auroc_mi")), "id": (("disagreement", "acc"), ("mi", "nll"))}
#: the ensemble-size panels: metrics of the first id set, then AUROC (msp) on the first ood set
SIZE_METRICS = ("acc", "nll", "ece", "mi")
#: the scale panels: metrics of the first id set, then the weight cosine, then AUROC (mi) on the first ood set
SCALE_METRICS = ("acc", "mi", "disagreement")


@dataclass(frozen=True)
class RunGroup:
    """One row of the report: runs trained alike (seeds aside)."""

    name: str  # the table's row name (label, variant, M), used in legends
    label: str  # the method label (study method name, else class name): colours are per label, stable across figures
    method: str | None  # the method class name, e.g. "BatchEnsemble"
    num_members: int | None
    runs: tuple[Path, ...]  # run directories, each holding results.json, maybe predictions/<set>.npz, TensorBoard event files


def skip(figure: str, why: str) -> None:
    """Say on stderr that a figure was not drawn, why and how to get it."""
    print(f"ensemble-lab report: no {figure} figure: {why}", file=sys.stderr)


def looks(groups: Sequence[RunGroup]) -> list[Look]:
    """Each group's look: its label's colour and marker; groups sharing a label get line styles in order of M."""
    colours = label_colours((g.label, g.method) for g in groups)
    result = []
    for g in groups:
        siblings = sorted((h for h in groups if h.label == g.label), key=lambda h: (h.num_members or 0, h.name))
        name = g.name if g.num_members is None or f"M={g.num_members}" in g.name else f"{g.name}, M={g.num_members}"
        colour, marker = colours[g.label]
        k = siblings.index(g)  # rows of one label keep its colour; the marker and line style tell them apart
        result.append(Look(name, colour, MARKERS[(MARKERS.index(marker) + 5 * k) % len(MARKERS)], LINESTYLES[k % len(LINESTYLES)]))
    return result


def _results(run: Path) -> dict[str, Any]:
    try:
        document = json.loads((Path(run) / "results.json").read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _predictions(run: Path, set_name: str) -> tuple[Tensor, Tensor] | None:
    """A run's saved member probabilities (M, N, C) and targets (N,) of one set, or None."""
    path = Path(run) / "predictions" / f"{set_name}.npz"
    if not path.is_file():
        return None
    with np.load(path) as saved:
        return torch.from_numpy(saved["member_probs"]), torch.from_numpy(saved["targets"])


def set_roles(docs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """{set name: role} over all runs, in the order the sets first appear."""
    roles: dict[str, str] = {}
    for doc in docs:
        for name, metrics in (doc.get("sets") or {}).items():
            if isinstance(metrics, dict):
                roles.setdefault(name, str(metrics.get("role", "id")))
    return roles


def _reliability(groups: Sequence[RunGroup], seen: list[Look], set_name: str) -> Figure | None:
    panels = []
    for group, look in zip(groups, seen):
        saved = [p for run in group.runs if (p := _predictions(run, set_name)) is not None]
        if saved:
            mean = torch.cat([member_mean(probs) for probs, _ in saved])  # (runs · N, C)
            panels.append((look, mean, torch.cat([t for _, t in saved]), len(saved)))
    return draw.reliability_comparison(panels, set_name) if panels else None


def _ood_curves(groups: Sequence[RunGroup], seen: list[Look], id_set: str, ood_set: str) -> dict[str, list[tuple[Look, Tensor, Tensor]]]:
    """{score: [(look, pooled id scores, pooled ood scores)]} of the groups with both sets' predictions."""
    curves: dict[str, list[tuple[Look, Tensor, Tensor]]] = {s: [] for s in SCORES}
    for group, look in zip(groups, seen):
        id_scores, ood_scores = [], []
        for run in group.runs:
            pair = _predictions(run, id_set), _predictions(run, ood_set)
            if pair[0] is not None and pair[1] is not None:
                id_scores.append(uncertainty_scores(pair[0][0]))
                ood_scores.append(uncertainty_scores(pair[1][0]))
        for score in SCORES:
            if id_scores and not (score == "mi" and group.num_members == 1):  # a single model's mi is 0 everywhere
                curves[score].append((look, torch.cat([s[score] for s in id_scores]), torch.cat([s[score] for s in ood_scores])))
    return curves


def _training_curves(groups: Sequence[RunGroup], seen: list[Look]) -> Figure | None:
    series, epochs = [], True
    for group, look in zip(groups, seen):
        scalars = [s for run in group.runs if (s := read_scalars(run, CURVE_TAGS))]
        if any(tag in s for s in scalars for tag in CURVE_TAGS):
            epochs = epochs and all(has_epochs(s) for s in scalars)
            series.append((look, scalars))
    if not series:
        return None
    stats = [(look, {tag: mean_std([per_epoch(s, tag) for s in scalars]) for tag in CURVE_TAGS}) for look, scalars in series]
    return draw.training_curves_figure(stats, CURVE_TAGS, "epoch" if epochs else "step")


def _per_dimension(rows: list[int], dims: Sequence[dict[str, int] | None]) -> list[tuple[str | None, list[int]]]:
    """A method's joined rows as one line per dimension swept: (dimension, rows that differ in it alone).

    A depth sweep and a width sweep of one method become two lines, named by their dimension; a row on
    both (the shared centre) is on both, and a row on neither is left out of the figure (the tables have
    it). A single sweep stays unnamed, and rows whose dimensions are not all known are joined as one line."""
    known = {k: d for k in rows if (d := dims[k])}
    names = sorted({name for d in known.values() for name in d})
    if len(known) < len(rows) or len(names) < 2:
        return [(None, rows)]
    lines: list[tuple[str | None, list[int]]] = []
    for name in names:
        by_rest: dict[tuple[tuple[str, int], ...], list[int]] = {}  # rows alike in every other dimension
        for k, d in known.items():
            by_rest.setdefault(tuple(sorted((n, v) for n, v in d.items() if n != name)), []).append(k)
        lines += [(name, line) for line in by_rest.values() if len({known[k][name] for k in line}) == len(line) > 1]
    return lines if len(lines) > 1 else [(None, lines[0][1] if lines else rows)]


def sweeps(
    groups: Sequence[RunGroup], sizes: Sequence[float | None] | None = None, dims: Sequence[dict[str, int] | None] | None = None,
) -> list[tuple[str | None, list[int]]]:
    """(dimension, rows) of each line of a figure against a size: M by default, else ``sizes`` (one per
    group, None where unknown); rows are indices into ``groups``.

    A label whose rows have several sizes is one line. Labels with a single size each (a study names its
    runs ``be_m2``, ``be_m4``, ... or ``be_w16``, ``be_w64``, ...) are joined per method class when their
    sizes are all different; given each row's backbone ``dims`` ({"depth": ..., "width": ...}), a method's
    depth sweep and width sweep are two lines, named by the dimension (see :func:`_per_dimension`).
    """
    size = list(sizes) if sizes is not None else [g.num_members for g in groups]
    lines: list[tuple[str | None, list[int]]] = []
    single: dict[str | None, list[int]] = {}
    for label in dict.fromkeys(g.label for g in groups):
        rows = [k for k, g in enumerate(groups) if g.label == label and size[k] is not None]
        if len({size[k] for k in rows}) > 1:
            lines.append((None, sorted(rows, key=lambda k: size[k] or 0)))
        elif rows:
            single.setdefault(groups[rows[0]].method, []).extend(rows)
    for rows in single.values():
        for dim, line in _per_dimension(rows, dims) if dims is not None else [(None, rows)]:
            values = [size[k] for k in line]
            if len(set(values)) == len(values) > 1:
                lines.append((dim, sorted(line, key=lambda k: size[k] or 0)))
    return lines


def _value(doc: dict[str, Any], set_name: str | None, metric: str) -> float | None:
    """``metric`` of ``set_name`` in a results.json, or the run-level key (weight_cosine_mean) when ``set_name`` is None."""
    value = doc.get(metric) if set_name is None else (doc.get("sets") or {}).get(set_name, {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _sweep_lines(
    groups: Sequence[RunGroup], seen: list[Look], docs: list[list[dict[str, Any]]], panels: Sequence[tuple[str | None, str]],
    sizes: Sequence[float | None] | None = None, dims: Sequence[dict[str, int] | None] | None = None,
) -> list[tuple[Look, list[tuple[float, list[list[float]]]]]]:
    """One (look, [(size, per panel: the runs' values)]) per line of :func:`sweeps`."""
    size = list(sizes) if sizes is not None else [g.num_members for g in groups]
    lines = []
    for dim, rows in sweeps(groups, size, dims):
        points = []
        for k in rows:
            values = [[v for d in docs[k] if (v := _value(d, s, m)) is not None] for s, m in panels]
            points.append((float(size[k] or 0), values))
        first, look = groups[rows[0]], seen[min(rows)]  # a joined line takes the colour of its first row in the report
        name = str(first.method) if len({groups[k].label for k in rows}) > 1 else who(first.method, None, first.label)
        name += f" ({dim})" if dim else ""  # a depth and a width sweep of one method
        lines.append((Look(name, look.colour, look.marker), points))
    return lines


def _first(roles: dict[str, str], role: str) -> str | None:
    return next((n for n, r in roles.items() if r == role), None)


def _ensemble_size(groups: Sequence[RunGroup], seen: list[Look], docs: list[list[dict[str, Any]]], roles: dict[str, str]) -> Figure | None:
    id_set, ood_set = _first(roles, "id"), _first(roles, "ood")
    panels = [(id_set, m) for m in SIZE_METRICS if id_set] + ([(ood_set, "auroc_msp")] if ood_set else [])
    lines = _sweep_lines(groups, seen, docs, panels)
    return draw.sweep_figure(lines, [(str(s), m) for s, m in panels], "members M", "ensemble size") if lines and panels else None


def member_parameters(docs: Sequence[dict[str, Any]]) -> float | None:
    """Parameters of one member's network (results.json ``cost``), the same in every run of a row; None if unrecorded."""
    counts = {c for d in docs if isinstance(c := (d.get("cost") or {}).get("parameters_per_member"), int)}
    return float(counts.pop()) if len(counts) == 1 else None


def backbone_dims(docs: Sequence[dict[str, Any]]) -> dict[str, int] | None:
    """The depth and width of a row's backbone (results.json ``config``), the same in every run; None if unrecorded."""
    found = set()
    for doc in docs:
        config = doc.get("config") or {}
        options = {k.removeprefix("model.init_args."): v for k, v in config.items() if k.startswith("model.init_args.")}
        try:
            found.add(tuple(sorted(backbone_dimensions(str(options.get("backbone")), options).items())))
        except (ConfigError, KeyError, TypeError, IndexError):  # an older or hand-written record
            return None
    return dict(found.pop()) if len(found) == 1 else None


def _scale(groups: Sequence[RunGroup], seen: list[Look], docs: list[list[dict[str, Any]]], roles: dict[str, str]) -> Figure | None:
    id_set, ood_set = _first(roles, "id"), _first(roles, "ood")
    panels: list[tuple[str | None, str]] = [(id_set, m) for m in SCALE_METRICS if id_set] + [(None, "weight_cosine_mean")]
    panels += [(ood_set, "auroc_mi")] if ood_set else []
    lines = _sweep_lines(groups, seen, docs, panels, [member_parameters(runs) for runs in docs], [backbone_dims(runs) for runs in docs])
    titles = [("" if s is None else s, m) for s, m in panels]
    return draw.sweep_figure(lines, titles, "parameters per member", "scale") if lines and id_set else None


def draw_figures(groups: Sequence[RunGroup]) -> dict[str, Figure]:
    """Every comparison figure the groups' runs allow, by name; says on stderr which could not be drawn and why."""
    seen = looks(groups)
    docs = [[d for run in g.runs if (d := _results(run))] for g in groups]
    roles = set_roles([d for runs in docs for d in runs])
    figures: dict[str, Figure] = {}
    save_hint = "no run has saved predictions of it (test with --save_predictions true)"
    for name, role in roles.items():
        if role != "ood":
            if fig := _reliability(groups, seen, name):
                figures[f"reliability_{name}"] = fig
            else:
                skip(f"reliability_{name}", save_hint)
    id_set = next((n for n, r in roles.items() if r == "id"), None)
    for name in (n for n, r in roles.items() if r == "ood"):
        curves = _ood_curves(groups, seen, id_set, name) if id_set else {}
        for score in SCORES:
            if not curves.get(score):
                why = "no id set to compare with" if id_set is None else save_hint.replace("of it", f"of {id_set} and {name}")
                skip(f"ood_roc_{name}_{score}", why + ("" if score != "mi" else "; mi needs M > 1"))
                continue
            for kind in ("roc", "pr"):
                figures[f"ood_{kind}_{name}_{score}"] = draw.ood_curve_figure(curves[score], kind, name, id_set or "", score)
    for name, role in roles.items():
        axes = DIVERSITY_AXES["ood" if role == "ood" else "id"]
        points = [(look, [m for d in runs if isinstance(m := (d.get("sets") or {}).get(name), dict)]) for look, runs in zip(seen, docs)]
        if points := [p for p in points if p[1]]:
            figures[f"diversity_{name}"] = draw.diversity_figure(points, name, axes)
    if fig := _training_curves(groups, seen):
        figures["training_curves"] = fig
    else:
        skip("training_curves", "no run has TensorBoard event files with val/ curves (fit with the default TensorBoard logger)")
    if fig := _ensemble_size(groups, seen, docs, roles):
        figures["ensemble_size"] = fig
    else:
        skip("ensemble_size", "no method label has runs with different M (run it with several --model.num_members)")
    if fig := _scale(groups, seen, docs, roles):
        figures["scale"] = fig
    else:
        skip("scale", "no method has rows of different sizes (vary --model.hidden_sizes / --model.width, as configs/study/scale_digits.yaml)")
    if not roles:
        skip("comparison", "no run has a readable results.json")
    return figures


def draw_report_figures(groups: Sequence[RunGroup], out: Path, formats: Sequence[str] = ("png",), dpi: int = 200) -> list[Path]:
    """Draw every comparison figure the runs allow into <out>/figures/, one file per figure and format; return the paths written.
    A figure the runs cannot give (no saved predictions, no event files, a single M) is skipped with one line on stderr saying why
    and how to get it."""
    check_formats(formats, dpi)  # before any drawing: a bad option fails fast
    paths = []
    for name, fig in draw_figures(groups).items():
        paths += save_figure(fig, Path(out) / "figures" / name, formats, dpi)
    return paths
