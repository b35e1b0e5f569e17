"""``report`` fills the extended metrics of runs tested before they existed from their saved predictions, and the
numbers equal what a test writes today (the same run's results.json before its new keys were removed)."""

import json

import numpy as np
import pytest

from ensemble_lab.evaluation.extended import is_extended
from ensemble_lab.report.columns import preset_columns
from ensemble_lab.report.fill import fill_from_predictions
from ensemble_lab.report.groups import build_report
from tests.evaluation.test_extended_metrics import run_tested


def as_before(run, keep_logits: bool) -> dict:
    """Turn a run into one tested before the extended metrics: its results.json without them (nor the recorded α),
    and (keep_logits False) its predictions without member_logits. Returns today's results.json."""
    today = json.loads((run / "results.json").read_text())
    old = {**today, "sets": {n: {k: v for k, v in m.items() if not is_extended(k)} for n, m in today["sets"].items()}}
    del old["conformal_alpha"]
    (run / "results.json").write_text(json.dumps(old))
    if not keep_logits:
        for path in (run / "predictions").glob("*.npz"):
            with np.load(path) as saved:
                arrays = {k: saved[k] for k in saved.files if k != "member_logits"}
            np.savez(path, **arrays)
    return today


@pytest.mark.parametrize("keep_logits", [True, False])
def test_the_report_fills_what_a_test_writes_today(tmp_path, keep_logits):
    run = tmp_path / "run"
    run_tested(run, alpha=0.1)  # the default α, which an older run's report assumes
    today = as_before(run, keep_logits)
    filled = fill_from_predictions(run / "results.json", json.loads((run / "results.json").read_text()))
    for name, metrics in today["sets"].items():
        for key, value in metrics.items():
            if not is_extended(key):
                continue
            if key.endswith(("maxlogit", "energy")) and not keep_logits:
                assert key not in filled["sets"][name]  # the probabilities lost the logits' per-sample constant
            else:
                assert filled["sets"][name][key] == pytest.approx(value, abs=1e-12), (name, key)
    # the report's rows show them: the selective preset's columns, the run's own values
    (group,) = build_report([run], columns=preset_columns("selective"))
    assert group.stats["digits"]["aurc_msp"].mean == pytest.approx(today["sets"]["digits"]["aurc_msp"], abs=1e-12)
    assert group.stats["digits"]["conformal_set_size_aps"].mean == pytest.approx(today["sets"]["digits"]["conformal_set_size_aps"], abs=1e-12)


def test_without_saved_predictions_nothing_is_filled(tmp_path):
    run = tmp_path / "run"
    run_tested(run)
    as_before(run, keep_logits=True)
    for path in (run / "predictions").glob("*.npz"):
        path.unlink()
    doc = json.loads((run / "results.json").read_text())
    assert fill_from_predictions(run / "results.json", doc) == doc


def test_regression_predictions_fill_nothing(tmp_path):
    """A regression run saves mean / var, not member_probs: its results.json is read as it is (the report used to
    stop on a KeyError there)."""
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    doc = {"sets": {"diabetes": {"role": "id", "rmse": 50.0}, "diabetes_gap": {"role": "ood", "rmse": 60.0}}}
    (run / "results.json").write_text(json.dumps(doc))
    for name in ("diabetes", "diabetes_gap"):
        np.savez(run / "predictions" / f"{name}.npz", mean=np.zeros((2, 3, 1)), var=np.ones((2, 3, 1)), targets=np.zeros((3, 1)))
    assert fill_from_predictions(run / "results.json", doc) == doc
