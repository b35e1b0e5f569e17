"""The report's comparison figures: every method of a report in one figure, from the runs' saved files.

``draw_report_figures(groups, out)`` writes into ``<out>/figures/`` (docs/figures.md shows each):

- ``reliability_<set>``: per id / shift set, one reliability diagram per row with its samples per bin
  (needs ``predictions/<set>.npz``: test with ``--save_predictions true``);
- ``ood_roc_<set>_<score>`` and ``ood_pr_<set>_<score>``: per OOD set and score (msp, entropy, mi), every
  row's ROC / precision-recall curve against the first id set, AUROC / AUPR in the legend (predictions too);
- ``diversity_<set>``: disagreement and mi against quality, one marker per run (results.json alone);
- ``training_curves``: val/acc, val/nll, val/mi, val/disagreement and val/weight_cosine per epoch, mean ±
  std over seeds (the runs' TensorBoard event files);
- ``ensemble_size``: metrics against M, a line per set of rows trained alike but for M (per method: a study's
  ``be_m2``, ``be_m4`` ... join into one line, a variant at a single M such as ``be_rank2`` stays out; results.json alone);
- ``scale``: accuracy, diversity (mi, disagreement), weight cosine and AUROC (mi) against the parameters of one member's
  network, for methods whose rows differ in size (a width or depth sweep, a line each; results.json alone).

A row's predictions are pooled over its runs: the curves, the ECE and AUROC / AUPR in titles and legends
are those of all its runs' samples together (the tables' numbers are means over runs, so they differ a little).
"""

import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ensemble_lab.config.run_config import MISSING, option_default  # a line's options left at the default show its value
from ensemble_lab.errors import ConfigError
from ensemble_lab.figures import comparison as draw
from ensemble_lab.figures.style import LINESTYLES, MARKERS, Look, check_formats, label_colours, save_figure, who
from ensemble_lab.metrics.classification import member_mean, uncertainty_scores
from ensemble_lab.nn.backbones import backbone_from
from ensemble_lab.report.training_curves import CURVE_TAGS, has_epochs, mean_std, per_epoch, read_scalars
from ensemble_lab.runs.legacy_keys import translate_flat

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
    # the options its runs were trained with (flat, seeds aside); None if unrecorded. Not compared: a row stays hashable
    config: Mapping[str, Any] | None = field(default=None, compare=False)


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


#: the options that set M in a run's flat config: left out when asking whether two rows differ in M alone
MEMBER_KEYS = frozenset({"model.init_args.num_members"})


def _short(key: str) -> str:
    return key.removeprefix("model.init_args.").removeprefix("trainer.")


def member_lines(groups: Sequence[RunGroup]) -> tuple[list[tuple[str, list[int]]], str]:
    """(legend name, rows by M) of each line of the ensemble-size figure, and why there is none when there is none.

    Rows of one method whose recorded configurations agree in everything but M make a line, whatever their
    labels (a study's ``be_m2``, ``be_m4``, ``be_m8``); a variant trained at one M only (``be_rank2``) is on no
    line. A method with several lines (rank 1 and rank 2 at M = 2 and 4) names each by the options that set
    it apart. Rows whose runs recorded no configuration fall back to their labels: a label's rows at several
    M, or a method's one-M labels when their M are all different.
    """
    by_method: dict[str | None, list[int]] = {}
    for k, g in enumerate(groups):
        if g.num_members is not None:
            by_method.setdefault(g.method, []).append(k)
    lines: list[tuple[str, list[int]]] = []
    mixed: list[str] = []  # why a method's rows at several M make no line
    for method, rows in by_method.items():
        known = [k for k in rows if groups[k].config]
        alike: dict[str, list[int]] = {}  # rows trained alike but for M, by their configuration without M
        for k in known:
            rest = {key: v for key, v in (groups[k].config or {}).items() if key not in MEMBER_KEYS}
            alike.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(k)
        found = []
        for same in alike.values():
            first_per_m = list({groups[k].num_members: k for k in reversed(same)}.values())  # one row per M: the first
            if len(first_per_m) > 1:
                found.append(sorted(first_per_m, key=lambda k: groups[k].num_members or 0))
        unknown = [k for k in rows if k not in known]  # runs that recorded no configuration: by label
        for label in dict.fromkeys(groups[k].label for k in unknown):
            own = [k for k in unknown if groups[k].label == label]
            if len({groups[k].num_members for k in own}) > 1:
                found.append(sorted(own, key=lambda k: groups[k].num_members or 0))
        single = [k for k in unknown if sum(groups[j].label == groups[k].label for j in unknown) == 1]
        if len(single) > 1 and len({groups[k].num_members for k in single}) == len(single):
            found.append(sorted(single, key=lambda k: groups[k].num_members or 0))
        lines += [(_line_name(groups, line, found), line) for line in found]
        if not found and len({groups[k].num_members for k in rows}) > 1:
            mixed.append(_why_no_line(groups, rows, known))
    if lines:
        return lines, ""
    if mixed:
        return [], "; ".join(mixed)
    sizes = sorted({g.num_members for g in groups if g.num_members is not None})
    if len(sizes) > 1:
        return [], f"M differs only between methods ({', '.join(f'M={m}' for m in sizes)}); train one method at several --model.num_members"
    return [], f"every row has {'M=' + str(sizes[0]) if sizes else 'no recorded M'}; train a method at several --model.num_members"


def _line_name(groups: Sequence[RunGroup], line: list[int], lines: list[list[int]]) -> str:
    """A line's legend: its label (when it has one) or method, and, beside other lines of its method, what sets it apart."""
    first = groups[line[0]]
    name = who(first.method, None, first.label) if len({groups[k].label for k in line}) == 1 else str(first.method)
    if len(lines) < 2 or not all(groups[other[0]].config for other in lines):
        return name
    configs = [groups[other[0]].config or {} for other in lines]
    keys = sorted({key for c in configs for key in c if key not in MEMBER_KEYS and len({json.dumps(d.get(key), default=str) for d in configs}) > 1})

    own = first.config or {}
    values = {key: own[key] if key in own else option_default(own, key) for key in keys[:2]}
    shown = [f"{_short(key)}={'default' if v is MISSING else json.dumps(v, default=str)}" for key, v in values.items()]
    return f"{name} ({', '.join(shown)}{', ...' if len(keys) > 2 else ''})" if shown else name


def _why_no_line(groups: Sequence[RunGroup], rows: list[int], known: list[int]) -> str:
    """Why a method's rows at several M make no line: the options two of them differ in besides M, or no record to tell."""
    method = groups[rows[0]].method
    if len(known) < len(rows):
        return f"{method}'s rows at several M are several per M, and not all recorded their configuration to tell which belong together"
    best: tuple[int, str] | None = None
    for a in known:
        for b in known:
            if (groups[a].num_members or 0) < (groups[b].num_members or 0):
                ca, cb = groups[a].config or {}, groups[b].config or {}
                keys = sorted(k for k in set(ca) | set(cb) if k not in MEMBER_KEYS and ca.get(k) != cb.get(k))
                if keys and (best is None or len(keys) < best[0]):
                    best = (len(keys), f"{groups[a].name} and {groups[b].name} also differ in {', '.join(map(_short, keys[:3]))}")
    detail = f" ({best[1]})" if best else ""
    return f"no two {method} rows differ in M alone{detail}; train one configuration at several --model.num_members"


def _ensemble_size(
    groups: Sequence[RunGroup], seen: list[Look], docs: list[list[dict[str, Any]]], roles: dict[str, str]
) -> tuple[Figure | None, str]:
    """The ensemble-size figure, or None and why not."""
    id_set, ood_set = _first(roles, "id"), _first(roles, "ood")
    panels = [(id_set, m) for m in SIZE_METRICS if id_set] + ([(ood_set, "auroc_msp")] if ood_set else [])
    if not panels:
        return None, "no id or ood test set in the runs"
    found, why = member_lines(groups)
    if not found:
        return None, why
    lines, per_method = [], Counter[str | None]()
    for name, rows in found:
        points = [(float(groups[k].num_members or 0), [[v for d in docs[k] if (v := _value(d, s, m)) is not None] for s, m in panels]) for k in rows]
        look = seen[min(rows)]  # a joined line takes the colour of its first row in the report
        style = LINESTYLES[per_method[groups[rows[0]].method] % len(LINESTYLES)]  # lines of one method that overlap stay apart
        per_method[groups[rows[0]].method] += 1
        lines.append((Look(name, look.colour, look.marker, style), points))
    return draw.sweep_figure(lines, [(str(s), m) for s, m in panels], "members M", "ensemble size"), ""


def member_parameters(docs: Sequence[dict[str, Any]]) -> float | None:
    """Parameters of one member's network (results.json ``cost``), the same in every run of a row; None if unrecorded."""
    counts = {c for d in docs if isinstance(c := (d.get("cost") or {}).get("parameters_per_member"), int)}
    return float(counts.pop()) if len(counts) == 1 else None


def backbone_dims(docs: Sequence[dict[str, Any]]) -> dict[str, int] | None:
    """The depth and width of a row's backbone (results.json ``config``), the same in every run; None if unrecorded."""
    found = set()
    for doc in docs:
        config = translate_flat(doc.get("config") or {})  # older option names: today's
        prefix = "model.init_args.backbone."
        options = {k.removeprefix(prefix + "init_args."): v for k, v in config.items() if k.startswith(prefix + "init_args.")}
        try:
            backbone = backbone_from({"class_path": config[prefix + "class_path"], "init_args": options})
            found.add(tuple(sorted(backbone.dimensions().items())))
        except (ConfigError, KeyError, TypeError, IndexError):  # a hand-written record
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
    fig, why = _ensemble_size(groups, seen, docs, roles)
    if fig is not None:
        figures["ensemble_size"] = fig
    else:
        skip("ensemble_size", why)
    if fig := _scale(groups, seen, docs, roles):
        figures["scale"] = fig
    else:
        skip("scale", "no method has rows of different sizes (vary --model.backbone.hidden_sizes / --model.backbone.width, as configs/study/scale_digits.yaml)")
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
