"""metrics.csv: one row per epoch holding the values TensorBoard got, per-set columns every K epochs
(checked against the metric functions on a checkpoint's predictions and the test after fit), and a resumed
run's file equal to an uninterrupted run's."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ensemble_lab.cli import main
from ensemble_lab.data.digits import DigitsDataModule
from ensemble_lab.evaluation.extended import is_extended
from ensemble_lab.methods import BatchEnsemble
from ensemble_lab.metrics.classification import predictive_metrics
from ensemble_lab.metrics.ood import ood_metrics
from ensemble_lab.runs.metrics_csv import read_metrics_csv
from tests.conftest import TINY_TRAINER, read_results, run_dirs
from tests.run_helpers import sigint_once, working_directory

SEED = 7
# BatchEnsemble with dropout: training draws from the global RNG (a resume must continue that stream), and
# its members have weights of their own (the val/weight_cosine column)
FIT = [
    "fit", "--model=BatchEnsemble", "--model.num_members=2", "--model.dropout=0.2", "--data=DigitsDataModule",
    *TINY_TRAINER, "--trainer.max_epochs=4", "--trainer.log_every_n_steps=1", "--eval_sets_every=2",
    "--figures=false", f"--seed_everything={SEED}",
]  # fmt: skip
SETS = {"digits": "id", "digits_shifted": "shift", "photo_patches": "ood"}


def per_set_columns(row: dict) -> dict:
    return {k: v for k, v in row.items() if k.count("/") == 2}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    with working_directory(root):
        main([*FIT, "--checkpoint.save_top_k=-1"])  # keeps every epoch's checkpoint (training is the same)
    (run,) = run_dirs(root)
    return run


def tensorboard_scalars(run: Path) -> dict[str, list[float]]:
    """Every scalar series of the run's event files (the fit's, the test's), in step order."""
    events: dict[str, list] = {}
    for path in run.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            events.setdefault(tag, []).extend(accumulator.Scalars(tag))
    return {tag: [e.value for e in sorted(found, key=lambda e: e.step)] for tag, found in events.items()}


@pytest.mark.slow
def test_one_row_per_epoch_holding_what_tensorboard_got(uninterrupted):
    rows = read_metrics_csv(uninterrupted / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3] and [r["step"] for r in rows] == [3, 6, 9, 12]  # 3 batches an epoch
    scalars = tensorboard_scalars(uninterrupted)
    # every epoch-level scalar of the fit is a column; per-step values and the test's values are not
    epoch_level = {tag for tag in scalars if not tag.startswith("test/") and tag not in ("epoch", "train/loss_step")}
    assert "train/loss_step" in scalars and set(rows[0]) - {"epoch", "step"} <= epoch_level
    assert set(rows[-1]) == {"epoch", "step", *epoch_level}
    assert {"train/loss_epoch", "train/acc", "val/acc", "val/nll", "val/mi", "val/disagreement", "val/weight_cosine",
            "val/photo_patches/auroc_mi", "val/digits_shifted/mi"} <= epoch_level  # fmt: skip
    for tag in epoch_level:
        column = [r[tag] for r in rows if r.get(tag) is not None]
        assert np.array_equal(np.float32(column), np.float32(scalars[tag])), tag  # TensorBoard stores float32
    # the test sets were evaluated at epochs 1 and 3 (K = 2; 3 is also the last), and no value is repeated in between
    for row in rows:
        assert {v is None for v in per_set_columns(row).values()} == {row["epoch"] % 2 == 0}, row["epoch"]
    assert len(per_set_columns(rows[1])) > 30


@pytest.mark.slow
def test_last_epoch_sets_equal_the_test_after_fit(uninterrupted):
    last = read_metrics_csv(uninterrupted / "metrics.csv")[-1]
    sets = read_results(uninterrupted)["sets"]
    compared = 0
    for name, metrics in sets.items():
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not is_extended(key):  # a test's alone
                assert last[f"val/{name}/{key}"] == float(np.float32(value)), (name, key)  # logged as float32
                compared += 1
    assert compared >= 30 and "val/photo_patches/auroc_mi" in last


@pytest.mark.slow
def test_epoch_sets_match_the_metric_functions_on_that_epochs_checkpoint(uninterrupted):
    (checkpoint,) = (uninterrupted / "checkpoints").glob("epoch=1-step=6*.ckpt")
    model = BatchEnsemble.load_from_checkpoint(checkpoint).eval()
    data = DigitsDataModule()
    data.setup("test")
    collected = {}
    with torch.no_grad():
        for name, loader in zip(SETS, data.test_dataloader()):
            probs = [torch.softmax(model(data.preprocess(images, train=False)), -1) for images, _, _ in loader]
            collected[name] = (torch.cat(probs, 1), data.test_sets[name].labels)  # (M, N, C), (N,)
    expected = {name: predictive_metrics(*collected[name]) for name in SETS}
    expected["photo_patches"].update(ood_metrics(collected["digits"][0], collected["photo_patches"][0]))
    row = read_metrics_csv(uninterrupted / "metrics.csv")[1]
    for name, metrics in expected.items():
        for key, value in metrics.items():
            if isinstance(value, float):
                assert math.isclose(row[f"val/{name}/{key}"], value, rel_tol=1e-5, abs_tol=1e-6), (name, key)


@pytest.mark.slow
def test_a_resumed_run_continues_the_file_as_if_never_interrupted(uninterrupted, tmp_path, sigint_enabled):
    interrupt = sigint_once("fit", tmp_path / "sent", step=10)  # in epoch 3: last.ckpt is the end of epoch 2
    with working_directory(tmp_path), pytest.raises(SystemExit) as stopped:
        main([*FIT, interrupt])
    assert stopped.value.code == 130
    (run,) = run_dirs(tmp_path)
    assert [r["epoch"] for r in read_metrics_csv(run / "metrics.csv")] == [0, 1, 2]
    # an attempt that got further than its checkpoint: its rows (and a column only they had) must go
    text = (run / "metrics.csv").read_text().splitlines()
    bogus = [text[0] + ",val/bogus", *(line + "," for line in text[1:]), "3,12" + ",0.5" * (text[0].count(",") - 1) + ",1.0"]
    (run / "metrics.csv").write_text("\n".join(bogus) + "\n")
    with working_directory(tmp_path):
        main([*FIT, interrupt, "--ckpt_path=last"])  # the flag file exists: no second signal
    assert run_dirs(tmp_path) == [run]
    assert (run / "metrics.csv").read_text() == (uninterrupted / "metrics.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("interval, validations", [(1, 3), (2, 1)])  # (2: after batch 2 of 3 only, not after the last)
def test_several_validations_an_epoch_evaluate_the_sets_once_at_its_end(tmp_path, interval, validations):
    # 3 batches an epoch, a validation every `interval` batches: the test sets once an epoch (K = 1)
    with working_directory(tmp_path):
        main([*FIT, "--trainer.max_epochs=2", "--eval_sets_every=1", f"--trainer.val_check_interval={interval}"])
    (run,) = run_dirs(tmp_path)
    scalars = tensorboard_scalars(run)
    assert len(scalars["val/acc"]) == 2 * validations
    assert len(scalars["val/photo_patches/auroc_mi"]) == 2 and len(scalars["val/digits_shifted/acc"]) == 2
    rows = read_metrics_csv(run / "metrics.csv")
    # the epoch's row holds the values its end gave: the last epoch's equal the test after fit
    sets = read_results(run)["sets"]
    assert rows[-1]["val/digits_shifted/acc"] == pytest.approx(sets["digits_shifted"]["acc"], abs=1e-6)
