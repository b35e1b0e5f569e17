"""Averages over corrupted test sets, as Google's uncertainty baselines define them.

CIFAR-10-C and MNIST-C apply each of several corruptions (noise, blur, weather, digital) at severities
1..5. ``c_acc``, ``c_nll`` and ``c_ece`` (cA, cNLL, cCE in Nado et al. 2021, "Uncertainty Baselines:
benchmarks for uncertainty & robustness in deep learning") are the plain means of ``acc``, ``nll`` and
``ece`` over every (corruption, severity) pair evaluated: each pair weighs the same, whatever its size.
A grid with a missing pair would weigh corruptions unequally, so every corruption must have the same
severities.
"""

from collections.abc import Mapping

from ensemble_lab.errors import ConfigError

#: the per-set metric each average is taken of
CORRUPTION_AVERAGES = {"c_acc": "acc", "c_nll": "nll", "c_ece": "ece"}

#: registry facts: (name, direction: +1 higher is better / −1 lower is better, needs labels, display name)
FACTS: tuple[tuple[str, int, bool, str], ...] = (
    ("c_acc", 1, True, "cA (mean corrupted acc)"),
    ("c_nll", -1, True, "cNLL (mean corrupted NLL)"),
    ("c_ece", -1, True, "cCE (mean corrupted ECE)"),
)


def corruption_averages(results: Mapping[tuple[str, int], Mapping[str, float]]) -> dict[str, float]:
    """``c_acc``, ``c_nll``, ``c_ece``: means of acc, nll, ece over every (corruption, severity) evaluated.

    Args:
        results: ``{(corruption, severity): {"acc": ..., "nll": ..., "ece": ..., ...}}``, one entry per
            corrupted test set; every corruption with the same severities.
    """
    if not results:
        raise ConfigError("no corrupted test sets to average: evaluate at least one (corruption, severity) pair")
    severities: dict[str, set[int]] = {}
    for corruption, severity in results:
        severities.setdefault(corruption, set()).add(severity)
    grids = {frozenset(levels) for levels in severities.values()}
    if len(grids) > 1:
        detail = ", ".join(f"{name}: {sorted(levels)}" for name, levels in sorted(severities.items()))
        raise ConfigError(f"the corruptions were evaluated at different severities ({detail}); evaluate every corruption at the same ones")
    averages = {}
    for name, metric in CORRUPTION_AVERAGES.items():
        missing = [key for key, values in results.items() if metric not in values]
        if missing:
            raise ConfigError(f"{metric!r} is missing for {missing[0]}: cannot average {name}")
        averages[name] = sum(float(values[metric]) for values in results.values()) / len(results)
    return averages
