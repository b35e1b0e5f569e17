"""EvaluationOutputs from Python: a plain ``trainer.test(model)`` writes with the defaults, and the callback's
options and run record decide what a test writes and records (the CLI builds the same callback)."""

import json

import lightning as L
import numpy as np
import pytest

from ensemble_lab.data import DigitsDataModule
from ensemble_lab.evaluation.outputs import EvaluationOptions, EvaluationOutputs, RunRecord, add_evaluation_outputs, evaluation_outputs
from ensemble_lab.methods import DeepEnsemble

QUIET = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)


def evaluate(tmp_path, callbacks: list) -> DeepEnsemble:
    L.seed_everything(3)
    model = DeepEnsemble(num_members=2, hidden_sizes=[8])
    trainer = L.Trainer(default_root_dir=str(tmp_path), callbacks=callbacks, limit_test_batches=2, **QUIET)
    trainer.test(model, datamodule=DigitsDataModule(batch_size=32), verbose=False)
    return model


def test_without_the_callback_a_test_writes_results_into_the_log_dir(tmp_path):
    evaluate(tmp_path, [])
    run = tmp_path / "lightning_logs" / "version_0"
    results = json.loads((run / "results.json").read_text())
    assert results["run_name"] == "DeepEnsemble" and results["config"] is None and results["test_changes"] is None
    assert (run / "figures").is_dir() and not (run / "predictions").exists()  # figures on, no predictions


def test_the_options_and_record_decide_what_is_written(tmp_path):
    elsewhere = tmp_path / "results_here"
    outputs = EvaluationOutputs(
        EvaluationOptions(save_predictions=True, figures=False),
        RunRecord(results_dir=str(elsewhere), run_name="mine", run_config={"a.b": 1}, tested_checkpoint_record={"checkpoint_epoch": 4}),
    )
    evaluate(tmp_path, [outputs])
    results = json.loads((elsewhere / "results.json").read_text())
    assert results["run_name"] == "mine" and results["config"] == {"a.b": 1} and results["checkpoint_epoch"] == 4
    assert not (elsewhere / "figures").exists() and not (tmp_path / "lightning_logs" / "version_0" / "results.json").exists()
    for name, metrics in results["sets"].items():  # the saved member probabilities give the reported accuracy
        saved = np.load(elsewhere / "predictions" / f"{name}.npz")
        accuracy = float((saved["member_probs"].mean(0).argmax(-1) == saved["targets"]).mean())  # (M, N, C) -> (N,)
        assert metrics["acc"] == pytest.approx(accuracy, abs=1e-6)


def test_an_existing_results_json_is_refused_unless_overwrite(tmp_path):
    record = RunRecord(results_dir=str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")
    with pytest.raises(Exception, match="already exists"):
        evaluate(tmp_path, [EvaluationOutputs(EvaluationOptions(figures=False), record)])
    assert (tmp_path / "run" / "results.json").read_text() == "{}"
    evaluate(tmp_path, [EvaluationOutputs(EvaluationOptions(figures=False, overwrite=True), record)])
    assert json.loads((tmp_path / "run" / "results.json").read_text())["method"] == "DeepEnsemble"


def test_finding_and_adding_the_callback():
    trainer = L.Trainer(logger=False, **QUIET)
    assert evaluation_outputs(trainer).options == EvaluationOptions() and evaluation_outputs(None).record == RunRecord()
    added = add_evaluation_outputs(trainer)
    assert add_evaluation_outputs(trainer) is added and evaluation_outputs(trainer) is added
    assert sum(isinstance(c, EvaluationOutputs) for c in trainer.callbacks) == 1
