"""Tests of ensemble_lab.metrics.de_equivalent on synthetic monotone curves with known inverses."""

import numpy as np
import pytest

from ensemble_lab.errors import ConfigError
from ensemble_lab.metrics.de_equivalent import deep_ensemble_equivalent, fraction_of_de_gain


def curve(size: np.ndarray | float) -> np.ndarray | float:
    """A monotone decreasing NLL-versus-size curve: 0.2 + 0.3 / size."""
    return 0.2 + 0.3 / np.asarray(size, dtype=float)


def test_integer_sizes_are_recovered_exactly() -> None:
    nll = curve(np.arange(1, 9)).tolist()
    for k in range(1, 9):
        assert deep_ensemble_equivalent(nll, nll[k - 1]) == pytest.approx(k)


@pytest.mark.parametrize("target_size", [1.25, 2.5, 4.9, 7.01])
def test_fractional_size_is_the_linear_interpolation_between_neighbours(target_size: float) -> None:
    sizes = np.arange(1, 9)
    nll = curve(sizes)
    # numpy's interp on the decreasing curve (reversed to increasing x) inverts the piecewise-linear curve
    method = float(np.interp(target_size, sizes, nll))
    assert deep_ensemble_equivalent(nll.tolist(), method) == pytest.approx(target_size)
    assert deep_ensemble_equivalent(nll.tolist(), method) == pytest.approx(float(np.interp(method, nll[::-1], sizes[::-1])))


def test_worse_than_one_network_is_one_and_beyond_k_extrapolates_or_is_none() -> None:
    nll = curve(np.arange(1, 5)).tolist()  # 0.5, 0.35, 0.3, 0.275
    assert deep_ensemble_equivalent(nll, 0.9) == 1.0
    # last segment: slope 0.025 per member, so 0.25 is one segment beyond size 4
    assert deep_ensemble_equivalent(nll, 0.25) == pytest.approx(5.0)
    assert deep_ensemble_equivalent(nll, 0.25, extrapolate=False) is None
    assert deep_ensemble_equivalent([0.5], 0.4) is None


def test_a_non_monotone_curve_takes_the_first_crossing() -> None:
    assert deep_ensemble_equivalent([0.5, 0.3, 0.35, 0.2], 0.4) == pytest.approx(1.5)


def test_fraction_of_gain_by_hand() -> None:
    assert fraction_of_de_gain(0.30, 0.26, 0.22) == pytest.approx(0.5)  # NLL: half the gain
    assert fraction_of_de_gain(0.90, 0.93, 0.94) == pytest.approx(0.75)  # accuracy: higher is better, same formula
    assert fraction_of_de_gain(0.30, 0.31, 0.22) == pytest.approx(-0.125)
    assert fraction_of_de_gain(0.3, 0.2, 0.3) is None


def test_bad_curve_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match="de_nll"):
        deep_ensemble_equivalent([], 0.3)


def test_a_hand_worked_curve() -> None:
    # TS-NLL of Deep Ensembles of 1, 2, 3 networks: 0.50, 0.30, 0.25
    nll = [0.50, 0.30, 0.25]
    assert deep_ensemble_equivalent(nll, 0.40) == pytest.approx(1.5)  # halfway down the first segment (0.5 -> 0.3)
    assert deep_ensemble_equivalent(nll, 0.27) == pytest.approx(2.6)  # 0.03 of the second segment's 0.05
    assert deep_ensemble_equivalent(nll, 0.20) == pytest.approx(4.0)  # one more 0.05 step beyond size 3
