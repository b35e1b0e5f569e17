"""A real test's extended metrics (evaluation/extended.py) against the metric functions applied to its saved
predictions, and the parts of them recomputed by hand (numpy votes, scikit-learn AUROC, softmax of the logits)."""

import json

import lightning as L
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ensemble_lab.data import DigitsDataModule
from ensemble_lab.evaluation.extended import EVALUATION_SEED
from ensemble_lab.evaluation.outputs import EvaluationOptions, EvaluationOutputs, RunRecord
from ensemble_lab.methods import DeepEnsemble
from ensemble_lab.metrics.calibration_errors import calibration_error_metrics
from ensemble_lab.metrics.conformal import conformal_metrics
from ensemble_lab.metrics.joint_nll import joint_nll_metrics
from ensemble_lab.metrics.ood_scores import logit_ood_metrics
from ensemble_lab.metrics.selective import selective_metrics

QUIET = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, logger=False, enable_checkpointing=False)
SEED = 7


def run_tested(tmp_path, alpha: float = 0.2) -> tuple[dict, L.Trainer]:
    """A tiny two-member Deep Ensemble tested on digits with its predictions saved; (results.json, trainer)."""
    L.seed_everything(SEED)
    model = DeepEnsemble(num_members=2, hidden_sizes=[8])
    outputs = EvaluationOutputs(EvaluationOptions(save_predictions=True, figures=False, conformal_alpha=alpha), RunRecord(results_dir=str(tmp_path)))
    trainer = L.Trainer(callbacks=[outputs], limit_test_batches=3, **QUIET)
    trainer.test(model, datamodule=DigitsDataModule(batch_size=32), verbose=False)
    return json.loads((tmp_path / "results.json").read_text()), trainer


def saved(tmp_path, name: str) -> dict[str, torch.Tensor]:
    with np.load(tmp_path / "predictions" / f"{name}.npz") as arrays:
        return {k: torch.from_numpy(arrays[k]) for k in arrays.files}


def test_the_extended_metrics_equal_the_functions_on_the_saved_predictions(tmp_path):
    results, trainer = run_tested(tmp_path)
    sets = results["sets"]
    assert results["conformal_alpha"] == 0.2
    val = saved(tmp_path, "val_split")
    for name, metrics in sets.items():
        arrays = saved(tmp_path, name)
        probs, logits, targets = arrays["member_probs"], arrays["member_logits"], arrays["targets"]
        torch.testing.assert_close(probs, torch.softmax(logits, dim=-1))  # the logits are the probabilities' own
        if metrics["role"] == "ood":
            continue
        expected = {
            **calibration_error_metrics(probs, targets),
            **selective_metrics(probs, targets),
            **joint_nll_metrics(probs, targets, 2_000, seed=EVALUATION_SEED),
            **conformal_metrics(val["member_probs"], val["targets"], probs, targets, alpha=0.2, seed=EVALUATION_SEED),
        }
        for key, value in expected.items():
            assert metrics[key] == pytest.approx(value, abs=1e-9), (name, key)
            assert trainer.logged_metrics[f"test/{name}/{key}"] == pytest.approx(value, abs=1e-5)  # TensorBoard's tag
    # OOD scores of the ood set against the first id set: max logit and energy from the saved logits
    ood = next(n for n, m in sets.items() if m["role"] == "ood")
    id_logits, ood_logits = saved(tmp_path, "digits")["member_logits"], saved(tmp_path, ood)["member_logits"]
    from_logits = logit_ood_metrics(id_logits, ood_logits)
    for key in ("auroc_maxlogit", "fpr95_energy", "aupr_in_energy"):
        assert sets[ood][key] == pytest.approx(from_logits[key], abs=1e-9)
    # energy and variation ratio by hand: numpy logsumexp of the mean logits, numpy votes, scikit-learn's AUROC
    def energy(z: torch.Tensor) -> np.ndarray:
        mean = z.double().numpy().mean(0)  # (N, C)
        top = mean.max(-1, keepdims=True)
        return -(top[:, 0] + np.log(np.exp(mean - top).sum(-1)))

    def variation_ratio(z: torch.Tensor) -> np.ndarray:
        votes = z.numpy().argmax(-1)  # (M, N)
        modal = np.array([np.bincount(column).max() for column in votes.T])
        return 1 - modal / votes.shape[0]

    for score, key in ((energy, "auroc_energy"), (variation_ratio, "auroc_variation_ratio")):
        id_s, ood_s = score(id_logits), score(ood_logits)
        auroc = roc_auc_score(np.r_[np.zeros(len(id_s)), np.ones(len(ood_s))], np.r_[id_s, ood_s])
        assert sets[ood][key] == pytest.approx(auroc, abs=1e-6), key
    assert "aurc_msp" not in sets[ood] and "auroc_maxlogit" not in sets["digits"]  # label metrics only where labels mean something


def test_a_conformal_alpha_outside_0_1_is_refused():
    with pytest.raises(Exception, match="--conformal_alpha must be between 0 and 1"):
        EvaluationOptions(conformal_alpha=1.5)
