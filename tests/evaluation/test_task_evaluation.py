"""Each task's evaluation (evaluation/by_task.py): chosen from the module's task; `predict` of a regression model."""

import shutil

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.evaluation.classification_eval import ClassificationEvaluation
from ensemble_lab.evaluation.regression_sets import RegressionEvaluation
from ensemble_lab.methods import DeepEnsemble, SingleModel
from ensemble_lab.metrics.regression_losses import MIN_VARIANCE
from ensemble_lab.metrics.tasks import ClassificationTask, RegressionTask
from tests.conftest import REPO, run_dirs

FEATURES, TARGETS = 5, 2
TABULAR = dict(input_shape=(FEATURES,), num_classes=TARGETS, task="regression", backbone="mlp", hidden_sizes=(8,))


class RankingTask(ClassificationTask):
    """A task no evaluation serves: only its name differs from a classifier's."""

    name = "ranking"


def test_the_evaluation_follows_the_modules_task_and_its_replacement():
    model = DeepEnsemble(**TABULAR, num_members=2)
    assert isinstance(model.evaluation, RegressionEvaluation) and model.evaluation.task is model.task
    assert model.monitorable_metrics() == ["val/nll", "val/rmse", "val/crps", "val/epistemic_share"]
    model.task = RegressionTask(target_mean=[1.0, 2.0], target_std=[3.0, 4.0])  # what setup does with the data's scaling
    assert model.evaluation.task is model.task
    classifier = SingleModel(input_shape=(FEATURES,), num_classes=3, backbone="mlp", hidden_sizes=(8,))
    assert isinstance(classifier.evaluation, ClassificationEvaluation)
    assert "val/acc" in classifier.monitorable_metrics()


def test_a_task_without_an_evaluation_is_a_one_line_error_naming_it():
    model = SingleModel(input_shape=(FEATURES,), num_classes=3, backbone="mlp", hidden_sizes=(8,))
    model.task = RankingTask()
    for call in (model.monitorable_metrics, lambda: model.predict_step((torch.randn(2, FEATURES), torch.zeros(2), torch.arange(2)), 0)):
        with pytest.raises(ConfigError, match=r"^no evaluation for the task 'ranking' \(RankingTask\)[^\n]*classification, regression[^\n]*$"):
            call()


def test_regression_predict_step_gives_means_and_variances_in_the_targets_units():
    torch.manual_seed(0)
    model = DeepEnsemble(**TABULAR, num_members=3).eval()
    shift, scale = torch.tensor([10.0, -2.0]), torch.tensor([3.0, 0.5])
    model.task = RegressionTask(target_mean=shift, target_std=scale)
    x, y = torch.randn(4, FEATURES), torch.randn(4, TARGETS)
    with torch.no_grad():
        packed = model.predict_step((x, y, torch.arange(4)), 0)
        raw = model(x)  # (M, B, 2·D): D standardised means, then D softplus parameters
    # by hand: mean · std + target mean, (softplus(v) + floor) · std²
    mean = raw[..., :TARGETS] * scale + shift
    var = (F.softplus(raw[..., TARGETS:]) + MIN_VARIANCE) * scale**2
    torch.testing.assert_close(packed, torch.cat([mean, var], dim=-1))
    torch.testing.assert_close(model.evaluation.predicted_targets(y), y * scale + shift)


@pytest.mark.slow
def test_predict_of_a_regression_run_writes_what_its_test_writes(cli, tmp_path, capsys):
    config = REPO / "configs" / "tabular" / "diabetes_deep_ensemble.yaml"
    quick = ["--trainer.max_epochs=1", "--trainer.enable_model_summary=false", "--model.backbone.hidden_sizes=[8]", "--figures=false"]
    cli("fit", f"--config={config}", "--model.num_members=2", "--test_after_fit=false", *quick)
    (run,) = run_dirs(tmp_path)
    ckpt, run_config = str(run / "checkpoints" / "last.ckpt"), str(run / "config.yaml")
    cli("test", "--config", run_config, f"--ckpt_path={ckpt}", "--save_predictions=true", "--figures=false")
    tested = tmp_path / "tested.npz"
    shutil.move(run / "predictions" / "diabetes.npz", tested)  # the test's own predictions of the id set
    capsys.readouterr()
    cli("predict", "--config", run_config, f"--ckpt_path={ckpt}")
    written = run / "predictions" / "diabetes.npz"
    predicted, expected = np.load(written), np.load(tested)
    rows = expected["targets"].shape[0]
    lines = [line for line in capsys.readouterr().out.splitlines() if "->" in line]
    assert lines == [f"DeepEnsemble (M=2) member means and variances of diabetes ({rows} rows, 1 target, original units) -> {written}"]
    assert sorted(predicted.files) == sorted(expected.files) == ["mean", "targets", "var"]
    for key in expected.files:
        np.testing.assert_allclose(predicted[key], expected[key], rtol=1e-6, err_msg=key)
    assert predicted["mean"].shape == predicted["var"].shape == (2, rows, 1) and (predicted["var"] > 0).all()
    # original units: every target is one of the dataset's raw values
    assert np.abs(predicted["targets"][:, 0, None] - load_diabetes().target[None]).min(axis=1).max() < 1e-3
