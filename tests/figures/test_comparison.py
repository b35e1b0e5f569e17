"""The comparison figures' shared OOD curves (figures/comparison.py) against hand-worked points and scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_curve, roc_curve

from ensemble_lab.figures.comparison import ood_curve, ood_curve_figures
from ensemble_lab.figures.style import Look

ID_SCORES, OOD_SCORES = torch.tensor([0.1, 0.4]), torch.tensor([0.35, 0.8])


def test_ood_curve_is_the_hand_worked_roc_and_precision_recall_curve():
    """id 0.1, 0.4 and ood 0.35, 0.8, OOD positive: lowering the threshold past 0.8, 0.4, 0.35, 0.1 catches
    ood, id, ood, id in turn."""
    fpr, tpr = ood_curve(ID_SCORES, OOD_SCORES, "roc")
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    recall, precision = ood_curve(ID_SCORES, OOD_SCORES, "pr")
    # thresholds 0.1, 0.35, 0.4, 0.8 and then none flagged (precision 1, recall 0 by convention)
    np.testing.assert_allclose(recall, [1, 1, 0.5, 0.5, 0])
    np.testing.assert_allclose(precision, [2 / 4, 2 / 3, 1 / 2, 1, 1])


def test_ood_curve_figures_draw_each_score_with_rows_as_scikit_learn_curves():
    gen = torch.Generator().manual_seed(0)
    rows = [(Look(f"row {k}", colour, "o"), torch.rand(30, generator=gen), torch.rand(20, generator=gen) + 0.3 * k)
            for k, colour in enumerate(("#0072B2", "#E69F00"))]  # fmt: skip
    figures = ood_curve_figures({"msp": rows, "mi": []}, "photos", "digits")
    assert list(figures) == ["ood_roc_photos_msp", "ood_pr_photos_msp"]  # no rows of mi: no figure of it
    for kind, figure in (("roc", figures["ood_roc_photos_msp"]), ("pr", figures["ood_pr_photos_msp"])):
        ax = figure.axes[0]
        assert ax.get_title() == "photos vs digits, score: msp"
        lines = [line for line in ax.get_lines() if line.get_label().startswith("row")]
        for line, (_, id_scores, ood_scores) in zip(lines, rows, strict=True):
            labels = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
            scores = np.r_[id_scores.numpy(), ood_scores.numpy()]
            x, y = roc_curve(labels, scores)[:2] if kind == "roc" else precision_recall_curve(labels, scores)[1::-1]
            np.testing.assert_allclose(line.get_xdata(), x)
            np.testing.assert_allclose(line.get_ydata(), y)


def test_ood_curve_of_an_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="roc or pr"):
        ood_curve(ID_SCORES, OOD_SCORES, "det")
