"""Spawned ensembles: members start as one parent network after epoch t, then train apart; resumes in the
parent's and in the children's phase reproduce uninterrupted runs."""

import csv
import shutil
from pathlib import Path

import pytest
import torch

from ensemble_lab.cli import main
from ensemble_lab.errors import CheckpointMismatchError, ConfigError
from ensemble_lab.methods.deep_ensemble import DeepEnsemble
from ensemble_lab.methods.spawn import spawned_checkpoint
from ensemble_lab.runs.callbacks import FinalLastCheckpoint
from tests.conftest import REPO, run_dirs
from tests.run_helpers import working_directory

DIGITS = REPO / "configs" / "digits"
#: 3 epochs of 3 steps, no test: each fit takes a second or two
TINY = [
    "--trainer.max_epochs=3",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--test_after_fit=false",
    "--figures=false",
    "--seed_everything=3",
]
CHILD = ["fit", "--config", str(DIGITS / "deep_ensemble.yaml"), *TINY, "--model.num_members=2", "--data.train_batch=independent"]


def _fit(where: Path, *args: str) -> Path:
    """Fit in ``where`` (lightning_logs/ goes there); the run directory."""
    where.mkdir(parents=True, exist_ok=True)
    with working_directory(where):
        main(list(args))
    return run_dirs(where)[-1]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """A SingleModel run of 3 epochs keeping its checkpoints after epochs 1 and 3."""
    root = tmp_path_factory.mktemp("parent")
    return _fit(root, "fit", "--config", str(DIGITS / "single.yaml"), *TINY, "--checkpoint.keep_epochs=[1,3]")


def test_the_parent_keeps_a_copy_of_last_ckpt_after_the_epochs_asked_for(parent):
    kept = {p.name for p in (parent / "checkpoints").glob("spawn-epoch=*.ckpt")}
    assert kept == {"spawn-epoch=1.ckpt", "spawn-epoch=3.ckpt"}
    after_1 = torch.load(parent / "checkpoints" / "spawn-epoch=1.ckpt", weights_only=True)
    assert (after_1["epoch"], after_1["global_step"]) == (0, 3)  # 0-based epoch of its weights, 3 steps done
    final = _state(parent / "checkpoints" / "last.ckpt")
    assert all(torch.equal(final[k], v) for k, v in _state(parent / "checkpoints" / "spawn-epoch=3.ckpt").items())


def test_the_spawned_checkpoint_is_the_parent_in_every_member(parent):
    path = parent / "checkpoints" / "spawn-epoch=1.ckpt"
    theirs = torch.load(path, weights_only=True)
    model = DeepEnsemble(num_members=3, dropout=0.05, optimizer=lambda params: torch.optim.Adam(params, lr=0.003))
    spawned = spawned_checkpoint(path, model, max_epochs=3)
    for key, tensor in theirs["state_dict"].items():  # (M, ...): three copies of the parent's tensor
        assert all(torch.equal(spawned["state_dict"][key][m], tensor) for m in range(3)), key
    names = [n for n, _ in model.named_parameters()]  # the optimizer's parameter order
    for index, entry in theirs["optimizer_states"][0]["state"].items():
        mine = spawned["optimizer_states"][0]["state"][index]
        assert torch.equal(mine["step"], entry["step"])
        for moment in ("exp_avg", "exp_avg_sq"):
            assert all(torch.equal(mine[moment][m], entry[moment]) for m in range(3)), (names[index], moment)
    assert (spawned["epoch"], spawned["global_step"], spawned["loops"]) == (theirs["epoch"], theirs["global_step"], theirs["loops"])
    assert "rng" not in spawned["ensemble_lab"] and "callbacks" not in spawned  # its own random streams from here on
    assert not any("DataModule" in key for key in spawned)  # and its own data order


def test_spawned_at_the_last_epoch_the_members_are_the_parent(parent, tmp_path):
    run = _fit(tmp_path, *CHILD, f"--model.spawn_from={parent / 'checkpoints' / 'spawn-epoch=3.ckpt'}")
    final, theirs = _state(run / "checkpoints" / "last.ckpt"), _state(parent / "checkpoints" / "last.ckpt")
    for key, tensor in theirs.items():
        assert all(torch.equal(final[key][m], tensor) for m in range(2)), key


@pytest.fixture(scope="module")
def child(parent, tmp_path_factory) -> Path:
    """A Deep Ensemble of 2 spawned after epoch 1 of 3, keeping its own checkpoint after epoch 2."""
    root = tmp_path_factory.mktemp("child")
    return _fit(root, *CHILD, f"--model.spawn_from={parent / 'checkpoints' / 'spawn-epoch=1.ckpt'}", "--checkpoint.keep_epochs=[2]")


def test_after_the_spawn_the_members_part(parent, child):
    final, start = _state(child / "checkpoints" / "last.ckpt"), _state(parent / "checkpoints" / "spawn-epoch=1.ckpt")
    weights = [k for k in final if k.endswith("weight")]
    assert all(not torch.equal(final[k][0], final[k][1]) for k in weights)  # own data order and dropout
    assert all(not torch.equal(final[k][0], start[k]) for k in weights)  # and both moved on from the parent


def test_a_resume_in_the_children_phase_reproduces_the_uninterrupted_run(parent, child, tmp_path):
    copy = tmp_path / "lightning_logs" / "version_0"  # the run as it stood after epoch 2 of 3
    shutil.copytree(child, copy, ignore=shutil.ignore_patterns("*.ckpt", "events.*", "metrics.csv"))
    shutil.copyfile(child / "checkpoints" / "spawn-epoch=2.ckpt", copy / "checkpoints" / "after-2.ckpt")
    spawn = f"--model.spawn_from={parent / 'checkpoints' / 'spawn-epoch=1.ckpt'}"
    resumed = _fit(tmp_path, *CHILD, spawn, f"--ckpt_path={copy / 'checkpoints' / 'after-2.ckpt'}")
    assert resumed == copy
    final, uninterrupted = _state(copy / "checkpoints" / "last.ckpt"), _state(child / "checkpoints" / "last.ckpt")
    assert all(torch.equal(final[k], v) for k, v in uninterrupted.items())


def test_a_resume_in_the_parents_phase_gives_the_same_spawn_point(parent, tmp_path):
    copy = tmp_path / "lightning_logs" / "version_0"  # the parent as it stood after epoch 1 of 3
    shutil.copytree(parent, copy, ignore=shutil.ignore_patterns("*.ckpt", "events.*", "metrics.csv"))
    shutil.copyfile(parent / "checkpoints" / "spawn-epoch=1.ckpt", copy / "checkpoints" / "after-1.ckpt")
    resume = f"--ckpt_path={copy / 'checkpoints' / 'after-1.ckpt'}"
    _fit(tmp_path, "fit", "--config", str(DIGITS / "single.yaml"), *TINY, "--checkpoint.keep_epochs=[1,3]", resume)
    mine = torch.load(copy / "checkpoints" / "spawn-epoch=3.ckpt", weights_only=True)
    theirs = torch.load(parent / "checkpoints" / "spawn-epoch=3.ckpt", weights_only=True)
    assert all(torch.equal(mine["state_dict"][k], v) for k, v in theirs["state_dict"].items())
    for index, entry in theirs["optimizer_states"][0]["state"].items():  # the children start from the same optimizer state
        assert all(torch.equal(mine["optimizer_states"][0]["state"][index][k], v) for k, v in entry.items())


def test_spawning_from_another_method_or_past_the_last_epoch_is_one_line(parent, tmp_path):
    model = DeepEnsemble(num_members=2, dropout=0.05, optimizer=lambda params: torch.optim.Adam(params, lr=0.003))
    with pytest.raises(ConfigError, match="past this run's --trainer.max_epochs 2"):
        spawned_checkpoint(parent / "checkpoints" / "spawn-epoch=3.ckpt", model, max_epochs=2)
    bad = tmp_path / "ensemble.ckpt"  # a Deep Ensemble is no parent: members spawn from one network
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {**model.hparams, "_class_path": "ensemble_lab.methods.DeepEnsemble"}}, bad)
    with pytest.raises(CheckpointMismatchError, match="not a SingleModel"):
        spawned_checkpoint(bad, model, max_epochs=3)
    with pytest.raises(ConfigError, match="counted from 1"):
        FinalLastCheckpoint(keep_epochs=[0, 2])


def test_a_spawned_runs_metrics_csv_has_a_row_per_epoch_it_trained_and_no_blank_row(child):
    with open(child / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # spawned after epoch 1 of 3 (3 steps each): the run trains 0-based epochs 1 and 2, ending at steps 6 and 9
    assert [(row["epoch"], row["step"]) for row in rows] == [("1", "6"), ("2", "9")]
    assert all(value != "" for row in rows for value in row.values())  # each epoch logs every column
    assert {"train/loss_epoch", "val/acc"} <= set(rows[0])
