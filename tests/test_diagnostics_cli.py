"""Diversity diagnostics through the real CLI: results.json keys, weight cosine, figures, --figures false."""

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ensemble_lab.methods import BatchEnsemble
from ensemble_lab.metrics.weight_space import weight_cosine
from tests.conftest import TINY_TRAINER, read_results, run_dirs

FIGURES = {
    "reliability_digits",
    "reliability_digits_shifted",
    "uncertainty_histograms",
    "pairwise_disagreement_digits",
    "weight_cosine",
    "weight_cosine_stored",
}


@pytest.mark.slow
def test_batch_ensemble_diagnostics_and_figures(cli, tmp_path):
    cli("fit", "--model=BatchEnsemble", "--model.num_members=3", "--data=DigitsDataModule", "--seed_everything=3", *TINY_TRAINER)
    (run,) = run_dirs(tmp_path)
    results = read_results(run)

    # function space, per set: M-long lists and M × M matrices, symmetric with a zero diagonal
    for name, metrics in results["sets"].items():
        for key in ("member_acc", "member_nll", "member_ece"):
            assert len(metrics[key]) == 3, (name, key)
        for key in ("pairwise_disagreement", "pairwise_jsd"):
            matrix = np.array(metrics[key])
            assert matrix.shape == (3, 3) and np.allclose(matrix, matrix.T) and np.all(np.diag(matrix) == 0), (name, key)
        off = np.array(metrics["pairwise_disagreement"])[np.triu_indices(3, 1)]
        assert metrics["disagreement"] == pytest.approx(off.mean())

    # weight space: what the checkpoint's weights give
    cosine = np.array(results["weight_cosine"])
    assert cosine.shape == (3, 3) and np.allclose(cosine, cosine.T) and np.all(np.diag(cosine) == 1.0)
    assert results["weight_cosine_mean"] == pytest.approx(cosine[~np.eye(3, dtype=bool)].mean())
    model = BatchEnsemble.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert np.allclose(weight_cosine(model).numpy(), cosine, atol=1e-12)
    # the stored reading: every parameter, the shared W in every member's vector, member i's rows of r, s, b
    own = {id(p) for m in model.modules() if hasattr(m, "r") for p in (m.r, m.s, m.bias) if p is not None}
    shared_sq = sum(float(p.detach().double().square().sum()) for p in model.parameters() if id(p) not in own)
    vectors = np.stack([
        np.concatenate([p[i].detach().double().flatten().numpy() for p in model.parameters() if id(p) in own])
        for i in range(3)
    ])  # fmt: skip
    gram = vectors @ vectors.T + shared_sq
    stored = gram / np.sqrt(np.outer(np.diag(gram), np.diag(gram)))
    assert np.allclose(results["weight_cosine_stored"], stored, atol=1e-12)
    assert results["weight_cosine_stored_mean"] > results["weight_cosine_mean"]  # the shared W pulls it towards 1

    # cost: every parameter counted, one member's share, FLOPs and a measured rate
    cost = results["cost"]
    assert cost["parameters"] == sum(p.numel() for p in model.parameters())
    assert cost["parameters_per_member"] == cost["parameters"] - 2 * sum(m.r.numel() + m.s.numel() + m.bias.numel() for m in model.modules() if hasattr(m, "r")) // 3
    assert cost["flops_per_image"] > 0 and cost["images_per_s"] > 0 and cost["peak_memory_bytes"] is None

    # figures: PNG files and TensorBoard images, plus the weight cosine scalar
    assert {p.stem for p in (run / "figures").glob("*.png")} == FIGURES
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {f"test/figures/{name}" for name in FIGURES}
    assert events.Scalars("test/weight_cosine_mean")[0].value == pytest.approx(results["weight_cosine_mean"], abs=1e-6)
    assert events.Scalars("test/weight_cosine_stored_mean")[0].value == pytest.approx(results["weight_cosine_stored_mean"], abs=1e-6)
    # the effective cosine's curve: one point per validation epoch, the last one that of the final weights
    (last_val,) = events.Scalars("val/weight_cosine")
    assert last_val.value == pytest.approx(results["weight_cosine_mean"], abs=1e-6)

    # --figures false draws nothing; the earlier test's figures are kept aside, not left beside the new results
    cli("test", "--config", str(run / "config.yaml"), f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "--overwrite=true", "--figures=false")  # fmt: skip
    assert not (run / "figures").exists()
    assert {p.stem for p in (run / "figures.prev-1").glob("*.png")} == FIGURES and (run / "results.prev-1.json").exists()
    assert read_results(run)["weight_cosine"] == results["weight_cosine"]
