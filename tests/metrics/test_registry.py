"""The metric registry against what the code writes and what the metrics compute.

Every key a test writes has a row; each row's direction agrees with its metric's behaviour on a good and a
bad prediction; the label metrics are exactly those that change when the labels do; new rows can be added.
"""

import pytest
import torch
from torch import nn

from ensemble_lab.connectivity.barriers import BARRIERS
from ensemble_lab.evaluation.extended import ExtendedInputs
from ensemble_lab.evaluation.regression_sets import pack
from ensemble_lab.evaluation.regression_sets import set_metrics as regression_set_metrics
from ensemble_lab.evaluation.sets import set_metrics
from ensemble_lab.metrics import registry
from ensemble_lab.metrics.classification import predictive_metrics
from ensemble_lab.metrics.cost import measure_cost
from ensemble_lab.metrics.ood import ood_metrics
from ensemble_lab.metrics.regression import METRIC_FACTS
from ensemble_lab.metrics.significance import bootstrap_replicates, metric_values
from ensemble_lab.metrics.tasks import RegressionTask
from ensemble_lab.metrics.weight_space import weight_space_summary
from tests.conftest import REPO, TINY_TRAINER, read_results, run_dirs

#: a test set's non-metric key
RECORD_KEYS = {"role"}


def probabilities(members: int, samples: int, classes: int, seed: int) -> torch.Tensor:
    """Random member probabilities (M, N, C)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(members, samples, classes, generator=generator), dim=-1)


class Members(nn.Module):
    """A tiny stand-in method: one linear layer, its logits as a single member's (1, B, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)).unsqueeze(0)  # (1, B, C)


def written_keys() -> set[str]:
    """The keys a test writes into results.json's sets, top level (weight space) and cost, computed in-process."""
    targets = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(0))
    keys: set[str] = set()
    for members in (1, 2):  # a single model's OOD metrics of mi are None, but written
        collected = {"id": (probabilities(members, 40, 3, 1), targets), "far": (probabilities(members, 30, 3, 2), targets[:30])}
        logits = {name: probs.log() for name, (probs, _) in collected.items()}
        extended = ExtendedInputs(logits, (probabilities(members, 20, 3, 3), targets[:20]))  # a test's: every key
        for metrics in set_metrics(collected, {"id": "id", "far": "ood"}, extended).values():
            keys |= set(metrics) - RECORD_KEYS
    keys |= set(weight_space_summary(Members()))
    keys |= set(measure_cost(Members(), torch.randn(4, 1, 4, 4), 1, warmup=0, min_time=0.01))
    return keys


def test_every_written_key_has_a_row():
    keys = written_keys()
    assert {"acc", "ece", "member_nll", "auroc_mi", "fpr95_in_msp", "weight_cosine_mean", "flops_per_image"} <= keys
    assert {"mce", "aurc_mi", "auroc_energy", "joint_nll_10", "conformal_set_size_raps", "brier_resolution"} <= keys
    for key in keys:
        assert registry.metric(key).name == key
    # connectivity.json's barrier means, which the report's weight-space table reads
    for barrier in BARRIERS:
        assert registry.metric(f"{barrier}_mean").group == "connectivity"


@pytest.mark.slow
def test_every_key_of_a_real_results_json_has_a_row(cli, tmp_path):
    cli("fit", f"--config={REPO / 'configs' / 'digits' / 'batch_ensemble.yaml'}", "--model.num_members=2", *TINY_TRAINER,
        "--figures=false")  # fmt: skip
    (run,) = run_dirs(tmp_path)
    results = read_results(run)
    assert "ood" in {metrics["role"] for metrics in results["sets"].values()}  # OOD detection keys are written too
    for metrics in results["sets"].values():
        for key in set(metrics) - RECORD_KEYS:
            assert registry.metric(key).place == "set", key
    for key in results["cost"]:
        assert registry.metric(key).place == "cost", key
    for key in weight_space_summary(Members()):
        assert key in results and registry.metric(key).place == "run", key


def test_directions_agree_with_the_metrics():
    # a confident correct prediction against a confident wrong one: the better one per direction
    targets = torch.arange(4) % 3
    right = torch.nn.functional.one_hot(targets, 3).float() * 0.9 + 0.1 / 3  # (N, C), rows sum to 1
    wrong = torch.nn.functional.one_hot((targets + 1) % 3, 3).float() * 0.9 + 0.1 / 3
    good, bad = predictive_metrics(right[None], targets), predictive_metrics(wrong[None], targets)
    for name in ("acc", "nll", "brier", "ece"):
        row = registry.metric(name)
        assert row.direction != 0 and row.direction * (good[name] - bad[name]) > 0, name
    # OOD detection: ID samples on which both members agree and are sure, OOD samples on which each is sure of
    # another class (every score higher on OOD: a perfect separation), and the same sets swapped (backwards)
    agree, split = torch.full((2, 20, 3), 0.01), torch.full((2, 20, 3), 0.01)
    agree[..., 0], split[0, :, 1], split[1, :, 2] = 0.98, 0.98, 0.98
    separated, backwards = ood_metrics(agree, split), ood_metrics(split, agree)
    ood_rows = [r for r in registry.rows("classification", needs_ood=True) if r.score in registry.OOD_SCORES]  # the logit scores: their own test
    assert {r.name for r in ood_rows} == set(separated)
    for row in ood_rows:
        assert row.direction * (separated[row.name] - backwards[row.name]) > 0, row.name
    assert {r.family: r.direction for r in ood_rows} == {"auroc": 1, "aupr": 1, "aupr_in": 1, "fpr95": -1, "fpr95_in": -1}
    # diversity and uncertainty are described, never ranked; so are costs, weights, barriers and each member's own
    for name in ("mi", "disagreement", "entropy", "expected_entropy", "member_acc", "weight_cosine_mean", "parameters"):
        assert registry.metric(name).direction == 0 and registry.metric(name).mode is None, name
    assert registry.metric("acc").mode == "max" and registry.metric("nll").mode == "min"


def test_label_metrics_are_exactly_those_the_labels_change():
    probs = probabilities(3, 60, 4, seed=5)
    targets = torch.randint(0, 4, (60,), generator=torch.Generator().manual_seed(6))
    before, after = predictive_metrics(probs, targets), predictive_metrics(probs, (targets + 1) % 4)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {k for k in before if registry.metric(k).needs_labels}
    assert not any(r.needs_labels for r in registry.rows(needs_ood=True))  # ood_metrics takes no labels at all


def test_recomputable_rows_are_those_the_bootstrap_recomputes():
    probs, targets = probabilities(2, 30, 3, seed=7), torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(8))
    per_set = registry.names("classification", recomputable=True, needs_ood=False)  # regression's: tests/metrics/test_regression_bootstrap.py
    assert set(metric_values(probs, targets, per_set)) == set(per_set)
    detection = registry.names("classification", recomputable=True, needs_ood=True)
    assert set(metric_values(probs, targets, detection, id_member_probs=probabilities(2, 20, 3, seed=9))) == set(detection)
    with pytest.raises(ValueError, match="member_acc"):  # a list per member: nothing to resample
        bootstrap_replicates([probs], targets, ["member_acc"], resamples=2)


def test_unknown_keys_strictly_and_leniently():
    with pytest.raises(KeyError, match="no_such_metric"):
        registry.metric("no_such_metric")
    row = registry.lookup("no_such_metric")  # a results.json of another version
    assert (row.direction, row.label, row.needs_labels, row.needs_ood) == (0, "no_such_metric", False, False)
    assert registry.direction("no_such_metric") == 0 and registry.label("acc") == "accuracy"


def test_a_regression_row_can_be_added_and_read(monkeypatch):
    monkeypatch.setattr(registry, "_ROWS", dict(registry._ROWS))  # the rows of this test only
    added = registry.add(registry.Metric("rmsle", "regression", -1, "RMSLE", "predictive", needs_labels=True))
    assert registry.metric("rmsle") is added and registry.direction("rmsle") == -1 and registry.label("rmsle") == "RMSLE"
    regression = registry.names(task="regression")
    assert "rmsle" in regression and "parameters" in regression and "acc" not in regression  # "any" rows serve both tasks
    assert "rmsle" not in registry.names(task="classification")
    with pytest.raises(ValueError, match="already registered"):
        registry.add(registry.Metric("rmsle", "regression", -1))
    with pytest.raises(ValueError, match="task"):
        registry.Metric("r2", "ranking", 1)
    with pytest.raises(ValueError, match="direction"):
        registry.Metric("r2", "regression", 2)
    family = registry.add_ood_family("auroc_var", 1, "AUROC", task="regression", scores=("variance",))
    assert [r.name for r in family] == ["auroc_var_variance"] and registry.metric("auroc_var_variance").needs_ood



def test_rows_of_the_new_metrics_match_their_modules_facts():
    """Every key the issue-25 metric functions return has a row whose direction, labels flag and label are its FACTS entry."""
    from ensemble_lab.metrics import calibration_errors, conformal, joint_nll, ood_scores, selective

    probs, targets = probabilities(3, 40, 4, 5), torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(1))
    computed = {
        calibration_errors: calibration_errors.calibration_error_metrics(probs, targets),
        selective: selective.selective_metrics(probs, targets),
        ood_scores: ood_scores.logit_ood_metrics(probs.log(), probs[:, :20].log()),
        joint_nll: joint_nll.joint_nll_metrics(probs, targets, num_batches=10),
        conformal: conformal.conformal_metrics(probs, targets, probs, targets),
    }
    for module, values in computed.items():
        facts = {p: f for p, *f in module.FACTS}
        for key in values:
            row = registry.metric(key)
            pattern = key if key in facts else key.replace(f"_{row.score}", "_<score>")
            sign, needs_labels, shown = facts[pattern]
            assert (row.direction, row.needs_labels, row.label) == (sign, needs_labels, shown.replace("<score>", row.score or ""))
    assert registry.metric("auroc_energy").needs_ood and not registry.metric("auroc_energy").recomputable


def test_every_regression_key_has_a_regression_row():
    generator = torch.Generator().manual_seed(3)
    packed = {n: pack({"mean": torch.randn(2, 30, 1, generator=generator), "var": torch.rand(2, 30, 1, generator=generator) + 0.1}) for n in ("id", "gap")}
    collected = {n: (p, torch.randn(30, 1, generator=generator)) for n, p in packed.items()}
    sets = regression_set_metrics(collected, {"id": "id", "gap": "ood"}, RegressionTask())
    keys = set(sets["gap"]) - RECORD_KEYS
    assert {"rmse", "nll", "crps", "coverage_90", "epistemic_share", "auroc_variance", "fpr95_in_epistemic"} <= keys
    for key in keys:
        assert registry.metric(key).task in ("regression", "any"), key
    # the registry's facts are the metric module's: direction (a nominal coverage is not ranked) and label
    for fact in METRIC_FACTS:
        row = registry.metric(fact.name)
        assert row.direction == {"lower": -1, "higher": 1}.get(fact.direction, 0) and row.label == fact.display, fact.name
    assert registry.REGRESSION_VAL_CURVES == ("nll", "rmse", "crps", "epistemic_share")
    assert not set(registry.VAL_CURVES) - {"acc", "nll", "ece", "mi", "disagreement"}
