"""`ensemble-lab report` on regression runs written by the test: the bootstrap of their metrics and their comparison figures."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from scipy.stats import norm
from sklearn.metrics import precision_recall_curve, roc_curve

from ensemble_lab.cli import main
from ensemble_lab.evaluation.regression_sets import pack, set_metrics, write_predictions
from ensemble_lab.figures.regression import LEVELS
from ensemble_lab.metrics.regression import regression_metrics
from ensemble_lab.metrics.tasks import RegressionTask
from ensemble_lab.report.figures import RunGroup, draw_figures
from ensemble_lab.report.groups import build_report
from ensemble_lab.report.tables import quality_cost
from tests.report.test_figures import write_curves
from tests.report.test_figures import write_run as write_classification_run

ROLES = {"diabetes": "id", "diabetes_gap": "ood"}
ROWS = {"diabetes": 80, "diabetes_gap": 40}


def targets_of(name: str) -> torch.Tensor:
    """The set's targets (N, 1), the same for every run (a paired bootstrap needs the same rows)."""
    gen = torch.Generator().manual_seed(len(name))
    return 150 + 50 * torch.randn(ROWS[name], 1, generator=gen, dtype=torch.float64)


def write_regression_run(run: Path, method: str, members: int, error: float, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A regression run as `test --save_predictions true` leaves it: results.json and predictions/<set>.npz."""
    gen = torch.Generator().manual_seed(seed + 10 * members)
    collected, stored = {}, {}
    for name in ROLES:
        targets = targets_of(name)
        mean = targets + error * torch.randn(members, len(targets), 1, generator=gen, dtype=torch.float64)
        var = torch.full_like(mean, 40.0**2)
        collected[name], stored[name] = (pack({"mean": mean, "var": var}), targets), (mean, var)
    sets = set_metrics(collected, ROLES, RegressionTask())
    run.mkdir(parents=True)
    doc = {"method": method, "num_members": members, "seed": seed, "datamodule": "TabularDataModule", "sets": sets,
           "cost": {"parameters": 1000 * members, "images_per_s": 500.0 / members}}  # fmt: skip
    (run / "results.json").write_text(json.dumps(doc))
    for name, (packed, targets) in collected.items():
        write_predictions(run, name, packed, targets)
    return stored


def test_single_regression_runs_get_a_paired_bootstrap_of_their_metrics(tmp_path, capsys):
    single = write_regression_run(tmp_path / "single", "SingleModel", 1, error=60.0)
    better = write_regression_run(tmp_path / "de", "DeepEnsemble", 4, error=25.0)
    out = tmp_path / "out"
    main(["report", str(tmp_path), "--out", str(out), "--resamples", "400", "--metrics", "rmse", "nll", "crps", "coverage_90", "width_90"])
    text = capsys.readouterr().out
    (row,) = [g for g in json.loads((out / "report.json").read_text()) if g["method"] == "DeepEnsemble"]
    targets = targets_of("diabetes")
    mine, theirs = regression_metrics(*better["diabetes"], targets), regression_metrics(*single["diabetes"], targets)
    for metric in ("rmse", "nll", "crps", "coverage_90", "width_90"):
        result = row["significance"]["diabetes"][metric]
        assert result["test"] == "bootstrap" and result["resamples"] == 400, metric
        assert result["difference"] == pytest.approx(mine[metric] - theirs[metric], rel=1e-5, abs=1e-6), metric
        assert result["ci"][0] <= result["difference"] <= result["ci"][1]
    assert row["significance"]["diabetes"]["rmse"]["significant"] and row["significance"]["diabetes"]["rmse"]["ci"][1] < 0
    assert "‡" in text and "not recomputable" not in text


def test_regression_comparison_figures_beside_classification_ones(tmp_path, capsys):
    """A report of regression and classification rows: coverage curves, the metric panels and the gap set's OOD
    curves for the regression rows, no reliability or risk-coverage figure of a regression set, and the
    classification figures as before."""
    stored = write_regression_run(tmp_path / "single", "SingleModel", 1, error=60.0)
    write_regression_run(tmp_path / "de", "DeepEnsemble", 4, error=25.0)
    write_classification_run(tmp_path / "be", "BatchEnsemble", "be", 4, seed=1)
    groups = [
        RunGroup("SingleModel", "SingleModel", "SingleModel", 1, (tmp_path / "single",)),
        RunGroup("DeepEnsemble", "DeepEnsemble", "DeepEnsemble", 4, (tmp_path / "de",)),
        RunGroup("be", "be", "BatchEnsemble", 4, (tmp_path / "be",)),
    ]
    figures = draw_figures(groups)
    assert {"coverage_diabetes", "coverage_diabetes_gap", "regression_metrics", "diversity_diabetes", "ood_roc_diabetes_gap_variance",
            "ood_pr_diabetes_gap_epistemic", "reliability_digits", "ood_roc_photos_msp"} <= set(figures)  # fmt: skip
    assert not any(name.startswith(("reliability_diabetes", "risk_coverage_diabetes", "ood_roc_diabetes_gap_msp")) for name in figures)
    # the single model's coverage line: the share of gap targets inside μ ± σ Φ⁻¹((1 + q)/2)
    ax = figures["coverage_diabetes_gap"].axes[0]
    line = next(line for line in ax.get_lines() if line.get_label().startswith("SingleModel"))
    mean, var = stored["diabetes_gap"]
    half = np.sqrt(var[0].numpy()) * norm.ppf((1 + LEVELS.numpy()[:-1]) / 2)
    expected = (np.abs(targets_of("diabetes_gap").numpy() - mean[0].numpy()) <= half).mean(axis=0)
    np.testing.assert_allclose(line.get_ydata()[:-1], expected, atol=1e-6)  # the saved predictions are float32
    # the metric panels: each row's rmse on each set is its results.json value
    rmse_ax = next(ax for ax in figures["regression_metrics"].axes if ax.get_title() == "RMSE")
    tops = sorted(round(float(line.get_ydata()[0]), 6) for line in rmse_ax.get_lines())
    docs = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("single", "de")]
    assert tops == sorted(round(d["sets"][s]["rmse"], 6) for d in docs for s in ROLES)
    err = capsys.readouterr().err
    assert "no ood_roc_diabetes_gap_epistemic" not in err and "no training_curves_regression figure" in err  # drawn for DE (M = 4)


def test_quality_against_cost_of_regression_rows_shows_rmse_nll_and_the_gap_auroc(tmp_path):
    stored = write_regression_run(tmp_path / "single", "SingleModel", 1, error=60.0)
    write_regression_run(tmp_path / "de", "DeepEnsemble", 4, error=25.0)
    figure = quality_cost(build_report([tmp_path]))
    rows = [ax.get_ylabel() for ax in figure.axes[::2]]  # two cost columns: parameters, images per s
    assert rows == ["diabetes rmse", "diabetes nll", "diabetes_gap auroc_variance"]
    drawn = [float(line.get_ydata()[0]) for line in figure.axes[0].get_lines() if line.get_marker() not in ("|", "_")]
    assert len(drawn) == 2 and pytest.approx(regression_metrics(*stored["diabetes"], targets_of("diabetes"))["rmse"], rel=1e-5) in drawn


def test_regression_ood_curves_are_scikit_learns_on_the_pooled_variances(tmp_path):
    """The gap set's ROC / PR curves of each row: scikit-learn's curves of the mixture's variance and of the variance of
    the member means (numpy, from the saved predictions), the runs of a row pooled; the single model has no epistemic one."""
    stored = {name: write_regression_run(tmp_path / name, "DeepEnsemble", 3, error=25.0 + 10 * k, seed=k) for k, name in enumerate(("a", "b"))}
    write_regression_run(tmp_path / "single", "SingleModel", 1, error=60.0)
    groups = [RunGroup("DeepEnsemble", "DeepEnsemble", "DeepEnsemble", 3, (tmp_path / "a", tmp_path / "b")),
              RunGroup("SingleModel", "SingleModel", "SingleModel", 1, (tmp_path / "single",))]  # fmt: skip
    figures = draw_figures(groups)
    assert "ood_roc_diabetes_gap_epistemic" in figures and "ood_pr_diabetes_gap_variance" in figures

    def scores(run: str, name: str, score: str) -> np.ndarray:
        mean, var = (t.float().double().numpy()[..., 0] for t in stored[run][name])  # (M, N): saved as float32
        return var.mean(0) + mean.var(0) if score == "variance" else mean.var(0)

    for score in ("variance", "epistemic"):
        id_scores = np.concatenate([scores(r, "diabetes", score) for r in ("a", "b")])
        ood = np.concatenate([scores(r, "diabetes_gap", score) for r in ("a", "b")])
        labels, pooled = np.r_[np.zeros(len(id_scores)), np.ones(len(ood))], np.r_[id_scores, ood]
        for kind, (x, y) in (("roc", roc_curve(labels, pooled)[:2]), ("pr", precision_recall_curve(labels, pooled)[1::-1])):
            lines = [line for line in figures[f"ood_{kind}_diabetes_gap_{score}"].axes[0].get_lines() if not line.get_label().startswith("_")]
            assert [line.get_label().split(":")[0] for line in lines] == (["DeepEnsemble, M=3", "SingleModel, M=1"] if score == "variance" else ["DeepEnsemble, M=3"])
            np.testing.assert_allclose(lines[0].get_xdata(), x, rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(lines[0].get_ydata(), y, rtol=1e-5, atol=1e-9)


def test_every_row_with_a_validation_curve_shows_in_its_panel_even_under_another(tmp_path):
    """The regression rows' val/weight_cosine: the Deep Ensemble's (≈ 0, independent members) lies exactly under the
    Packed Ensemble's, drawn later. Each row that logged the curve has a line of its values (the event files' mean over
    seeds), and the Deep Ensemble's colour still shows in the rendered panel; the single model (M = 1) logs none."""
    tags = ("val/nll", "val/rmse", "val/weight_cosine")
    rows = {"SingleModel": (1, [0.0]), "DeepEnsemble": (4, [0.01, 0.02]), "BatchEnsemble": (4, [0.6, 0.62]), "PackedEnsemble": (4, [0.01, 0.02])}
    groups = []
    for method, (m, cosines) in rows.items():
        runs = []
        for seed, cosine in enumerate(cosines):
            run = tmp_path / method / f"seed_{seed}"
            write_regression_run(run, method, m, error=30.0, seed=seed)
            curves = {"val/nll": [5.0 - 0.1 * e for e in range(6)], "val/rmse": [60.0 - e for e in range(6)]}
            if m > 1:
                curves["val/weight_cosine"] = [cosine + 0.001 * e for e in range(6)]
            write_curves(run, curves)
            runs.append(run)
        groups.append(RunGroup(method, method, method, m, tuple(runs)))
    fig = draw_figures(groups)["training_curves_regression"]
    (ax,) = [ax for ax in fig.axes if ax.get_title() == "val/weight_cosine"]
    assert [ax.get_title() for ax in fig.axes[: len(tags)]] == list(tags)
    lines = ax.get_lines()
    assert len(lines) == 3  # every ensemble, not the single model
    for line, (method, (_, cosines)) in zip(lines, [(k, v) for k, v in rows.items() if v[0] > 1]):
        np.testing.assert_allclose(line.get_xdata(), np.arange(1, 7))
        np.testing.assert_allclose(line.get_ydata(), np.mean(cosines) + 0.001 * np.arange(6), rtol=1e-6)
    de_colour = lines[0].get_color()
    assert de_colour not in {line.get_color() for line in lines[1:]}
    # rendered: pixels of the Deep Ensemble's colour inside the panel, though the Packed Ensemble's line covers its line
    fig.set_dpi(100)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)  # (H, W, 3)
    box = ax.get_window_extent()
    height = pixels.shape[0]
    panel = pixels[int(height - box.y1) : int(height - box.y0), int(box.x0) : int(box.x1)]
    colour = np.array([int(de_colour[k : k + 2], 16) for k in (1, 3, 5)])
    assert (np.abs(panel - colour).sum(-1) < 40).sum() >= 20
