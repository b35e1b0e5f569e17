"""Datamodule options outside their range fail at once with a one-line ConfigError naming ``--data.<option>``.

A range that needs no file (every numeric option, and val_size where the training split's size is
known without reading anything, as for the bundled digits) is checked in ``__init__``, before the
trainer or the logger exist; val_size against a training set read from disk is checked as soon as
its size is known (MNIST: from the idx header in ``prepare_data``; CIFAR-10: in ``setup``).
"""

from pathlib import Path

import pytest

from ensemble_lab.data import CIFAR10DataModule, DigitsDataModule, MNISTDataModule
from ensemble_lab.errors import ConfigError
from tests.data import paper_fixtures as fx

DATAMODULES = {
    "digits": lambda root, **kw: DigitsDataModule(**kw),
    "mnist": lambda root, **kw: MNISTDataModule(data_dir=str(root), **kw),
    "cifar10": lambda root, **kw: CIFAR10DataModule(data_dir=str(root), **kw),
}

BAD_OPTIONS = [  # (option, bad value, what the message must say about the allowed range)
    ("num_workers", -1, ">= 0"),
    ("batch_size", 0, ">= 1"),
    ("batch_size", -8, ">= 1"),
    ("eval_batch_size", 0, ">= 1"),
    ("eval_batch_size", -1, ">= 1"),
    ("val_size", 0, ">= 1"),
    ("val_size", -5, ">= 1"),
]


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("datamodule", list(DATAMODULES))
@pytest.mark.parametrize("option,value,allowed", BAD_OPTIONS)
def test_out_of_range_option_fails_in_init_naming_it(tmp_path, datamodule, option, value, allowed):
    with pytest.raises(ConfigError) as error:
        DATAMODULES[datamodule](tmp_path / "no files needed", **{option: value})
    message = one_line(error)
    assert f"--data.{option}" in message and allowed in message and str(value) in message, message


@pytest.mark.parametrize("datamodule", list(DATAMODULES))
def test_in_range_options_are_accepted(tmp_path, datamodule):
    dm = DATAMODULES[datamodule](tmp_path, num_workers=0, batch_size=1, eval_batch_size=1, val_size=1)
    assert (dm.num_workers, dm.batch_size, dm.eval_batch_size, dm.val_size) == (0, 1, 1, 1)
    assert DATAMODULES[datamodule](tmp_path, eval_batch_size=None, batch_size=3).eval_batch_size == 6


def test_digits_shift_noise_names_the_option():
    with pytest.raises(ConfigError) as error:
        DigitsDataModule(shift_noise=-0.1)
    assert "--data.shift_noise" in one_line(error) and ">= 0" in str(error.value)


# --------------------------------------------------------------------------- val_size vs the training split
def test_digits_val_size_larger_than_the_training_split_fails_in_init():
    assert DigitsDataModule.train_size == 1438
    with pytest.raises(ConfigError) as error:
        DigitsDataModule(val_size=5000)  # no setup, no trainer: __init__ alone refuses it
    message = one_line(error)
    assert "--data.val_size" in message and "between 1 and 1437" in message and "1,438" in message and "5000" in message
    with pytest.raises(ConfigError, match="between 1 and 1437"):
        DigitsDataModule(val_size=1438)  # nothing would be left to train on
    DigitsDataModule(val_size=1437)


def test_digits_train_size_is_the_real_training_split():
    dm = DigitsDataModule(val_size=100)
    assert len(dm.load_train().labels) == DigitsDataModule.train_size
    dm.setup("fit")
    assert len(dm.train_set.labels) + len(dm.val_set.labels) == DigitsDataModule.train_size


def test_mnist_val_size_is_checked_in_prepare_data(tmp_path):
    fx.write_mnist_benchmark(tmp_path)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=fx.MNIST_TRAIN)
    with pytest.raises(ConfigError) as error:
        dm.prepare_data()  # before any trainer hook that starts a logger
    message = one_line(error)
    assert "--data.val_size" in message and f"between 1 and {fx.MNIST_TRAIN - 1}" in message, message
    MNISTDataModule(data_dir=str(tmp_path), val_size=fx.MNIST_TRAIN - 1).prepare_data()


def test_cifar10_val_size_is_checked_when_the_training_set_is_read(tmp_path):
    fx.write_cifar_benchmark(tmp_path)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_size=fx.CIFAR_TRAIN + 1)
    with pytest.raises(ConfigError) as error:
        dm.setup("fit")
    message = one_line(error)
    assert "--data.val_size" in message and f"between 1 and {fx.CIFAR_TRAIN - 1}" in message, message


# --------------------------------------------------------------------------- through the real CLI
@pytest.mark.parametrize(
    "option,expected",
    [
        ("--data.num_workers=-1", "--data.num_workers must be an integer >= 0, got -1"),
        ("--data.val_size=5000", "--data.val_size must be between 1 and 1437"),
    ],
)
def test_cli_refuses_before_any_run_directory(cli, tmp_path: Path, capsys, option, expected):
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", "--model=SingleModel", "--data=DigitsDataModule", option, "--trainer.max_epochs=1",
            "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ensemble-lab: error: ")]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "lightning_logs").exists()  # refused before the logger made a run directory
