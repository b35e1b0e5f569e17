"""Set details and the corruption averages in results.json: unit cases against numpy, and a tiny CIFAR-10-C run
at two severities per corruption through fit, test and report."""

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest

from ensemble_lab.evaluation.corrupted_sets import add_corruption_averages, add_set_details
from tests.conftest import REPO, TINY_TRAINER, read_results, run_dirs
from tests.data import paper_fixtures as fx

PAIRS = list(itertools.product(("fog", "snow", "zoom_blur"), (1, 3)))


def _datamodule() -> SimpleNamespace:
    details = {f"c_{c}_{s}": {"corrupted": "c", "corruption": c, "severity": s} for c, s in PAIRS}
    return SimpleNamespace(test_set_details={**details, "far_set": {"ood_kind": "far"}})


def _sets(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    sets = {f"c_{c}_{s}": {"role": "shift", "acc": rng.random(), "nll": rng.random() * 3, "ece": rng.random() / 5, "mi": 0.1} for c, s in PAIRS}
    return {"clean": {"role": "id", "acc": 0.9}, **sets, "far_set": {"role": "ood", "auroc_msp": 0.8}}


def test_averages_are_the_plain_mean_over_every_corruption_and_severity():
    sets, calibrated = _sets(0), _sets(1)
    add_corruption_averages(_datamodule(), sets, calibrated)
    for group in (sets, calibrated):
        names = [f"c_{c}_{s}" for c, s in PAIRS]
        mean = group["c_mean"]
        assert mean["role"] == "shift" and mean["corrupted"] == "c" and mean["averaged_sets"] == names
        for average, metric in (("c_acc", "acc"), ("c_nll", "nll"), ("c_ece", "ece")):
            assert mean[average] == pytest.approx(np.mean([group[n][metric] for n in names]))
    untouched = _sets(2)
    add_corruption_averages(SimpleNamespace(), untouched)  # a datamodule without details: nothing added
    assert untouched == _sets(2)


def test_details_sit_beside_the_role_in_every_group():
    document = {"sets": _sets(0), "sets_calibrated": _sets(1)}
    add_set_details(document, _datamodule())
    for key in ("sets", "sets_calibrated"):
        entry = document[key]["c_snow_3"]
        assert list(entry)[:4] == ["role", "corrupted", "corruption", "severity"]
        assert (entry["corruption"], entry["severity"], entry["acc"]) == ("snow", 3, _sets(0 if key == "sets" else 1)["c_snow_3"]["acc"])
        assert document[key]["far_set"] == {"role": "ood", "ood_kind": "far", "auroc_msp": 0.8}
        assert document[key]["clean"] == {"role": "id", "acc": 0.9}


@pytest.mark.slow
def test_cifar10c_at_two_severities_gives_per_set_results_averages_and_the_severity_figure(cli, tmp_path):
    data = fx.write_cifar_benchmark(tmp_path / "data")
    corruptions, severities = ["fog", "snow"], [2, 5]
    cli("fit", f"--config={REPO / 'configs' / 'cifar10' / 'single.yaml'}", *fx.cifar_args(data), *TINY_TRAINER,
        "--trainer.limit_train_batches=2", "--trainer.num_sanity_val_steps=0", "--trainer.precision=32", "--model.width=4",
        f"--data.corruptions=[{','.join(corruptions)}]", f"--data.severities=[{','.join(map(str, severities))}]",
        "--data.per_corruption=true", "--data.ood_sets=[svhn]", "--figures=false")  # fmt: skip
    (run,) = run_dirs(tmp_path)
    sets = read_results(run)["sets"]
    names = [f"cifar10c_{c}_{s}" for c in corruptions for s in severities]
    for name, (c, s) in zip(names, itertools.product(corruptions, severities)):
        assert (sets[name]["role"], sets[name]["corrupted"], sets[name]["corruption"], sets[name]["severity"]) == ("shift", "cifar10c", c, s)
    assert sets["svhn"]["ood_kind"] == "far"
    mean = sets["cifar10c_mean"]
    for average, metric in (("c_acc", "acc"), ("c_nll", "nll"), ("c_ece", "ece")):
        assert mean[average] == pytest.approx(np.mean([sets[n][metric] for n in names]), rel=1e-6)
    cli("report", str(run), "--out", str(tmp_path / "report"), "--figures")
    assert (tmp_path / "report" / "figures" / "severity_cifar10c.png").stat().st_size > 1000
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert "c_acc" in json.dumps(report)
