"""validate, predict and `python -m ensemble_lab`: the other LightningCLI subcommands work too."""

import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY_TRAINER, run_dirs


@pytest.mark.slow
def test_validate_and_predict_from_a_checkpoint(cli, tmp_path, capsys):
    cli("fit", "--model=BatchEnsemble", "--model.num_members=2", "--data=DigitsDataModule", "--test_after_fit=false", *TINY_TRAINER)
    (run,) = run_dirs(tmp_path)
    assert not (run / "results.json").exists(), "--test_after_fit false must skip the evaluation"
    ckpt = str(run / "checkpoints" / "last.ckpt")
    config = str(run / "config.yaml")
    cli("validate", "--config", config, f"--ckpt_path={ckpt}")
    assert "val/acc" in capsys.readouterr().out
    cli("predict", "--config", config, f"--ckpt_path={ckpt}")
    # both logged into the checkpoint's own run, beside its config.yaml: no new version_N
    assert run_dirs(tmp_path) == [run]
    assert (run / "config.validate-1.yaml").exists() and (run / "config.predict-1.yaml").exists()


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "ensemble_lab", "--version"], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.startswith("ensemble-lab ")


def test_lightning_product_tips_are_dropped_and_other_info_kept(caplog):
    import logging

    from lightning.pytorch.utilities import rank_zero_info

    from ensemble_lab.config.lightning_cli import quiet_known_warnings

    quiet_known_warnings()
    quiet_known_warnings()  # idempotent: one filter, however often main() runs
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing something")
        rank_zero_info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    import lightning_utilities.core.rank_zero

    assert len(lightning_utilities.core.rank_zero.log.filters) == 1


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["studdy"], "unknown command 'studdy' (did you mean 'study'?); choose from fit, validate, test, predict, report, study"),
        (["fit", "--model.help", "BatchEnsembel"], "unknown class 'BatchEnsembel' for --model.help (did you mean 'BatchEnsemble'?)"),
        (["fit", "--data.help", "Digits"], "unknown class 'Digits' for --data.help; choose from DigitsDataModule, MNISTDataModule, TabularDataModule, CIFAR10DataModule, CIFAR100DataModule\n"),
    ],
)
def test_mistyped_command_or_help_class(capsys, argv, expected):
    from ensemble_lab.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"ensemble-lab: error: {expected}" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "content,expected",
    [
        ("", "must be a mapping of options (model:, data:, trainer:, ...); it holds nothing (the file is empty)"),
        ("- a\n- b\n", "must be a mapping of options (model:, data:, trainer:, ...); it holds a list"),
        ("model: [unclosed\n", "is not valid YAML at line 2, column 1"),
    ],
)
def test_config_file_that_is_not_a_mapping(tmp_path, capsys, content, expected):
    from ensemble_lab.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--config={config}"])
    assert exit_info.value.code == 2
    assert f"ensemble-lab: error: config file {config} {expected}" in capsys.readouterr().err


def test_a_directory_that_cannot_be_written_is_one_line(cli, tmp_path, capsys, monkeypatch):
    import errno

    from ensemble_lab.config.failures import unwritable
    from ensemble_lab.runs import results

    wrapped = RuntimeError("while saving")
    wrapped.__cause__ = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "lightning_logs"))
    assert unwritable(wrapped).startswith(f"cannot write {tmp_path / 'lightning_logs'}: Read-only file system.")
    assert unwritable(OSError(errno.ENOENT, "No such file or directory")) is None  # not about writing: a bug

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(results, "atomic_write_bytes", disk_full)  # the results files, after a real fit
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", "--model=SingleModel", "--data=DigitsDataModule", "--figures=false", *TINY_TRAINER)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "ensemble-lab: error: cannot write " in err and "results.csv: No space left on device." in err


def test_configs_saved_with_top_level_optimizer_null_still_load(tmp_path, capsys):
    from ensemble_lab.cli import main

    config = tmp_path / "config.yaml"  # as runs of earlier versions saved it
    config.write_text("optimizer: null\nlr_scheduler: null\nmodel:\n  class_path: SingleModel\ndata:\n  class_path: DigitsDataModule\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--config={config}", "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path: ensemble_lab.methods.SingleModel" in capsys.readouterr().out
