"""What a run records and where its outputs go: seeds, labels, resolved config, the tested checkpoint,
predict's files, test steps in TensorBoard, and no run directory left by a start that failed."""

import logging

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ensemble_lab.config.run_config import OUTPUT, comparable, flatten
from tests.conftest import REPO, TINY_TRAINER, read_results, run_dirs

QUICK = [f"--config={REPO / 'configs' / 'digits' / 'single.yaml'}", *TINY_TRAINER, "--figures=false"]


def scalar_steps(run_dir, tag: str) -> list[int]:
    steps = []
    for events in run_dir.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            steps += [e.step for e in accumulator.Scalars(tag)]
    return steps


@pytest.mark.slow
def test_default_seed_is_drawn_at_random_recorded_and_printed(cli, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    for _ in range(2):
        cli("fit", *QUICK, "--seed_everything=true")
    seeds = []
    for run in run_dirs(tmp_path):
        recorded = yaml.safe_load((run / "config.yaml").read_text())["seed_everything"]
        assert isinstance(recorded, int) and not isinstance(recorded, bool) and read_results(run)["seed"] == recorded
        seeds.append(recorded)
    assert seeds[0] != seeds[1]  # two draws from 2**31 values
    assert all(f"seed_everything={s} (drawn at random" in caplog.text for s in seeds)
    # the recorded seed repeats the run: the same weights give the same results
    cli("fit", *QUICK, f"--seed_everything={seeds[0]}")
    assert read_results(run_dirs(tmp_path)[-1])["sets"] == read_results(run_dirs(tmp_path)[0])["sets"]


@pytest.mark.slow
def test_results_record_label_config_and_tested_checkpoint_and_test_logs_at_the_checkpoint_step(cli, tmp_path):
    cli("fit", *QUICK, "--run_name=my_single", "--model.dropout=0.1")
    (run,) = run_dirs(tmp_path)
    results = read_results(run)
    assert results["run_name"] == "my_single" and results["checkpoint"] == "checkpoints/last.ckpt"  # in its run
    assert results["config"]["model.init_args.dropout"] == 0.1
    assert results["config"] == comparable(flatten(yaml.safe_load((run / "config.yaml").read_text())))
    ckpt = run / "checkpoints" / "last.ckpt"
    step = torch.load(ckpt, weights_only=False)["global_step"]
    assert step == 3 and scalar_steps(run, "test/digits/acc") == [step]  # 3 = limit_train_batches
    assert "hp_metric" not in {t for e in run.glob("events*") for t in _tags(e)}

    # a later test of the checkpoint logs at the checkpoint's step, not at 0, and records the options it ran
    # with: the training's, its own output options (--overwrite, --figures) aside
    cli("test", f"--config={run / 'config.yaml'}", f"--ckpt_path={ckpt}", "--overwrite=true", "--figures=false")
    assert scalar_steps(run, "test/digits/acc") == [step, step]
    again = read_results(run)
    assert again["checkpoint"] == "checkpoints/last.ckpt" and again["run_name"] == "my_single"
    assert comparable(again["config"], OUTPUT) == comparable(results["config"], OUTPUT) and again["config"]["overwrite"] is True
    assert again["test_changes"] == results["test_changes"] == [] and again["fit_config"] is None


def _tags(events) -> set[str]:
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


@pytest.mark.slow
def test_predict_writes_member_probabilities_and_says_where(cli, tmp_path, capsys):
    config = REPO / "configs" / "digits" / "batch_ensemble.yaml"
    cli("fit", f"--config={config}", *TINY_TRAINER, "--model.num_members=3", "--save_predictions=true", "--figures=false")
    (run,) = run_dirs(tmp_path)
    tested = np.load(run / "predictions" / "digits.npz")
    (run / "predictions" / "digits.npz").unlink()
    capsys.readouterr()
    cli("predict", f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    path = run / "predictions" / "digits.npz"
    assert f"member probabilities of digits ({tested['targets'].shape[0]} images, 10 classes) -> {path}" in capsys.readouterr().out
    predicted = np.load(path)
    assert predicted["member_probs"].shape == tested["member_probs"].shape == (3, tested["targets"].shape[0], 10)
    np.testing.assert_allclose(predicted["member_probs"], tested["member_probs"], atol=1e-6)
    np.testing.assert_array_equal(predicted["targets"], tested["targets"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model.optimizer.lr=-0.1"], "Invalid learning rate: -0.1"),
        (["--model.lr_scheduler=MultiStepLR"], "--model.lr_scheduler MultiStepLR needs milestones: add --model.lr_scheduler.milestones VALUE"),
    ],
)
def test_a_failed_start_leaves_no_run_directory(cli, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", *QUICK, *args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err and "Namespace(" not in err
    assert err.strip().splitlines()[-1].startswith("ensemble-lab: error:")  # warnings may come before; the error line ends it
    assert run_dirs(tmp_path) == []


def test_a_failure_during_setup_removes_the_run_directory_it_made(cli, tmp_path, monkeypatch, capsys):
    """An error found only once the run directory exists (here: the datamodule's setup) cleans up after itself."""
    from ensemble_lab.data.digits import DigitsDataModule
    from ensemble_lab.errors import ConfigError

    def refuse(self, stage=None):
        raise ConfigError("--data.val_size: refused in setup")

    monkeypatch.setattr(DigitsDataModule, "setup", refuse)
    (tmp_path / "lightning_logs" / "version_0").mkdir(parents=True)  # an earlier run is kept
    with pytest.raises(SystemExit):
        cli("fit", *QUICK)
    assert "refused in setup" in capsys.readouterr().err
    assert [p.name for p in run_dirs(tmp_path)] == ["version_0"]


def test_print_config_checks_values_before_printing(cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", f"--config={REPO / 'configs' / 'digits' / 'batch_ensemble.yaml'}", "--model.num_members=0", "--print_config")
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and "num_members" in captured.err and "class_path" not in captured.out


def test_test_help_lists_no_fit_only_options(cli, capsys):
    for command, shown in (("test", False), ("fit", True)):
        with pytest.raises(SystemExit) as exit_info:
            cli(command, "--help")
        assert exit_info.value.code == 0, command
        out = capsys.readouterr().out
        assert ("--test_after_fit" in out) is shown and ("--checkpoint.save_top_k" in out) is shown
        assert "--run_name" in out and "--save_predictions" in out


#: the README's short-name fit, which sets no training length
SHORT_NAME_FIT = ["fit", "--model=BatchEnsemble", "--data=DigitsDataModule", "--model.num_members=2"]


@pytest.mark.parametrize(
    "given,max_epochs",
    [
        (["--trainer.max_epochs=3"], 3),
        (["--trainer.max_epochs=-1"], -1),  # asked for: no limit
        (["--trainer.max_steps=7"], None),  # a step limit alone: no epoch limit added beside it
        (["--trainer.max_time=00:00:01:00"], None),
    ],
)
def test_a_given_training_length_is_left_as_given(given, max_epochs):
    from ensemble_lab.config.lightning_cli import check_arguments

    assert check_arguments([*SHORT_NAME_FIT, *given])["trainer"]["max_epochs"] == max_epochs


def test_a_fit_without_a_training_length_gets_a_bounded_default_and_says_so(cli, tmp_path, caplog, monkeypatch):
    from ensemble_lab.config import training_length
    from ensemble_lab.config.lightning_cli import check_arguments

    # Lightning alone trains such a fit for 1000 epochs: the default is far below that, and recorded in the config
    default = check_arguments(SHORT_NAME_FIT)["trainer"]["max_epochs"]
    assert isinstance(default, int) and 1 <= default <= 100
    # the real run, with a default small enough for a test: it trains that many epochs, records and says it
    monkeypatch.setattr(training_length, "DEFAULT_MAX_EPOCHS", 2)
    caplog.set_level(logging.INFO)
    batches = 2
    cli(*SHORT_NAME_FIT, f"--trainer.limit_train_batches={batches}", "--trainer.limit_val_batches=1", "--test_after_fit=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.accelerator=cpu")
    (run,) = run_dirs(tmp_path)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2 * batches  # 2 epochs of 2 batches
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 2
    said = [line for line in caplog.text.splitlines() if "no --trainer.max_epochs, max_steps or max_time given" in line]
    assert len(said) == 1 and "training for 2 epochs" in said[0]
