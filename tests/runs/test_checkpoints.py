"""Early stopping on a validation metric and testing the best-validation checkpoint (the authors' MNIST
recipe) from the CLI: --early_stopping.*, --test_checkpoint best, test --ckpt_path best, and what
results.json records about the checkpoint it tested."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import REPO, TINY_TRAINER, read_results, run_dirs

QUICK = [f"--config={REPO / 'configs' / 'digits' / 'single.yaml'}", *TINY_TRAINER, "--figures=false"]
STEPS_PER_EPOCH = 3  # TINY_TRAINER's limit_train_batches


class RecordLastStep(Callback):
    """Appends the global step that checkpoints/last.ckpt holds at the start of every epoch after the first."""

    def __init__(self, log_file: str) -> None:
        """
        Args:
            log_file: a JSON-lines file; one [epoch, global step of last.ckpt] per line.
        """
        self.log_file = Path(log_file)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = Path(trainer.log_dir) / "checkpoints" / "last.ckpt"
        if trainer.current_epoch > 0:
            step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
            with self.log_file.open("a") as f:
                f.write(json.dumps([trainer.current_epoch, step]) + "\n")


def val_scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a TensorBoard scalar, in step order."""
    found = []
    for events in run.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            found += [(e.step, e.value) for e in accumulator.Scalars(tag)]
    return sorted(found)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def kept_checkpoints(run: Path) -> list[Path]:
    """The checkpoint files besides last.ckpt (ModelCheckpoint's top-k, here k = 1)."""
    return sorted(p for p in (run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")


def checkpoint_keys(results: dict) -> dict:
    return {k: v for k, v in results.items() if k.startswith("checkpoint")}


@pytest.mark.slow
def test_early_stopping_stops_a_run_whose_metric_cannot_improve(cli, tmp_path, caplog):
    # lr 0: the weights never change, so val/acc is the same every epoch and never improves after epoch 0
    patience = 2
    cli("fit", *QUICK, "--trainer.max_epochs=10", "--model.optimizer.lr=0", "--early_stopping.enabled=true",
        f"--early_stopping.patience={patience}", "--test_checkpoint=best")
    (run,) = run_dirs(tmp_path)
    last = load(run / "checkpoints" / "last.ckpt")
    # patience + 1 epochs trained (epoch 0, then `patience` without improvement), not max_epochs = 10
    assert last["epoch"] == patience and last["global_step"] == (patience + 1) * STEPS_PER_EPOCH
    curve = val_scalars(run, "val/acc")
    assert len(curve) == patience + 1 and len({value for _, value in curve}) == 1  # one validation per epoch
    assert any(key.startswith("OptionalEarlyStopping") for key in last["callbacks"])

    # without --checkpoint.monitor the checkpoint follows early stopping's metric: it kept epoch 0, the first best
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["checkpoint"]["monitor"] == "val/acc" and config["checkpoint"]["mode"] == "max"
    assert config["early_stopping"] == {"enabled": True, "monitor": "val/acc", "mode": "max", "patience": patience, "min_delta": 0.0}
    (best,) = kept_checkpoints(run)
    assert load(best)["global_step"] == STEPS_PER_EPOCH
    assert checkpoint_keys(read_results(run)) == {
        "checkpoint": f"checkpoints/{best.name}",
        "checkpoint_choice": "best",
        "checkpoint_epoch": 0,
        "checkpoint_step": STEPS_PER_EPOCH,
        "checkpoint_monitor": "val/acc",
        "checkpoint_score": pytest.approx(curve[0][1], abs=1e-7),
    }


@pytest.mark.slow
def test_test_checkpoint_best_tests_the_best_validation_checkpoint_and_test_finds_it_again(cli, tmp_path):
    # mode min on val/acc keeps the *worst* epoch (the first, from scratch), so best and last differ for sure
    record = tmp_path / "last_steps.jsonl"
    callback = {"class_path": "tests.runs.test_checkpoints.RecordLastStep", "init_args": {"log_file": str(record)}}
    epochs = 4
    cli("fit", *QUICK, f"--trainer.max_epochs={epochs}", "--checkpoint.monitor=val/acc", "--checkpoint.mode=min",
        "--test_checkpoint=best", f"--trainer.callbacks={json.dumps([callback])}")
    (run,) = run_dirs(tmp_path)
    after_fit = read_results(run)

    # independently: the epoch of the best val/acc in TensorBoard (mode min; a tie keeps the earlier epoch, as
    # ModelCheckpoint does); one validation per epoch, in order
    values = [value for _, value in val_scalars(run, "val/acc")]
    assert len(values) == epochs
    best_epoch = values.index(min(values))
    best_value, best_step = values[best_epoch], (best_epoch + 1) * STEPS_PER_EPOCH
    (kept,) = kept_checkpoints(run)
    best, last = load(kept), load(run / "checkpoints" / "last.ckpt")
    assert best["epoch"] == best_epoch and best["global_step"] == best_step
    assert best_step != last["global_step"] == epochs * STEPS_PER_EPOCH
    assert any(not torch.equal(t, last["state_dict"][k]) for k, t in best["state_dict"].items())
    state = next(s for k, s in best["callbacks"].items() if k.startswith("FinalLastCheckpoint"))
    assert state["monitor"] == "val/acc" and Path(state["best_model_path"]).name == kept.name
    assert checkpoint_keys(after_fit) == {
        "checkpoint": f"checkpoints/{kept.name}",
        "checkpoint_choice": "best",
        "checkpoint_epoch": best_epoch,
        "checkpoint_step": best_step,
        "checkpoint_monitor": "val/acc",
        "checkpoint_score": pytest.approx(float(state["best_model_score"]), abs=0),
    }
    assert after_fit["checkpoint_score"] == pytest.approx(best_value, abs=1e-7)
    assert not any(key.startswith("OptionalEarlyStopping") for key in last["callbacks"])  # off: no state stored
    # with a monitor, last.ckpt is still written every epoch (Lightning alone writes it only on an improvement)
    steps = [json.loads(line) for line in record.read_text().splitlines()]
    assert steps == [[e, e * STEPS_PER_EPOCH] for e in range(1, epochs)]

    # a separate test of that file gives the same numbers
    test = ["test", f"--config={run / 'config.yaml'}", "--overwrite=true", "--figures=false"]
    cli(*test, f"--ckpt_path={kept}")
    separate = read_results(run)
    assert separate["sets"] == after_fit["sets"] and checkpoint_keys(separate) == checkpoint_keys(after_fit)
    assert separate["sets"]["digits"]["acc"] == after_fit["sets"]["digits"]["acc"]

    # --ckpt_path best: the newest run's best checkpoint, the same file
    cli(*test, "--ckpt_path=best")
    again = read_results(run)
    assert checkpoint_keys(again) == checkpoint_keys(after_fit) and again["sets"] == after_fit["sets"]
    assert run_dirs(tmp_path) == [run] and (run / "config.test-2.yaml").exists()

    # --ckpt_path last: the final weights, recorded as such
    cli(*test, "--ckpt_path=last")
    final = read_results(run)
    assert checkpoint_keys(final) == {
        "checkpoint": "checkpoints/last.ckpt",
        "checkpoint_choice": "last",
        "checkpoint_epoch": epochs - 1,
        "checkpoint_step": epochs * STEPS_PER_EPOCH,
        "checkpoint_monitor": None,
        "checkpoint_score": None,
    }
    assert final["sets"] != after_fit["sets"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--test_checkpoint=best"], "--test_checkpoint best needs a monitored validation metric: pass --checkpoint.monitor val/acc"),
        (
            ["--early_stopping.enabled=true", "--early_stopping.monitor=val/accuracy"],
            "--early_stopping.monitor val/accuracy: SingleModel logs no such metric; choose one of val/acc, val/nll, val/ece, val/mi, val/disagreement",
        ),
        (["--checkpoint.monitor=val/loss", "--test_checkpoint=best"], "--checkpoint.monitor val/loss: SingleModel logs no such metric; choose one of val/acc,"),
        (["--early_stopping.enabled=true", "--trainer.limit_val_batches=0"], "--early_stopping.monitor val/acc needs validation"),
        (["--early_stopping.patience=-1"], "--early_stopping.patience must be >= 0, got -1"),
        (["--ckpt_path=best"], "fit --ckpt_path best: a fit continues from its final state (--ckpt_path last)"),
    ],
)
def test_a_bad_checkpoint_choice_is_refused_in_one_line_before_anything_is_written(cli, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", *QUICK, *args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("ensemble-lab: error:")] == [err.strip().splitlines()[-1]]
    assert run_dirs(tmp_path) == [] and not (tmp_path / "lightning_logs").exists()


def test_test_ckpt_path_best_without_runs_is_refused(cli, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("test", *QUICK, "--ckpt_path=best")
    assert exit_info.value.code == 2
    assert "--ckpt_path best: no run with a checkpoints/last.ckpt below" in capsys.readouterr().err
    assert run_dirs(tmp_path) == []


@pytest.mark.slow
def test_test_ckpt_path_best_of_a_run_without_a_monitor_is_refused_and_changes_nothing(cli, tmp_path, capsys):
    cli("fit", *QUICK)
    (run,) = run_dirs(tmp_path)
    before = sorted(p.name for p in run.iterdir())
    results = (run / "results.json").read_bytes()
    assert checkpoint_keys(read_results(run))["checkpoint_choice"] == "last"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli("test", f"--config={run / 'config.yaml'}", "--ckpt_path=best", "--overwrite=true")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "keeps no best checkpoint (it was trained without --checkpoint.monitor" in err
    assert run_dirs(tmp_path) == [run] and sorted(p.name for p in run.iterdir()) == before
    assert (run / "results.json").read_bytes() == results


def test_checkpoint_choice_options_are_fit_only_in_help(cli, capsys):
    for command, shown in (("fit", True), ("test", False), ("validate", False)):
        with pytest.raises(SystemExit):
            cli(command, "--help")
        out = capsys.readouterr().out
        for option in ("--early_stopping.enabled", "--early_stopping.patience", "--test_checkpoint"):
            assert (option in out) is shown, (command, option)



def test_checkpoint_epoch_of_step_checkpoints_is_the_0_based_epoch_of_the_weights(cli, tmp_path):
    # step checkpoints at step 4; the final weights (step 6, the end of epoch 1) are saved once more when training
    # ends, where Lightning's epoch counter has already moved past the last epoch
    cli("fit", *QUICK, "--trainer.max_epochs=2", "--checkpoint.every_n_train_steps=4")
    (run,) = run_dirs(tmp_path)
    last = load(run / "checkpoints" / "last.ckpt")
    steps = 2 * STEPS_PER_EPOCH
    assert last["global_step"] == steps
    # by hand: optimizer step number `steps` (1-based) falls in 0-based epoch (steps - 1) // STEPS_PER_EPOCH = 1,
    # what a fit of the same 2 epochs without step checkpoints records
    epoch = (steps - 1) // STEPS_PER_EPOCH
    assert last["epoch"] == epoch
    assert checkpoint_keys(read_results(run))["checkpoint_epoch"] == epoch
