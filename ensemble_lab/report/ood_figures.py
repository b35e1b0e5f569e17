"""The report's OOD ROC / precision-recall figures, of classification rows (report/figures.py) and regression rows
(report/regression_figures.py) alike: each row's scores of its runs pooled, two figures per OOD set and score.

The two tasks differ only in how a run's scores of a set are read (``scores_of``) and in the score a single
network cannot have (mi, the epistemic variance: 0 everywhere at M = 1); the drawing is figures/comparison.py's.
"""

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ensemble_lab.figures.comparison import OodRow, ood_curve_figures
from ensemble_lab.figures.style import Look
from ensemble_lab.report.figure_rows import RunGroup, skip

#: a run's scores of one set ({score: (N,)}), or None when the run saved no predictions of it
ScoresOf = Callable[[Path, str], Mapping[str, Tensor] | None]


def pooled_ood_scores(groups: Sequence[RunGroup], seen: Sequence[Look], id_set: str, ood_set: str, scores_of: ScoresOf,
                      scores: Sequence[str], needs_members: str) -> dict[str, list[OodRow]]:  # fmt: skip
    """{score: [(look, pooled id scores, pooled ood scores)]} of the rows with both sets' scores in some run.

    Args:
        groups: the rows.
        seen: each row's look.
        id_set: the in-distribution set (the negatives).
        ood_set: the OOD set (the positives).
        scores_of: a run's scores of a set.
        scores: the scores drawn, in order.
        needs_members: the score a single network (M = 1) has no curve of.
    """
    curves: dict[str, list[OodRow]] = {s: [] for s in scores}
    for group, look in zip(groups, seen):
        pairs = [(i, o) for run in group.runs if (i := scores_of(run, id_set)) is not None and (o := scores_of(run, ood_set)) is not None]
        for score in scores:
            if pairs and not (score == needs_members and group.num_members == 1):
                id_scores = torch.cat([i[score] for i, _ in pairs])  # (runs · N_id,)
                curves[score].append((look, id_scores, torch.cat([o[score] for _, o in pairs])))
    return curves


def ood_figures(groups: Sequence[RunGroup], seen: Sequence[Look], roles: Mapping[str, str], scores_of: ScoresOf, scores: Sequence[str],
                needs_members: str, task: str = "") -> dict[str, Figure]:  # fmt: skip
    """``ood_roc_<set>_<score>`` and ``ood_pr_<set>_<score>`` per OOD set of ``roles`` against its first id set; says
    on stderr which could not be drawn and why.

    Args:
        groups: the rows.
        seen: each row's look.
        roles: {set name: role} of the sets to draw (one task's).
        scores_of: a run's scores of a set.
        scores: the scores drawn, in order.
        needs_members: the score a single network (M = 1) has no curve of.
        task: the sets' task for the messages ("regression " or "").
    """
    id_set = next((n for n, r in roles.items() if r == "id"), None)
    figures: dict[str, Figure] = {}
    for name in (n for n, r in roles.items() if r == "ood"):
        curves = pooled_ood_scores(groups, seen, id_set, name, scores_of, scores, needs_members) if id_set else {}
        for score in (s for s in scores if not curves.get(s)):
            why = f"no {task}id set to compare with" if id_set is None else f"no run has saved predictions of {id_set} and {name} (test with --save_predictions true)"
            skip(f"ood_roc_{name}_{score}", why + (f"; the {score} score needs M > 1" if score == needs_members else ""))
        figures.update(ood_curve_figures(curves, name, id_set or ""))
    return figures
