"""Nothing lost: a SIGKILLed fit resumes to the very same weights and results, runs are
deterministic, and a second test keeps the earlier results."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ensemble_lab.cli import main
from tests.conftest import REPO, read_results, reproducible, run_dirs
from tests.run_helpers import working_directory

# BatchEnsemble with dropout on randomly cropped and flipped digits: training draws from the global
# RNG (dropout masks, crops) as well as from the data order, so an exact resume must restore both.
# 2 epochs of 10 steps; a checkpoint every 4 steps, so the one at step 12 lies inside epoch 1.
CONFIG = """\
seed_everything: 5
trainer:
  max_epochs: 2
  limit_train_batches: 10
  limit_val_batches: 2
  accelerator: cpu
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 5
model:
  class_path: BatchEnsemble
  init_args:
    num_members: 2
    dropout: 0.1
data:
  class_path: tests.run_helpers.AugmentedDigits
checkpoint:
  every_n_train_steps: 4
figures: false
"""
PAUSE = """\
trainer:
  callbacks:
    - class_path: tests.run_helpers.PauseAtStep
      init_args: {step: 14, flag_file: paused.flag}
"""


def fit_in(directory: Path, *args: str) -> Path:
    """``ensemble-lab fit --config config.yaml`` run in ``directory``; returns its run directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(CONFIG)
    with working_directory(directory):
        main(["fit", "--config=config.yaml", *args])
    return run_dirs(directory)[-1]


def state_dict(run: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 20
    return checkpoint["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    return fit_in(tmp_path_factory.mktemp("uninterrupted"))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_same_weights_and_results(uninterrupted, tmp_path):
    (tmp_path / "config.yaml").write_text(CONFIG)
    (tmp_path / "pause.yaml").write_text(PAUSE)
    # `--ckpt_path last` with nothing to resume yet starts a new run: one command for both cases
    command = [sys.executable, "-m", "ensemble_lab", "fit", "--config=config.yaml", "--config=pause.yaml", "--ckpt_path=last"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "paused.flag").exists():
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached step 14"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    (run,) = run_dirs(tmp_path)
    killed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert killed["global_step"] == 12 and killed["epoch"] == 1  # mid-epoch: 2 of epoch 1's 10 steps done
    assert not (run / "results.json").exists()
    original_config = (run / "config.yaml").read_bytes()

    with working_directory(tmp_path):  # the documented resume command
        main(["fit", "--config=config.yaml", "--ckpt_path=last"])

    assert run_dirs(tmp_path) == [run], "the resumed run must continue in its own directory"
    assert (run / "config.yaml").read_bytes() == original_config and (run / "config.resume-1.yaml").exists()
    expected, resumed = state_dict(uninterrupted), state_dict(run)
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed[name]), name
    assert reproducible(read_results(run)) == reproducible(read_results(uninterrupted))
    # the epoch the kill cut short logs the loss and accuracy of all its batches, before and after the resume
    assert (run / "metrics.csv").read_text() == (uninterrupted / "metrics.csv").read_text()

    # resuming a finished run again would replace its results.json: refused before any training
    with working_directory(tmp_path), pytest.raises(SystemExit) as refused:
        main(["fit", "--config=config.yaml", "--ckpt_path=last", "--trainer.max_epochs=3"])
    assert refused.value.code == 2
    assert run_dirs(tmp_path) == [run] and not (run / "config.resume-2.yaml").exists()


@pytest.mark.slow
def test_same_config_and_seed_give_identical_results(uninterrupted, tmp_path):
    again = fit_in(tmp_path)
    # nothing in results.json depends on the run's path or time, only the cost measurements on the machine
    assert reproducible(read_results(again)) == reproducible(read_results(uninterrupted))
    assert read_results(again)["cost"]["images_per_s"] > 0
    results = json.loads((again / "results.json").read_text())
    assert results["seed"] == 5 and results["checkpoint"] == "checkpoints/last.ckpt"  # the weights tested after fit


@pytest.mark.slow
def test_a_second_test_keeps_the_earlier_results(uninterrupted, tmp_path, capsys):
    shutil.copytree(uninterrupted.parent.parent, tmp_path, dirs_exist_ok=True)  # a copy: the fixture stays as it was
    (run,) = run_dirs(tmp_path)
    before = {name: (run / name).read_bytes() for name in ("results.json", "results.csv")}
    test = ["test", f"--config={run / 'config.yaml'}", "--ckpt_path=last"]  # last: the newest run's last.ckpt
    with working_directory(tmp_path):
        with pytest.raises(SystemExit) as refused:
            main(test)
        assert refused.value.code == 2
        assert "results.json already exists; nothing was changed" in capsys.readouterr().err
        assert {name: (run / name).read_bytes() for name in before} == before

        config = (run / "config.yaml").read_bytes()
        main([*test, "--overwrite=true"])
        printed = capsys.readouterr().out
        assert "BatchEnsemble (M=2) results ->" in printed and "test/digits/acc" not in printed  # one table: ours
        assert (run / "results.prev-1.json").read_bytes() == before["results.json"]
        # the test continued in the run's directory: no new version_N, its options beside the run's own
        assert run_dirs(tmp_path) == [run] and (run / "config.yaml").read_bytes() == config
        assert (run / "config.test-1.yaml").exists()
        replaced = json.loads((run / "results.json").read_text())
        assert replaced["checkpoint"] == "checkpoints/last.ckpt"  # relative: in its own run
        assert replaced["sets"] == json.loads(before["results.json"])["sets"]  # BatchEnsemble evaluates deterministically

        main([*test, "--overwrite=true"])
        assert (run / "results.prev-1.json").read_bytes() == before["results.json"]
        assert (run / "results.prev-2.json").read_text() == json.dumps(replaced, indent=2)
        assert (run / "config.test-2.yaml").exists() and run_dirs(tmp_path) == [run]


@pytest.mark.slow
def test_a_run_continues_in_its_own_directory_from_any_working_directory(uninterrupted, tmp_path, capsys):
    """The default root is ./lightning_logs of wherever the command runs; a checkpoint given by path from
    elsewhere still means its own run: refused there (results.json exists), tested there, nothing new here."""
    shutil.copytree(uninterrupted.parent.parent, tmp_path / "a", dirs_exist_ok=True)
    (run,) = run_dirs(tmp_path / "a")
    elsewhere = tmp_path / "b"
    elsewhere.mkdir()
    before = (run / "results.json").read_bytes()
    with working_directory(elsewhere):
        with pytest.raises(SystemExit) as refused:
            main(["fit", f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "--trainer.max_epochs=3"])
        assert refused.value.code == 2 and "results.json already exists" in capsys.readouterr().err
        main(["test", f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "--overwrite=true"])
    assert not (elsewhere / "lightning_logs").exists() and list(elsewhere.iterdir()) == []
    assert (run / "config.test-1.yaml").exists() and (run / "results.prev-1.json").read_bytes() == before
    assert run_dirs(tmp_path / "a") == [run]


def test_ctrl_c_during_fit_exits_130_and_says_how_to_continue(tmp_path, capsys, sigint_enabled):
    from tests.run_helpers import sigint_once

    fit = ["fit", "--model=SingleModel", "--data=DigitsDataModule", "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
           "--trainer.enable_model_summary=false", "--checkpoint.every_n_train_steps=1", sigint_once("fit", tmp_path / "sent", step=3)]
    with working_directory(tmp_path):
        with pytest.raises(SystemExit) as exit_info:
            main(fit)
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "ensemble-lab: interrupted." in err and "--ckpt_path last" in err
    (run,) = run_dirs(tmp_path)
    assert (run / "checkpoints" / "last.ckpt").exists() and not (run / "results.json").exists()
    with working_directory(tmp_path):
        main([*fit, "--ckpt_path=last"])  # the flag file exists: no second signal
    assert run_dirs(tmp_path) == [run] and (run / "results.json").exists()


def test_sigterm_during_fit_exits_143_not_0(tmp_path, capsys):
    """Lightning stops at the next step on SIGTERM and ends with SystemExit() (status 0): a script or a study
    would take the stopped run for a finished one."""
    from tests.run_helpers import sigint_once

    fit = ["fit", "--model=SingleModel", "--data=DigitsDataModule", "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
           "--trainer.enable_model_summary=false", "--checkpoint.every_n_train_steps=1",
           sigint_once("fit", tmp_path / "sent", step=3, signal_name="SIGTERM")]  # fmt: skip
    with working_directory(tmp_path):
        with pytest.raises(SystemExit) as exit_info:
            main(fit)
    assert exit_info.value.code == 143
    assert "ensemble-lab: terminated (SIGTERM)." in capsys.readouterr().err
    (run,) = run_dirs(tmp_path)
    assert (run / "checkpoints" / "last.ckpt").exists() and not (run / "results.json").exists()
    with working_directory(tmp_path):
        main([*fit, "--ckpt_path=last"])  # the flag file exists: no second signal
    assert run_dirs(tmp_path) == [run] and (run / "results.json").exists()
