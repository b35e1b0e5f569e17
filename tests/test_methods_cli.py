"""Every method's digits config through the real CLI: fit + test, results.json with metrics, diversity and cost."""

import pytest
import yaml

from ensemble_lab.metrics.cost import COST_KEYS
from tests.conftest import REPO, TINY_TRAINER, read_results, run_dirs

CONFIGS = sorted((REPO / "configs" / "digits").glob("*.yaml"))
#: members that share every weight: no weight-space diversity (their diversity is in function space)
SHARED_WEIGHTS = {"MCDropout", "MIMO", "Masksembles"}


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_digits_method_fits_tests_and_reports_its_cost(cli, tmp_path, config):
    method = yaml.safe_load(config.read_text())["model"]["class_path"].rsplit(".", 1)[-1]
    longer = ["--trainer.max_epochs=2"] if method == "SnapshotEnsemble" else []  # 4 snapshot cycles need more than 3 steps
    cli("fit", "--config", str(config), *TINY_TRAINER, *longer)
    (run,) = run_dirs(tmp_path)
    results = read_results(run)
    members = 1 if method == "SingleModel" else 4
    assert results["method"] == method and results["num_members"] == members
    assert set(results["sets"]) == {"digits", "digits_shifted", "photo_patches"}
    for name, metrics in results["sets"].items():
        assert 0.0 <= metrics["acc"] <= 1.0 and len(metrics["member_acc"]) == members, name
    if method in SHARED_WEIGHTS:
        assert results["weight_cosine"] is None
    else:
        assert len(results["weight_cosine"]) == members
    cost = results["cost"]
    assert set(cost) == set(COST_KEYS)
    assert cost["parameters"] >= cost["parameters_per_member"] > 0 and cost["flops_per_image"] > 0 and cost["images_per_s"] > 0
    assert (run / "checkpoints" / "last.ckpt").exists()
