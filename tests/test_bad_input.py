"""Every user mistake ends in one line, `ensemble-lab: error: ...`, exit status 2 and no traceback."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble_lab.cli import main
from ensemble_lab.data import download
from ensemble_lab.errors import ConfigError
from tests.conftest import TINY_TRAINER, read_results, run_dirs
from tests.data import paper_fixtures as fx
from tests.run_helpers import working_directory

FIT = ["fit", "--model=BatchEnsemble", "--data=DigitsDataModule"]
QUICK = [*TINY_TRAINER, "--figures=false"]


def error_line(capsys, *args: str) -> str:
    """Run the CLI, expect exit status 2 and return its single error line."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("ensemble-lab: error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


# --------------------------------------------------------------------------- options and config keys
@pytest.mark.parametrize(
    "args,yaml_text,expected",
    [
        (["--model.num_memberz=3"], None, ["unknown option 'model.num_memberz'", "did you mean 'num_members'", "BatchEnsemble accepts: "]),
        ([], "model:\n  class_path: BatchEnsemble\n  init_args:\n    num_memberz: 3\n", ["unknown option 'model.num_memberz'", "did you mean 'num_members'"]),
        ([], "trainer:\n  max_epochz: 3\n", ["unknown option 'trainer.max_epochz'", "did you mean 'trainer.max_epochs'"]),
        (["--trainer.max_epochz=3"], None, ["unrecognized arguments: --trainer.max_epochz=3", "did you mean --trainer.max_epochs"]),
        (["--model.optimizer=SGD", "--model.optimizer.lrr=0.1"], None, ["unknown option 'model.optimizer.lrr'", "did you mean 'lr'"]),
        (["--model.num_members=abc"], None, ["invalid value 'abc' for --model.num_members: expected int"]),
        (["--trainer.max_epochs=abc"], None, ["invalid value 'abc' for --trainer.max_epochs: expected int or null"]),
        (["--model=NoSuchMethod"], None, ["unknown class 'NoSuchMethod' for --model", "choose from ", "DeepEnsemble"]),
        (["--config=missing.yaml"], None, ["config file not found: ", "/missing.yaml"]),
    ],
)
def test_unknown_or_malformed_options_name_the_key(cli, tmp_path, capsys, args, yaml_text, expected):
    if yaml_text is not None:
        (tmp_path / "bad.yaml").write_text(yaml_text)
        args = ["--config=bad.yaml"]
    line = error_line(capsys, *FIT, *args, *QUICK)
    for fragment in expected:
        assert fragment in line, line


@pytest.mark.parametrize(
    "args, expected",
    [
        (["fit", "--model=MCDropout", "--print_config"], "no --data given: name a datamodule (--data DigitsDataModule"),
        (["fit", "--data=DigitsDataModule", "--print_config"], "no --model given: name a method"),
    ],
)
def test_a_missing_model_or_datamodule_says_how_to_give_one(capsys, args, expected):
    assert expected in error_line(capsys, *args)


def test_the_readmes_print_config_command_works(capsys):
    """The README's "Using it" line, as written there (it once lacked --data)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (line,) = [ln for ln in readme.splitlines() if ln.startswith("ensemble-lab fit") and "--print_config" in ln]
    argv = line.split("#")[0].split()[1:]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0 and "class_path: ensemble_lab.methods.MCDropout" in capsys.readouterr().out


# --------------------------------------------------------------------------- data files and data options
@pytest.fixture
def cifar(tmp_path, monkeypatch):
    """Tiny CIFAR-10 / CIFAR-10-C / SVHN files and the CLI options that use them."""
    monkeypatch.chdir(tmp_path)
    root = fx.write_cifar_benchmark(tmp_path / "data")
    return root, ["--model=SingleModel", "--data=CIFAR10DataModule", *fx.cifar_args(root), *QUICK]


def test_missing_data_directory(cifar, capsys):
    _, args = cifar
    line = error_line(capsys, "fit", *args, "--data.data_dir=nowhere")
    assert "CIFAR-10 file 'data_batch_1' not found: expected it at nowhere/cifar-10-batches-py/data_batch_1" in line
    assert "--data.download true" in line


def test_truncated_data_file(cifar, capsys):
    root, args = cifar
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:1000])
    line = error_line(capsys, "fit", *args)
    assert f"'data_batch_1' at {batch} is damaged (cannot unpickle" in line and "Delete it and get it again" in line


def test_damaged_file_fails_its_checksum(cifar, capsys, monkeypatch):
    root, args = cifar
    monkeypatch.setattr(download, "_download_archive", lambda *a, **k: None)  # the network, stood in for
    line = error_line(capsys, "fit", *args, "--data.download=true")  # fixture batches are not the real ones
    assert f"damaged file {root / 'cifar-10-batches-py' / 'data_batch_1'}: MD5 " in line and "download again" in line


def test_npy_of_the_wrong_shape(cifar, capsys):
    root, args = cifar
    np.save(root / "CIFAR-10-C" / "fog.npy", np.zeros((10, 32, 32), np.uint8))
    line = error_line(capsys, "fit", *args)  # found by prepare_data, before any training
    assert "'fog.npy'" in line and "is damaged (array shaped (10, 32, 32), expected (10, 32, 32, 3))" in line


@pytest.mark.parametrize(
    "option,expected",
    [
        ("--data.corruptions=[fogg]", "data.corruptions: unknown CIFAR-10-C corruption 'fogg'; choose from brightness, contrast"),
        ("--data.severities=[6]", "data.severities: unknown severity (1..5) 6; choose from 1, 2, 3, 4, 5"),
    ],
)
def test_unknown_corruption_or_severity(cifar, capsys, option, expected):
    _, args = cifar
    assert expected in error_line(capsys, "fit", *args, option)


# --------------------------------------------------------------------------- checkpoints of another model
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A BatchEnsemble (M = 4) run on digits: its directory."""
    root = tmp_path_factory.mktemp("fitted")
    with working_directory(root):
        main([*FIT, "--model.num_members=4", "--test_after_fit=false", *QUICK])
    return run_dirs(root)[0]


@pytest.mark.parametrize(
    "args,this_run",
    [
        (["--model=DeepEnsemble", "--model.num_members=3"], "DeepEnsemble with num_members=3, num_classes=10"),
        (["--model.num_members=3"], "BatchEnsemble with num_members=3, num_classes=10"),
        (["--data=tests.run_helpers.FiveClassDigits"], "BatchEnsemble with num_members=4, num_classes=5"),
    ],
)
def test_checkpoint_of_another_model_names_both_sides(fitted, capsys, args, this_run):
    ckpt = fitted / "checkpoints" / "last.ckpt"
    with working_directory(fitted.parent.parent):
        line = error_line(capsys, "test", f"--config={fitted / 'config.yaml'}", f"--ckpt_path={ckpt}", *args)
    assert f"checkpoint {ckpt} was trained as BatchEnsemble with num_members=4, num_classes=10; this run builds {this_run}" in line
    assert f"--config {fitted / 'config.yaml'}" in line
    assert not (fitted / "results.json").exists()


def test_other_architecture_is_named_and_refused_before_anything_is_written(fitted, capsys):
    ckpt = fitted / "checkpoints" / "last.ckpt"
    before = sorted(p.name for p in fitted.iterdir())
    with working_directory(fitted.parent.parent):
        with pytest.raises(SystemExit):
            main(["test", f"--config={fitted / 'config.yaml'}", f"--ckpt_path={ckpt}", "--model.backbone.hidden_sizes=[32,16]"])
    err = capsys.readouterr().err
    assert ("was trained as BatchEnsemble with num_members=4, num_classes=10, backbone.hidden_sizes=[64, 32, 16]; "
            "this run builds BatchEnsemble with num_members=4, num_classes=10, backbone.hidden_sizes=[32, 16]") in err
    assert "Restoring states" not in err  # refused before Lightning loads anything
    assert sorted(p.name for p in fitted.iterdir()) == before and run_dirs(fitted.parent.parent) == [fitted]


def damaged_checkpoint(damage: str, good: Path, where: Path) -> Path:
    """A path under ``where`` that is no usable checkpoint in the way ``damage`` names (``good``: a real one)."""
    bad = where / f"{damage}.ckpt"
    if damage == "directory":  # a run directory given in place of its checkpoint
        return good.parent.parent
    if damage == "missing":
        return bad
    if damage == "plain_dict":
        torch.save({"weights": torch.zeros(2)}, bad)
    else:
        data = good.read_bytes()
        bad.write_bytes({"text": b"not a checkpoint\n", "empty": b"", "truncated": data[: len(data) // 2]}[damage])
    return bad


#: what the one line says for each damage (the truncated file keeps half of its bytes)
SAYS = {
    "missing": "does not exist; give a .ckpt file that ensemble-lab fit wrote",
    "directory": "is a directory; give a checkpoint file, e.g. {good}",
    "empty": "is empty (0 bytes)",
    "text": "is not a checkpoint (not a file torch.save wrote)",
    "truncated": "is truncated (only its first {half:,} bytes are there)",
    "plain_dict": "holds no 'state_dict', so it is not a Lightning checkpoint",
}


@pytest.mark.parametrize("damage", list(SAYS))
def test_load_checkpoint_names_the_file_and_what_is_wrong_with_it(fitted, tmp_path, damage):
    from ensemble_lab.errors import CheckpointFileError
    from ensemble_lab.runs.checkpoint_files import load_checkpoint

    good = fitted / "checkpoints" / "last.ckpt"
    bad = damaged_checkpoint(damage, good, tmp_path)
    with pytest.raises(CheckpointFileError) as error:
        load_checkpoint(bad, "member checkpoint")
    message = str(error.value)
    assert message.startswith(f"member checkpoint {bad} ") and "\n" not in message
    assert SAYS[damage].format(good=good, half=good.stat().st_size // 2) in message
    assert "mmap" not in message and "Errno" not in message  # torch's words, not ours


def _reader_command(reader: str, fitted: Path, bad: Path) -> tuple[list[str], str]:
    """The command line that reads ``bad`` as a checkpoint in the way ``reader`` names, and how its error names it."""
    config = f"--config={fitted / 'config.yaml'}"
    return {
        "test": (["test", config, f"--ckpt_path={bad}"], "--ckpt_path"),
        "fit resume": (["fit", config, f"--ckpt_path={bad}"], "--ckpt_path"),
        "teacher": ([*FIT, *QUICK, f"--model.distillation.teacher={bad}"], "teacher checkpoint"),
        "members": (["test", "--model=DeepEnsemble", "--data=DigitsDataModule", *QUICK,
                     f"--model.member_checkpoints=[{bad},{fitted / 'checkpoints' / 'last.ckpt'}]"], "member checkpoint"),
        "connectivity": (["connectivity", "--config", str(fitted / "config.yaml"), "--ckpt_path", str(bad)], "--ckpt_path"),
    }[reader]


@pytest.mark.parametrize("damage", ["directory", "empty", "truncated"])
@pytest.mark.parametrize("reader", ["test", "fit resume", "teacher", "members", "connectivity"])
def test_every_reader_of_a_checkpoint_names_the_file_and_what_is_wrong_in_one_line(fitted, tmp_path, capsys, reader, damage):
    good = fitted / "checkpoints" / "last.ckpt"
    bad = damaged_checkpoint(damage, good, tmp_path)
    args, named = _reader_command(reader, fitted, bad)
    before = sorted(p.relative_to(fitted.parent) for p in fitted.parent.rglob("*"))
    with working_directory(fitted.parent.parent):
        line = error_line(capsys, *args)
    assert f"ensemble-lab: error: {named} {bad} {SAYS[damage].format(good=good, half=good.stat().st_size // 2)}" in line
    assert sorted(p.relative_to(fitted.parent) for p in fitted.parent.rglob("*")) == before  # nothing written


def test_mc_dropout_checkpoint_tests_with_any_number_of_samples(cli, tmp_path):
    # MC Dropout's num_members counts test-time samples, not weights: not a mismatch
    cli("fit", "--model=MCDropout", "--data=DigitsDataModule", "--model.num_members=2", "--test_after_fit=false", *QUICK)
    (run,) = run_dirs(tmp_path)
    cli("test", f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "--model.num_members=5")
    assert read_results(run)["num_members"] == 5


def test_missing_checkpoint_file(fitted, capsys):
    with working_directory(fitted.parent.parent):
        line = error_line(capsys, "test", f"--config={fitted / 'config.yaml'}", "--ckpt_path=nowhere.ckpt")
    assert "--ckpt_path nowhere.ckpt does not exist" in line


def test_ckpt_path_last_with_no_run_to_test(cli, tmp_path, capsys):
    line = error_line(capsys, "test", "--model=BatchEnsemble", "--data=DigitsDataModule", "--ckpt_path=last", *QUICK)
    assert f"--ckpt_path last: no run with a checkpoints/last.ckpt below {tmp_path / 'lightning_logs'}" in line


# --------------------------------------------------------------------------- NaN / inf loss
@pytest.mark.slow
def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(cli, tmp_path, capsys):
    # the loss flags are read only every 4 steps, so the checkpoint due at step 6 must be refused by the guard itself
    nan_at = "--trainer.callbacks=[{class_path: tests.run_helpers.NaNAtStep, init_args: {step: 5}}]"
    line = error_line(capsys, "fit", "--model=SingleModel", "--data=DigitsDataModule", *QUICK, "--trainer.limit_train_batches=12",
                      "--checkpoint.every_n_train_steps=2", "--nan_guard.check_every_n_steps=4", nan_at)
    (run,) = run_dirs(tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    assert f"training stopped: the training loss was NaN at epoch 0, batch 5 (global step 6); the last good checkpoint, {last}," in line
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert all(bool(t.isfinite().all()) for t in checkpoint["state_dict"].values())


def test_huge_learning_rate_stops_at_the_first_nan(cli, tmp_path, capsys):
    line = error_line(capsys, "fit", "--model=SingleModel", "--data=DigitsDataModule", *QUICK,
                      "--model.optimizer=SGD", "--model.optimizer.lr=1e30")
    assert "training stopped: the training loss was" in line and "at epoch 0, batch" in line
    assert "no checkpoint had been written yet" in line and "Lower the learning rate (--model.optimizer.lr)" in line


def test_nan_guard_reads_every_step_on_cpu_and_rarely_on_a_gpu():
    from ensemble_lab.runs.callbacks import NonFiniteLossGuard

    default = NonFiniteLossGuard()
    assert default.steps_between_checks(torch.device("cpu")) == 1
    assert default.steps_between_checks(torch.device("cuda", 0)) == NonFiniteLossGuard.ACCELERATOR_CHECK_EVERY > 1
    assert NonFiniteLossGuard(check_every_n_steps=7).steps_between_checks(torch.device("cpu")) == 7
    with pytest.raises(ConfigError, match="check_every_n_steps must be >= 1, got 0"):
        NonFiniteLossGuard(check_every_n_steps=0)


def test_a_root_under_a_file_is_one_line(tmp_path, capsys):
    """--trainer.default_root_dir below a file: ENOTDIR, once a traceback."""
    (tmp_path / "afile").write_text("")
    line = error_line(capsys, *FIT, *QUICK, f"--trainer.default_root_dir={tmp_path / 'afile' / 'x'}")
    assert "cannot write" in line and "Not a directory" in line and "afile" in line


@pytest.mark.parametrize("command,kind", [(["fit", "--data=DigitsDataModule"], "config"), (["study"], "study")])
def test_a_key_written_twice_is_one_line_naming_the_file_the_key_and_both_lines(tmp_path, capsys, command, kind):
    """YAML keeps the last of two equal keys: a second model: block would silently replace the first."""
    twice = tmp_path / "twice.yaml"
    twice.write_text("seeds: [1]\nmodel:\n  class_path: BatchEnsemble\nmodel:\n  class_path: SingleModel\n")
    with pytest.raises(SystemExit) as exit_info:
        main([*command, f"--config={twice}"] if kind == "config" else [*command, "--config", str(twice)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err, err  # PyYAML's own message adds the text and a caret
    # by hand: the second "model:" is on line 4 of the text above, the first on line 2
    assert err.startswith(f"ensemble-lab: error: {kind} file {twice}: ")
    assert "'model' is given twice in one mapping (line 4); the first is on line 2" in err
