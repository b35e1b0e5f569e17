"""The report's figures against a size: ``ensemble_size`` (metrics against M) and ``scale`` (against the parameters
of one member's network), with the lines they draw: which rows belong together, and why none do.
"""

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from ensemble_lab.config.run_config import MISSING, option_default  # a line's options left at the default show its value
from ensemble_lab.errors import ConfigError
from ensemble_lab.figures import comparison as draw
from ensemble_lab.figures.style import LINESTYLES, Look, who
from ensemble_lab.nn.backbones import backbone_from
from ensemble_lab.report.figure_rows import RunGroup
from ensemble_lab.runs.legacy_keys import translate_flat

#: the ensemble-size panels: metrics of the first id set, then AUROC (msp) on the first ood set
SIZE_METRICS = ("acc", "nll", "ece", "mi")
#: the scale panels: metrics of the first id set, then the weight cosine, then AUROC (mi) on the first ood set
SCALE_METRICS = ("acc", "mi", "disagreement")


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


def ensemble_size_figure(
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


def scale_figure(groups: Sequence[RunGroup], seen: list[Look], docs: list[list[dict[str, Any]]], roles: dict[str, str]) -> Figure | None:
    """The scale figure (metrics against the parameters of one member's network), or None when no method's rows differ in size."""
    id_set, ood_set = _first(roles, "id"), _first(roles, "ood")
    panels: list[tuple[str | None, str]] = [(id_set, m) for m in SCALE_METRICS if id_set] + [(None, "weight_cosine_mean")]
    panels += [(ood_set, "auroc_mi")] if ood_set else []
    lines = _sweep_lines(groups, seen, docs, panels, [member_parameters(runs) for runs in docs], [backbone_dims(runs) for runs in docs])
    titles = [("" if s is None else s, m) for s, m in panels]
    return draw.sweep_figure(lines, titles, "parameters per member", "scale") if lines and id_set else None
