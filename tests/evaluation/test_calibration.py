"""Temperature scaling: fitted on validation NLL, against hand computations and a known overconfidence."""

import math

import pytest
import torch

from ensemble_lab.metrics.calibration import apply_temperature, ensemble_nll, fit_temperature, log_probs, temperature_warnings
from ensemble_lab.metrics.classification import predictive_metrics
from tests.conftest import TINY_TRAINER, read_results, run_dirs


def overconfident(members: int, n: int = 4000, classes: int = 5, factor: float = 4.0, seed: int = 0):
    """Labels drawn from softmax(z) (so z is calibrated); members' log probabilities of factor·(z + small noise)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=gen, dtype=torch.float64) * 1.5
    targets = torch.multinomial(torch.softmax(z, -1), 1, generator=gen).squeeze(1)
    members_z = z + 0.2 * torch.randn(members, n, classes, generator=gen, dtype=torch.float64)  # members near z
    return torch.log_softmax(factor * members_z, -1), targets


def test_ensemble_nll_by_hand():
    # two members, one sample, two classes: p_0 = (0.8, 0.2), p_1 = (0.4, 0.6), label 0: p̄ = 0.6
    lp = torch.tensor([[[0.8, 0.2]], [[0.4, 0.6]]], dtype=torch.float64).log()
    assert float(ensemble_nll(lp, torch.tensor([0]), torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(-math.log(0.6))
    # T = 2 on member logits log p: softmax(log p / 2) = sqrt(p) / Σ sqrt(p)
    p0 = math.sqrt(0.8) / (math.sqrt(0.8) + math.sqrt(0.2))
    p1 = math.sqrt(0.4) / (math.sqrt(0.4) + math.sqrt(0.6))
    assert float(ensemble_nll(lp, torch.tensor([0]), torch.tensor(2.0, dtype=torch.float64))) == pytest.approx(-math.log((p0 + p1) / 2))


def test_a_single_overconfident_model_gets_its_temperature_back():
    lp, y = overconfident(members=1, factor=4.0)
    t = fit_temperature(lp, y)
    assert t.shape == () and t.item() == pytest.approx(4.0, rel=0.1)
    one = torch.tensor(1.0, dtype=torch.float64)
    assert ensemble_nll(lp, y, t) < ensemble_nll(lp, y, one) - 0.1
    before, after = predictive_metrics(lp.exp().float(), y), predictive_metrics(apply_temperature(lp, t).float(), y)
    assert after["acc"] == before["acc"] and after["ece"] < before["ece"]  # one model: the argmax cannot move


def test_temperature_one_reproduces_the_uncalibrated_metrics():
    lp, y = overconfident(members=3, factor=2.0)
    probs = lp.exp().float()
    again = apply_temperature(log_probs(probs), torch.tensor(1.0)).float()
    torch.testing.assert_close(again, probs, rtol=0, atol=1e-6)
    before, after = predictive_metrics(probs, y), predictive_metrics(again, y)
    for key in ("acc", "nll", "ece", "mi", "disagreement"):
        assert after[key] == pytest.approx(before[key], abs=1e-5), key


def test_one_temperature_per_member_fits_at_least_as_well():
    lp, y = overconfident(members=3, factor=3.0)
    lp = lp * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64).view(3, 1, 1)  # members unequally confident
    shared, own = fit_temperature(lp, y), fit_temperature(lp, y, per_member=True)
    assert own.shape == (3,) and own[1] > own[0] > own[2]  # the most confident member gets the largest T
    assert ensemble_nll(lp, y, own) <= ensemble_nll(lp, y, shared) + 1e-9


def test_an_extreme_member_temperature_is_named_in_a_warning():
    # member 1's logits are 0.02 × calibrated ones: the T that undoes that is 0.02, far below 0.05
    lp, y = overconfident(members=2, factor=1.0)
    lp = torch.log_softmax(lp * torch.tensor([1.0, 0.02], dtype=torch.float64).view(2, 1, 1), -1)
    t = fit_temperature(lp, y, per_member=True)
    assert t[1].item() == pytest.approx(0.02, rel=0.3) and 0.5 < t[0].item() < 2  # the fit recovers the factors
    (line,) = temperature_warnings(t, val_images=4000)  # 2000 images per temperature: no small-split warning
    assert line.startswith(f"member 1's temperature T = {t[1].item():.3g} is below 0.05") and "\n" not in line
    # 40 × calibrated logits: one shared T of about 40, above 20
    lp, y = overconfident(members=1, factor=40.0)
    t = fit_temperature(lp, y)
    (line,) = temperature_warnings(t, val_images=4000)
    assert t.item() == pytest.approx(40, rel=0.1) and line.startswith(f"the shared temperature T = {t.item():.3g} is above 20")
    assert temperature_warnings(torch.tensor(1.5, dtype=torch.float64), 4000) == []  # an ordinary fit: nothing to say


def test_a_small_validation_split_is_warned_per_fitted_temperature():
    # 4 temperatures on 1,000 images: 250 each, under 500; one shared T on the same 1,000: fine
    (line,) = temperature_warnings([1.1, 1.2, 0.9, 1.0], val_images=1000)
    assert line.startswith("4 temperature(s) fitted on 1000 validation images, 250 per temperature (under 500)")
    assert temperature_warnings(1.1, val_images=1000) == []
    # the case: one member driven to T = 0.020 on 200 images gets both warnings
    lines = temperature_warnings([1.3, 0.02, 1.1, 1.2], val_images=200)
    assert len(lines) == 2 and "50 per temperature" in lines[0] and lines[1].startswith("member 1's temperature T = 0.02 is below")


@pytest.mark.slow
def test_cli_reports_every_set_before_and_after(cli, tmp_path, capsys):
    cli("fit", "--model=BatchEnsemble", "--model.num_members=2", "--data=DigitsDataModule", "--seed_everything=3", *TINY_TRAINER)
    (run,) = run_dirs(tmp_path)
    plain = read_results(run)
    assert "sets_calibrated" not in plain and plain.get("calibration") is None
    cli("test", "--config", str(run / "config.yaml"), f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "--overwrite=true", "--figures=false", "--calibration=temperature")  # fmt: skip
    results = read_results(run)
    record = results["calibration"]
    assert record["method"] == "temperature" and record["temperature"] > 0 and record["val_images"] == 200
    assert record["val_nll_calibrated"] <= record["val_nll"]
    # digits holds out 200 validation images, under 500 for one temperature: a one-line warning, recorded too
    assert record["warnings"][0].startswith("1 temperature(s) fitted on 200 validation images")
    printed = capsys.readouterr()
    assert f"ensemble-lab test: warning: --calibration temperature: {record['warnings'][0]}\n" in printed.err
    assert results["sets"] == plain["sets"]  # the uncalibrated numbers are as before
    assert set(results["sets_calibrated"]) == set(results["sets"])
    for name, metrics in results["sets_calibrated"].items():  # T moves no member's argmax
        assert metrics["member_acc"] == pytest.approx(results["sets"][name]["member_acc"]), name
        assert metrics["disagreement"] == pytest.approx(results["sets"][name]["disagreement"]), name
    assert "after temperature scaling (T = " in printed.out
    cli("report", str(run))
    assert "### digits +T (id)" in capsys.readouterr().out
