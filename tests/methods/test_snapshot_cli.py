"""A SnapshotEnsemble through the real CLI: fit, test, the weight cosine and `connectivity` read its members as a
Deep Ensemble's."""

import json

import pytest
import torch
from torch.nn import functional as F

from ensemble_lab.cli import main
from ensemble_lab.connectivity.command import load_run
from tests.conftest import TINY_TRAINER, read_results, run_dirs
from tests.run_helpers import working_directory


@pytest.mark.slow
def test_fit_test_weight_cosine_and_connectivity_of_a_snapshot_ensemble(tmp_path):
    tiny = [opt for opt in TINY_TRAINER if "max_epochs" not in opt]
    with working_directory(tmp_path):
        main(["fit", "--model=SnapshotEnsemble", "--model.num_members=2", "--model.backbone.hidden_sizes=[16]", "--data=DigitsDataModule",
              "--trainer.max_epochs=2", "--figures=false", "--seed_everything=4", *tiny])  # fmt: skip
        run = run_dirs(tmp_path)[-1]
        main(["connectivity", "--config", str(run / "config.yaml"), "--points", "3"])
    results = read_results(run)
    assert results["method"] == "SnapshotEnsemble" and results["num_members"] == 2
    assert results["snapshot"] == "cycles" and results["snapshot_steps"] == [3, 6]  # 2 epochs of 3 steps, cycles of 3
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    # every member parameter of the MLP counts in the effective reading: member m's vector, read from the file
    rows = torch.stack([torch.cat([v[m].flatten() for k, v in state.items() if k.startswith("network.")]).double() for m in range(2)])
    cosine = float(rows[0] @ rows[1] / (rows[0].norm() * rows[1].norm()))
    assert results["weight_cosine_mean"] == pytest.approx(cosine, rel=1e-9)
    # the member that trained last equals the network in training
    assert all(torch.equal(state[f"network.{k.removeprefix('current.')}"][1], v) for k, v in state.items() if k.startswith("current."))
    document = json.loads((run / "connectivity.json").read_text())
    assert document["applicable"] is True and [(p["i"], p["j"]) for p in document["pairs"]] == [(0, 1)]
    model, datamodule = load_run(run / "config.yaml")
    model.load_state_dict(state)
    datamodule.setup("fit")
    assert datamodule.val_set is not None
    with torch.no_grad():
        logits = model.eval()(datamodule.preprocess(datamodule.val_set.images, train=False))  # (M, N, C)
    ends = [float(F.cross_entropy(member, datamodule.val_set.labels)) for member in logits]
    assert document["pairs"][0]["loss"][0] == pytest.approx(ends[0], rel=1e-5)
    assert document["pairs"][0]["loss"][-1] == pytest.approx(ends[1], rel=1e-5)
