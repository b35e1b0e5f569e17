"""Masksembles through the real CLI: a study's seeds (--seed_everything) draw other masks, the same seed the
same masks, and a test of the checkpoint evaluates the masks the run trained with."""

import json

import pytest
import torch
from lightning import seed_everything

from ensemble_lab.methods import Masksembles
from tests.conftest import REPO, TINY_TRAINER, run_dirs

CONFIG = REPO / "configs" / "digits" / "masksembles.yaml"


def checkpoint_masks(run) -> tuple[dict[str, torch.Tensor], dict]:
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    masks = {k: v for k, v in checkpoint["state_dict"].items() if k.endswith(".masks")}
    return masks, checkpoint["hyper_parameters"]


@pytest.mark.slow
def test_run_seed_draws_the_masks_and_a_test_keeps_them(cli, tmp_path):
    runs = []
    for seed in (1, 2):
        cli("fit", f"--config={CONFIG}", f"--seed_everything={seed}", *TINY_TRAINER)
        runs.append(run_dirs(tmp_path)[-1])
    (one, hparams), (two, _) = checkpoint_masks(runs[0]), checkpoint_masks(runs[1])
    assert len(one) == 3 and one.keys() == two.keys()  # one mask layer per hidden activation of 64-32-16
    assert all(not torch.equal(one[k], two[k]) for k in one)  # another seed, other masks in every layer
    assert hparams["mask_seed"] == 1
    # the same seed, outside the CLI: the same masks (training never changes them)
    seed_everything(1, verbose=False)
    again = Masksembles(num_members=4, hidden_sizes=[64, 32, 16], input_shape=(1, 8, 8)).state_dict()
    assert all(torch.equal(again[k], one[k]) for k in one)
    # a test under another seed evaluates the checkpoint's masks: the fit's own test results again
    run = runs[0]
    before = json.loads((run / "results.json").read_text())["sets"]
    cli("test", f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "--seed_everything=3", "--overwrite=true")
    assert json.loads((run / "results.json").read_text())["sets"] == before
