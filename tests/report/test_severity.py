"""The severity figure's numbers: per run, the mean over corruptions at each severity (against numpy)."""

import numpy as np
import pytest

from ensemble_lab.figures.style import Look
from ensemble_lab.report.severity import corrupted_datasets, run_severity_means, severity_figures


def _doc(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    sets = {f"c_{c}_{s}": {"role": "shift", "corrupted": "c", "corruption": c, "severity": s, "acc": rng.random(), "nll": rng.random(), "ece": rng.random()}
            for c in ("fog", "snow") for s in (1, 2, 5)}  # fmt: skip
    sets["m_fog"] = {"role": "shift", "corrupted": "m", "corruption": "fog", "severity": None, "acc": 0.5}  # one level: no figure
    return {"sets": {"clean": {"role": "id", "acc": 0.9}, **sets}}


def test_severity_means_and_which_datasets_get_a_figure():
    doc = _doc(0)
    means = run_severity_means(doc, "c", "nll")
    assert list(means) == [1, 2, 5]
    for s in (1, 2, 5):
        assert means[s] == pytest.approx(np.mean([doc["sets"][f"c_{c}_{s}"]["nll"] for c in ("fog", "snow")]))
    assert corrupted_datasets([doc]) == ["c"]


def test_severity_figure_has_a_line_per_row_in_each_panel():
    looks = [Look("single", "#0072B2", "o"), Look("ensemble", "#E69F00", "s")]
    figures = severity_figures(looks, [[_doc(0), _doc(1)], [_doc(2)]])
    assert list(figures) == ["severity_c"]
    panels = figures["severity_c"].axes[:3]
    assert [len(ax.containers) for ax in panels] == [2, 2, 2]  # one error-bar line per row
    x, y = (np.asarray(v, dtype=float) for v in panels[0].containers[0].lines[0].get_data())
    expected = [np.mean([run_severity_means(d, "c", "acc")[s] for d in (_doc(0), _doc(1))]) for s in (1, 2, 5)]
    np.testing.assert_allclose(x, [1, 2, 5])
    np.testing.assert_allclose(y, expected)
