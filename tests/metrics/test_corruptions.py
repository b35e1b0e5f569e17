"""Tests of ensemble_lab.metrics.corruptions against numpy means over the grid."""

import numpy as np
import pytest

from ensemble_lab.errors import ConfigError
from ensemble_lab.metrics.corruptions import FACTS, corruption_averages


def test_averages_are_plain_means_over_every_corruption_and_severity() -> None:
    rng = np.random.default_rng(0)
    grid = {(c, s): {"acc": rng.random(), "nll": rng.random() * 3, "ece": rng.random() / 5, "brier": 1.0}
            for c in ("gaussian_noise", "fog", "jpeg") for s in range(1, 6)}
    result = corruption_averages(grid)
    assert set(result) == {name for name, *_ in FACTS}
    table = np.array([[v["acc"], v["nll"], v["ece"]] for v in grid.values()])  # (15, 3)
    assert [result["c_acc"], result["c_nll"], result["c_ece"]] == pytest.approx(table.mean(0).tolist())


def test_unequal_severity_grids_and_missing_metrics_are_one_line_errors() -> None:
    values = {"acc": 0.5, "nll": 1.0, "ece": 0.1}
    with pytest.raises(ConfigError, match="different severities"):
        corruption_averages({("fog", 1): values, ("fog", 2): values, ("jpeg", 1): values})
    with pytest.raises(ConfigError, match="'ece' is missing"):
        corruption_averages({("fog", 5): {"acc": 0.5, "nll": 1.0}})
    with pytest.raises(ConfigError, match="no corrupted"):
        corruption_averages({})
