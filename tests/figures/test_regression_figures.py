"""A regression run's figures: the coverage curve against a numpy count, the predictive bands, files and TensorBoard images."""

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from scipy.stats import norm
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ensemble_lab.evaluation.regression_sets import pack, write_figures
from ensemble_lab.figures.regression import LEVELS, regression_run_figures

ROLES = {"diabetes": "id", "diabetes_noise": "shift", "diabetes_gap": "ood"}
RESULTS = {"method": "DeepEnsemble", "run_name": "de", "num_members": 3}


def fake_sets(num_members: int, rows: int = 60) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """{set: (means, variances (M, N, 1), targets (N, 1))} in original units, each set noisier than the last."""
    gen = torch.Generator().manual_seed(num_members)
    sets = {}
    for k, name in enumerate(ROLES):
        targets = 150 + 50 * torch.randn(rows, 1, generator=gen, dtype=torch.float64)
        mean = targets + (20 + 10 * k) * torch.randn(num_members, rows, 1, generator=gen, dtype=torch.float64)
        sets[name] = (mean, torch.full_like(mean, 30.0**2), targets)
    return sets


def test_coverage_curve_is_a_count_of_targets_inside_each_interval():
    """One member: the mixture is a Gaussian, so its interval at level q is μ ± σ Φ⁻¹((1 + q)/2); each set's line
    is the share of targets inside it at every level, and the diagonal is drawn."""
    sets = fake_sets(1)
    figure = regression_run_figures(sets, ROLES, {**RESULTS, "num_members": 1})["coverage_calibration"]
    ax = figure.axes[0]
    diagonal, *lines = ax.get_lines()
    assert list(diagonal.get_xdata()) == [0, 1] and list(diagonal.get_ydata()) == [0, 1]
    assert [line.get_label().split(":")[0] for line in lines] == [f"{n} ({r})" for n, r in ROLES.items()]
    for line, (mean, var, targets) in zip(lines, sets.values()):
        half = np.sqrt(var[0].numpy()) * norm.ppf((1 + LEVELS.numpy()[:-1]) / 2)  # (N, 1) × (L - 1,): q = 1 is the whole line
        expected = (np.abs(targets.numpy() - mean[0].numpy()) <= half).mean(axis=0)
        np.testing.assert_allclose(line.get_xdata(), LEVELS.numpy())
        np.testing.assert_allclose(line.get_ydata()[:-1], expected, atol=1e-12)
        assert line.get_ydata()[-1] == 1.0
    assert ax.get_xlabel() and ax.get_ylabel() == "observed coverage"


@pytest.mark.parametrize("members", [1, 3])
def test_predictive_bands_show_the_id_and_gap_sets_sorted_by_target(members):
    sets = fake_sets(members)
    figure = regression_run_figures(sets, ROLES, {**RESULTS, "num_members": members})["predictive_bands"]
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title().split(":")[0] for ax in panels] == ["diabetes (id)", "diabetes_gap (ood)"]  # no shift panel
    for ax, name in zip(panels, ("diabetes", "diabetes_gap")):
        mean, var, targets = sets[name]
        points = ax.collections[-1].get_offsets()  # the targets, drawn last
        np.testing.assert_allclose(np.asarray(points)[:, 1], np.sort(targets[:, 0].numpy()))
        order = np.argsort(targets[:, 0].numpy())
        np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), mean.mean(0)[order, 0].numpy())  # the mixture mean
        total_sd = np.sqrt(var.mean(0)[:, 0].numpy() + mean.var(0, correction=0)[:, 0].numpy())[order]
        inside = np.mean(np.abs(np.sort(targets[:, 0].numpy()) - mean.mean(0)[order, 0].numpy()) <= 2 * total_sd)
        assert f"{inside:.0%} inside" in ax.get_title()
        bands = len(ax.collections) - 1
        assert bands == (2 if members > 1 else 1)  # the epistemic band only for an ensemble
    assert panels[0].get_ylabel() == "target (original units)" and panels[0].get_xlabel() == "rows, sorted by target"


def test_a_regression_run_writes_its_figures_and_tensorboard_images(tmp_path):
    sets = fake_sets(3)
    collected = {name: (pack({"mean": mean, "var": var}), targets) for name, (mean, var, targets) in sets.items()}  # as the store keeps them
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    paths = write_figures(tmp_path, collected, ROLES, RESULTS, [logger], step=3)
    logger.experiment.flush()
    assert sorted(p.name for p in paths) == ["coverage_calibration.png", "predictive_bands.png"]
    assert all(p.parent == tmp_path / "figures" and p.stat().st_size > 10_000 for p in paths)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {"test/figures/coverage_calibration", "test/figures/predictive_bands"}
    assert regression_run_figures({}, ROLES, RESULTS) == {}  # a run without sets draws nothing (no empty figure)
