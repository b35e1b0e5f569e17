"""Both OOD conventions reach every output: results.json, results.csv, TensorBoard and the report."""

import csv

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import average_precision_score, roc_curve
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import REPO, TINY_TRAINER, read_results, run_dirs

ID_POSITIVE = [f"{family}_{score}" for family in ("aupr_in", "fpr95_in") for score in ("msp", "entropy", "mi")]


def scores(member_probs: np.ndarray) -> dict[str, np.ndarray]:
    """msp, entropy and mi of member probabilities (M, N, C), recomputed with numpy / scipy."""
    mean = member_probs.astype(np.float64).mean(0)
    total = scipy_entropy(mean, axis=-1)
    return {"msp": 1 - mean.max(-1), "entropy": total, "mi": total - scipy_entropy(member_probs.astype(np.float64), axis=-1).mean(0)}


@pytest.mark.slow
def test_id_positive_metrics_reach_every_output(cli, tmp_path, capsys):
    config = REPO / "configs" / "digits" / "batch_ensemble.yaml"
    cli("fit", f"--config={config}", "--model.num_members=2", *TINY_TRAINER, "--save_predictions=true", "--figures=false")
    (run,) = run_dirs(tmp_path)
    ood = read_results(run)["sets"]["photo_patches"]
    id_scores = scores(np.load(run / "predictions" / "digits.npz")["member_probs"])
    ood_scores = scores(np.load(run / "predictions" / "photo_patches.npz")["member_probs"])
    for name in ("msp", "entropy", "mi"):  # sklearn with ID as the positive class and the scores negated
        is_id = np.r_[np.ones(len(id_scores[name])), np.zeros(len(ood_scores[name]))]
        negated = -np.r_[id_scores[name], ood_scores[name]]
        assert ood[f"aupr_in_{name}"] == pytest.approx(average_precision_score(is_id, negated), abs=1e-5), name
        fpr, tpr, _ = roc_curve(is_id, negated, drop_intermediate=False)
        assert ood[f"fpr95_in_{name}"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-5), name

    with open(run / "results.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["set"] == "photo_patches")
    assert all(float(row[key]) == pytest.approx(ood[key]) for key in ID_POSITIVE)
    tags: set[str] = set()
    for events in run.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {f"test/photo_patches/{key}" for key in ID_POSITIVE} <= tags

    capsys.readouterr()
    cli("report", str(run), "--preset", "paper", "--ood_positive", "id", "--ood_score", "entropy", "--format", "csv")
    header = capsys.readouterr().out
    assert "aupr_in_entropy" in header and "fpr95_in_entropy" in header and "aupr_entropy" not in header
