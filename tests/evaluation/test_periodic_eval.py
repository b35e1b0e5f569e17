"""--eval_sets_every K: when it evaluates, what it logs, and that training is the same with it."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from ensemble_lab.cli import main
from ensemble_lab.evaluation.extended import is_extended
from ensemble_lab.evaluation.sets import eval_due, scalars, set_metrics
from ensemble_lab.metrics.classification import predictive_metrics
from ensemble_lab.metrics.ood import ood_metrics
from ensemble_lab.runs.metrics_csv import read_metrics_csv
from tests.conftest import TINY_TRAINER, run_dirs
from tests.run_helpers import working_directory


def fake_trainer(epoch: int, max_epochs: int | None = 5, max_steps: int = -1, global_step: int = 0, **state) -> SimpleNamespace:
    fn = state.get("fn", TrainerFn.FITTING)
    # a validation after batch `batch` (0-based) of 10, one every `val_every` batches; the last batch by default
    batch = state.get("batch", 9)
    loop = SimpleNamespace(batch_idx=batch, batch_progress=SimpleNamespace(is_last_batch=batch == 9))
    return SimpleNamespace(current_epoch=epoch, max_epochs=max_epochs, max_steps=max_steps, global_step=global_step,
                           sanity_checking=state.get("sanity", False), state=SimpleNamespace(fn=fn),
                           fit_loop=SimpleNamespace(epoch_loop=loop), check_val_every_n_epoch=1,
                           val_check_batch=state.get("val_every", 10), num_training_batches=10)  # fmt: skip


def test_due_every_k_epochs_and_at_the_last():
    assert [e for e in range(5) if eval_due(fake_trainer(e), 2)] == [1, 3, 4]  # epochs 2 and 4 (1-based), and the last
    assert [e for e in range(5) if eval_due(fake_trainer(e), 1)] == [0, 1, 2, 3, 4]
    assert not any(eval_due(fake_trainer(e), 0) for e in range(5))  # 0: off
    assert eval_due(fake_trainer(0, max_epochs=None, max_steps=30, global_step=30), 7)  # max_steps reached
    assert not eval_due(fake_trainer(1, sanity=True), 2) and not eval_due(fake_trainer(1, fn=TrainerFn.VALIDATING), 2)
    # several validations an epoch: only the last one counts, whether or not it follows the epoch's last batch
    assert [b for b in (4, 9) if eval_due(fake_trainer(1, batch=b, val_every=5), 2)] == [9]
    assert [b for b in (2, 5, 8) if eval_due(fake_trainer(1, batch=b, val_every=3), 2)] == [8]  # none after batch 9
    assert eval_due(fake_trainer(0, max_epochs=None, max_steps=30, global_step=30, batch=4, val_every=5), 7)  # the fit's last step


def test_set_metrics_scores_ood_sets_against_the_first_id_set():
    g = torch.Generator().manual_seed(0)
    sets = {name: (torch.softmax(torch.randn(3, 40, 5, generator=g), -1), torch.randint(0, 5, (40,), generator=g)) for name in "abc"}
    roles = {"a": "id", "b": "shift", "c": "ood"}
    result = set_metrics(sets, roles)
    for name in "ab":
        assert result[name] == {"role": roles[name], **predictive_metrics(*sets[name])}
    assert result["c"] == {"role": "ood", **predictive_metrics(*sets["c"]), **ood_metrics(sets["a"][0], sets["c"][0])}
    logged = scalars("val", result)
    assert logged["val/c/auroc_mi"] == result["c"]["auroc_mi"] and "val/a/member_acc" not in logged and "val/a/role" not in logged


# MC Dropout: training (its dropout) and every evaluation (its M samples) draw from the same global stream
FIT = ["fit", "--model=MCDropout", "--model.num_members=3", "--data=DigitsDataModule", *TINY_TRAINER,
       "--trainer.max_epochs=2", "--figures=false", "--test_after_fit=false", "--seed_everything=11"]  # fmt: skip


def fit_in(directory: Path, *args: str) -> Path:
    directory.mkdir()
    with working_directory(directory):
        main([*FIT, *args])
    (run,) = run_dirs(directory)
    return run


@pytest.mark.slow
def test_evaluating_the_sets_every_epoch_changes_no_weight_and_no_validation(tmp_path):
    every = fit_in(tmp_path / "every", "--eval_sets_every=1", "--test_after_fit=true")
    # checkpoints every 2 steps (none at an epoch's end): metrics.csv takes its rows when the next epoch starts
    off = fit_in(tmp_path / "off", "--checkpoint.every_n_train_steps=2")
    weights = [torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"] for run in (every, off)]
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
    with_sets, without = read_metrics_csv(every / "metrics.csv"), read_metrics_csv(off / "metrics.csv")
    assert [r["epoch"] for r in with_sets] == [0, 1] == [r["epoch"] for r in without]
    # the validation curves (MC Dropout samples there too) are the same; only the per-set columns are added
    assert [{k: v for k, v in r.items() if k.count("/") < 2} for r in with_sets] == without
    for row in with_sets:
        assert {f"val/{s}/mi" for s in ("digits", "digits_shifted", "photo_patches")} | {"val/photo_patches/auroc_mi"} <= set(row)
        assert row["val/digits/mi"] > 0 and 0 <= row["val/photo_patches/auroc_mi"] <= 1
    # the last epoch's sets were drawn as a test draws (MC Dropout's masks from the run's seed): the same numbers
    for name, metrics in json.loads((every / "results.json").read_text())["sets"].items():
        for key, value in metrics.items():
            if isinstance(value, float) and not is_extended(key):
                assert with_sets[-1][f"val/{name}/{key}"] == float(np.float32(value)), (name, key)  # logged as float32
            elif isinstance(value, float):  # a test's extended metrics (evaluation/extended.py) are not logged during fit
                assert f"val/{name}/{key}" not in with_sets[-1], key

