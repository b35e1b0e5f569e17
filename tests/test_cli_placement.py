"""Where a run's outputs go and what a later test records: a run is where its checkpoint is (copied,
moved or renamed runs included), and results.json records the options a test really ran with."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from ensemble_lab.cli import main
from ensemble_lab.config.run_config import OUTPUT, comparable
from ensemble_lab.report.groups import build_report
from tests.conftest import TINY_TRAINER
from tests.run_helpers import working_directory

#: a study's layout: <out>/<method>/seed_<s>, named by the logger (ensemble-lab study does the same)
STUDY_LOGGER = '--trainer.logger={"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "%s", "name": "mc", "version": "seed_1"}}'


def files_of(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` with its bytes: what a command must leave as it was."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def study_run(tmp_path_factory) -> Path:
    """One tiny MC Dropout fit (M = 2) in a study's layout: <out>/mc/seed_1, its config.yaml naming that logger."""
    out = tmp_path_factory.mktemp("made") / "study"
    with working_directory(out.parent):
        main(["fit", "--model=MCDropout", "--model.num_members=2", "--model.dropout=0.1", "--data=DigitsDataModule",
              "--seed_everything=3", "--figures=false", *TINY_TRAINER, STUDY_LOGGER % out])  # fmt: skip
    return out / "mc" / "seed_1"


def copy_of(run: Path, where: Path) -> Path:
    shutil.copytree(run, where)
    return where


def test(config: Path, ckpt: Path, *args: str) -> None:
    main(["test", f"--config={config}", f"--ckpt_path={ckpt}", "--overwrite=true", "--figures=false", *args])


test.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def test_a_copied_study_run_is_tested_in_the_copy_and_the_original_is_untouched(study_run, tmp_path):
    original = files_of(study_run.parent.parent)
    run = copy_of(study_run, tmp_path / "copy")
    with working_directory(tmp_path):
        test(run / "config.yaml", run / "checkpoints" / "last.ckpt")
    assert files_of(study_run.parent.parent) == original  # no events file, no config there
    new = set(files_of(run)) - set(files_of(study_run))
    assert {n for n in new if not n.startswith("events.out.tfevents.")} == {"config.test-1.yaml", "results.prev-1.json"}
    assert any(n.startswith("events.out.tfevents.") for n in new)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no new version_N anywhere


def test_a_moved_run_resumes_where_it_is(study_run, tmp_path):
    """fit --ckpt_path <moved>/checkpoints/last.ckpt continues in the moved run: its checkpoints (last.ckpt, not a
    last-v1.ckpt beside it; the earlier top-1 file replaced), events, metrics.csv and results.json."""
    original = files_of(study_run.parent.parent)
    run = copy_of(study_run, tmp_path / "renamed")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with working_directory(tmp_path):
        main(["fit", f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
              "--trainer.max_epochs=2", "--overwrite=true"])  # fmt: skip
    assert files_of(study_run.parent.parent) == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["renamed"]
    assert before == ["epoch=0-step=3.ckpt", "last.ckpt"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch=1-step=6.ckpt", "last.ckpt"]
    assert (run / "config.resume-1.yaml").exists()
    assert [int(r["epoch"]) for r in _csv_rows(run / "metrics.csv")] == [0, 1]  # the fit's rows and the resume's
    assert json.loads((run / "results.json").read_text())["checkpoint_step"] == 6


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_checkpoint_of_one_run_with_the_config_of_another_goes_to_the_checkpoints_run(study_run, tmp_path):
    a, b = copy_of(study_run, tmp_path / "a"), copy_of(study_run, tmp_path / "b")
    a_before = files_of(a)
    with working_directory(tmp_path):
        test(a / "config.yaml", b / "checkpoints" / "last.ckpt")
    assert files_of(a) == a_before
    assert (b / "config.test-1.yaml").exists() and (b / "results.prev-1.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_results_record_the_options_a_test_ran_with_and_report_keeps_them_apart(study_run, tmp_path):
    trained = yaml.safe_load((study_run / "config.yaml").read_text())
    assert trained["data"]["init_args"]["shift_degrees"] == 45.0 and trained["model"]["init_args"]["num_members"] == 2
    as_trained, turned = copy_of(study_run, tmp_path / "as_trained"), copy_of(study_run, tmp_path / "turned")
    more = copy_of(study_run, tmp_path / "more")
    with working_directory(tmp_path):
        test(as_trained / "config.yaml", as_trained / "checkpoints" / "last.ckpt")
        test(turned / "config.yaml", turned / "checkpoints" / "last.ckpt", "--data.shift_degrees=90")
        test(more / "config.yaml", more / "checkpoints" / "last.ckpt", "--model.num_members=5", "--model.dropout=0.3")
    same, shifted, sampled = (json.loads((r / "results.json").read_text()) for r in (as_trained, turned, more))

    assert same["test_changes"] == [] and same["fit_config"] is None
    after_fit = json.loads((study_run / "results.json").read_text())["config"]
    assert comparable(same["config"], OUTPUT) == comparable(after_fit, OUTPUT)  # as the test after fit; --overwrite aside

    assert shifted["config"]["data.init_args.shift_degrees"] == 90.0
    assert shifted["test_changes"] == ["data.init_args.shift_degrees: 45.0 -> 90.0"]
    assert shifted["fit_config"]["data.init_args.shift_degrees"] == 45.0
    unchanged = lambda config: {k: v for k, v in comparable(config, OUTPUT).items() if k != "data.init_args.shift_degrees"}
    assert unchanged(shifted["config"]) == unchanged(shifted["fit_config"]) == unchanged(after_fit)

    assert sampled["num_members"] == sampled["config"]["model.init_args.num_members"] == 5
    assert sampled["config"]["model.init_args.dropout"] == 0.3
    assert sampled["test_changes"] == ["model.init_args.dropout: 0.1 -> 0.3", "model.init_args.num_members: 2 -> 5"]
    assert (sampled["fit_config"]["model.init_args.dropout"], sampled["fit_config"]["model.init_args.num_members"]) == (0.1, 2)

    # one seed's 45° and 90° tests are two rows, never one mean over both
    groups = build_report([as_trained, turned])
    rows = sorted((str(g.variant), [r.name for r in g.runs], g.stats["digits_shifted"]["acc"].mean) for g in groups)
    assert [(variant, names) for variant, names, _ in rows] == [
        ("data.init_args.shift_degrees=(default)", ["as_trained"]),
        ("data.init_args.shift_degrees=90.0", ["turned"]),
    ]
    assert [acc for *_, acc in rows] == [same["sets"]["digits_shifted"]["acc"], shifted["sets"]["digits_shifted"]["acc"]]


def test_a_moved_run_of_a_recorded_root_is_tested_where_it_is(tmp_path):
    """A run made with --trainer.default_root_dir R records R; moved out of R, a test from where R still is
    writes everything into the moved run, and nothing (no version_1) under R."""
    root = tmp_path / "root"
    with working_directory(tmp_path):
        main(["fit", "--model=SingleModel", "--data=DigitsDataModule", "--seed_everything=4", "--figures=false",
              *TINY_TRAINER, f"--trainer.default_root_dir={root}"])  # fmt: skip
    made = root / "lightning_logs" / "version_0"
    assert yaml.safe_load((made / "config.yaml").read_text())["trainer"]["default_root_dir"] == str(root)
    run = tmp_path / "kept" / "baseline"
    run.parent.mkdir()
    made.rename(run)
    before = files_of(root)
    with working_directory(tmp_path):
        test(run / "config.yaml", run / "checkpoints" / "last.ckpt")
    assert files_of(root) == before and list((root / "lightning_logs").iterdir()) == []
    new = set(files_of(run)) - {"results.json", "results.csv"}
    assert {"config.test-1.yaml", "results.prev-1.json"} <= new and sum(n.startswith("events.out.tfevents.") for n in new) == 3
