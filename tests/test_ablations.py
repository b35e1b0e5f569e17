"""The BatchEnsemble ablation studies: their files, and variants that stay apart in the report."""

import json

import pytest
import yaml

from ensemble_lab.cli import main
from ensemble_lab.study.spec import load_study
from tests.conftest import REPO, TINY_TRAINER

STUDIES = REPO / "configs" / "study"
VARIANTS = REPO / "configs" / "ablations" / "digits"


def test_every_variant_file_is_in_the_digits_ablation_study(tmp_path):
    runs = load_study(STUDIES / "ablations_digits.yaml", out=tmp_path)
    used = {path for run in runs for path in run.configs}
    assert {p.resolve() for p in VARIANTS.glob("*.yaml")} <= used
    assert {run.seed for run in runs} == {42, 69, 123}
    names = {run.name for run in runs}
    assert {"single", "mc_dropout", "deep_ensemble", "batch_ensemble", "be_authors", "be_rank4", "be_split"} <= names
    assert {f"be_std_{std}" for std in ("0.02", "0.1", "0.25", "1.0")} <= names  # with the base's 0.5: the sweep
    for scale in ("mnist", "cifar10"):  # the same questions at the paper's scale
        paper = {run.name for run in load_study(STUDIES / f"ablations_{scale}.yaml", out=tmp_path / scale)}
        assert {"batch_ensemble", "be_authors", "be_rank2", "be_split", "be_ones"} <= paper


@pytest.mark.slow
def test_the_ablation_study_checks_every_run(tmp_path, capsys):
    main(["study", "--config", str(STUDIES / "ablations_digits.yaml"), "--out", str(tmp_path), "--dry_run"])
    listed = capsys.readouterr().out
    study = yaml.safe_load((STUDIES / "ablations_digits.yaml").read_text())
    assert listed.count("    new  ") == len(study["methods"]) * len(study["seeds"]) == 24 * 3  # every method, every seed
    assert "--config" in listed and "ablations/digits/kernel.yaml" in listed


@pytest.mark.slow
def test_two_batch_ensemble_variants_of_one_m_are_two_rows(tmp_path, capsys):
    base = str(REPO / "configs" / "digits" / "batch_ensemble.yaml")
    study = tmp_path / "variants.yaml"
    study.write_text(yaml.safe_dump({
        "seeds": [1],
        "args": TINY_TRAINER,
        "methods": {
            "be_rank2": {"config": [base, str(VARIANTS / "rank2.yaml")]},
            "be_authors": {"config": [base, str(VARIANTS / "authors.yaml")]},
        },
    }))  # fmt: skip
    main(["study", "--config", str(study), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "| be_rank2 (BatchEnsemble) | 4 |" in out and "| be_authors (BatchEnsemble) | 4 |" in out
    assert "weight_cosine_stored_mean" in out
    differ = out[out.index("options that differ"):]
    for key in ("model.init_args.rank", "model.init_args.gradient_blocking", "model.init_args.unperturbed_first_member"):
        assert key in differ
    rank2 = json.loads((tmp_path / "out" / "be_rank2" / "seed_1" / "results.json").read_text())
    assert rank2["config"]["model.init_args.rank"] == 2 and rank2["run_name"] == "be_rank2"
