"""The real CLI end to end on digits: fit, then test, for every method."""

import json
import re

import numpy as np
import pytest
import torch
import yaml

from ensemble_lab.metrics.classification import predictive_metrics
from ensemble_lab.metrics.ood import ood_metrics
from tests.conftest import REPO, TINY_TRAINER, read_results, run_dirs

SET_KEYS = {"role", "acc", "nll", "brier", "ece", "entropy", "expected_entropy", "mi", "disagreement", "member_acc"}
OOD_KEYS = {f"{m}_{s}" for m in ("auroc", "aupr", "fpr95") for s in ("msp", "entropy", "mi")}
ROLES = {"digits": "id", "digits_shifted": "shift", "photo_patches": "ood"}


def check_results(results: dict, method: str, members: int) -> None:
    assert results["method"] == method and results["num_members"] == members
    assert results["seed"] == 7 and results["datamodule"] == "DigitsDataModule"
    assert {name: s["role"] for name, s in results["sets"].items()} == ROLES
    for name, metrics in results["sets"].items():
        assert SET_KEYS <= metrics.keys(), name
        assert (OOD_KEYS <= metrics.keys()) == (metrics["role"] == "ood"), name
        for key in ("acc", "ece", "disagreement"):
            assert 0.0 <= metrics[key] <= 1.0, (name, key)
        assert metrics["nll"] > 0 and 0 <= metrics["brier"] <= 2
        assert metrics["mi"] >= 0 and metrics["entropy"] <= np.log(10) + 1e-6
        assert len(metrics["member_acc"]) == members
        if members == 1:
            assert metrics["mi"] == pytest.approx(0, abs=1e-6) and metrics["disagreement"] == 0
    for key in OOD_KEYS:
        value = results["sets"]["photo_patches"][key]
        if members == 1 and key.endswith("_mi"):  # one member has no mutual information to rank by
            assert value is None, key
        else:
            assert 0.0 <= value <= 1.0, key


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,members",
    [("SingleModel", 1), ("BatchEnsemble", 4), ("DeepEnsemble", 3), ("MCDropout", 3)],
)
def test_fit_then_test_end_to_end(cli, tmp_path, method, members):
    member_args = [] if method == "SingleModel" else [f"--model.num_members={members}"]
    cli("fit", f"--model={method}", "--data=DigitsDataModule", "--seed_everything=7", *member_args, *TINY_TRAINER)
    (fit_run,) = run_dirs(tmp_path)
    check_results(read_results(fit_run), method, members)
    assert (fit_run / "config.yaml").exists() and (fit_run / "results.csv").exists()
    assert (fit_run / "checkpoints" / "last.ckpt").exists()
    assert list(fit_run.glob("events.out.tfevents.*")), "TensorBoard logs missing"

    # test writes into the checkpoint's run: refuses to replace results.json without --overwrite
    ckpt = str(fit_run / "checkpoints" / "last.ckpt")
    test_args = ["test", "--config", str(fit_run / "config.yaml"), f"--ckpt_path={ckpt}", "--save_predictions=true"]
    with pytest.raises(SystemExit) as refused:
        cli(*test_args)
    assert refused.value.code == 2
    before = (fit_run / "results.json").read_text()
    cli(*test_args, "--overwrite=true")
    results = read_results(fit_run)
    check_results(results, method, members)
    # the same weights give the same numbers after fit and in a later test (MC Dropout's masks too: seeded)
    assert json.loads(before)["sets"] == results["sets"]

    # saved predictions reproduce every reported number
    for name, role in ROLES.items():
        saved = np.load(fit_run / "predictions" / f"{name}.npz")
        probs, targets = saved["member_probs"], saved["targets"]
        assert probs.dtype == np.float32 and targets.dtype == np.int64
        assert probs.shape == (members, len(targets), 10)
        np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)
        recomputed = predictive_metrics(torch.from_numpy(probs), torch.from_numpy(targets))
        for key in ("acc", "nll", "ece", "mi", "disagreement"):
            assert recomputed[key] == pytest.approx(results["sets"][name][key], abs=1e-6), (name, key)
    id_probs = torch.from_numpy(np.load(fit_run / "predictions" / "digits.npz")["member_probs"])
    ood_probs = torch.from_numpy(np.load(fit_run / "predictions" / "photo_patches.npz")["member_probs"])
    recomputed = ood_metrics(id_probs, ood_probs)
    assert recomputed["auroc_mi"] == pytest.approx(results["sets"]["photo_patches"]["auroc_mi"], abs=1e-6)


def test_version_and_help(capsys):
    from ensemble_lab.cli import main

    main(["--version"])
    assert capsys.readouterr().out.startswith("ensemble-lab 0.")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--test_after_fit", "--save_predictions", "--overwrite", "--checkpoint.every_n_train_steps"):
        assert option in help_text


def test_model_help_comes_from_docstrings(cli, capsys):
    from ensemble_lab.methods import BatchEnsemble, EnsembleModule

    with pytest.raises(SystemExit) as exit_info:
        cli("fit", "--model=BatchEnsemble", "--help")
    assert exit_info.value.code == 0 and "--model.help [CLASS_PATH_OR_NAME]" in capsys.readouterr().out
    # The subclass help is shown with --model.help, its lines taken from the docstrings' Args
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", "--model.help=BatchEnsemble")
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for cls, arg in ((BatchEnsemble, "fast_weight_init"), (EnsembleModule, "num_members")):
        doc = " ".join(cls.__init__.__doc__.split())
        first_words = doc.split(f"{arg}: ", 1)[1].split(".")[0]  # the docstring's own words for the option
        assert f"--model.{arg}" in text and first_words in text, arg


def test_print_config_lists_linked_and_default_options(cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--print_config")
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    quickstart = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    assert printed["model"]["class_path"] == "ensemble_lab.methods.BatchEnsemble"
    assert printed["model"]["init_args"]["num_members"] == quickstart["model"]["init_args"]["num_members"]
    # linked from the datamodule at instantiation, so not printed as a value; defaults are filled in
    assert printed["model"]["init_args"]["fast_weight_lr_scale"] == 0.5 and printed["data"]["class_path"].endswith("DigitsDataModule")


def test_test_without_trained_weights_is_refused(cli, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("test", "--model=BatchEnsemble", "--data=DigitsDataModule", *TINY_TRAINER)
    assert exit_info.value.code == 2
    assert "test needs trained weights: pass --ckpt_path <run>/checkpoints/last.ckpt" in capsys.readouterr().err
    assert not list(tmp_path.rglob("results.json"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model=NoSuchMethod", "--data=DigitsDataModule"], "NoSuchMethod"),
        (["--model=BatchEnsemble", "--data=NoSuchData"], "NoSuchData"),
        (["--model=BatchEnsemble", "--model.num_members=0", "--data=DigitsDataModule"], "num_members must be an integer >= 1"),
        (["--model=MCDropout", "--model.dropout=1.5", "--data=DigitsDataModule"], r"dropout must be in \[0, 1\)"),
        (["--model=SingleModel", "--data=DigitsDataModule", "--checkpoint.every_n_train_steps=-3"], "every_n_train_steps=-3"),
        (["--model=SingleModel", "--data=DigitsDataModule", "--model.optimizer.lr=-1"], "--model.optimizer: Invalid learning rate: -1"),
        (["--model=SingleModel", "--data=DigitsDataModule", "--data.shift_noise=-1"], "data.shift_noise is a standard deviation"),
        # optimizers are model options only: a top-level one would bypass BatchEnsemble's parameter groups
        (["--model=BatchEnsemble", "--data=DigitsDataModule", "--optimizer=SGD"], "--optimizer is not an option: the optimizer belongs to the model"),
        (["--model=BatchEnsemble", "--data=DigitsDataModule", "--model.lr_scheduler=OneCycleLR",
          "--model.lr_scheduler.max_lr=0.1", "--model.lr_scheduler.total_steps=10"], "OneCycleLR sets the same learning rate"),
    ],
)
def test_bad_input_exits_with_a_clear_message(cli, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", *args, *TINY_TRAINER)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert re.search(message, err), err[-2000:]
    assert "Traceback" not in err


@pytest.mark.parametrize("method", ["BatchEnsemble", "DeepEnsemble", "LowRankEnsemble", "Masksembles", "MCDropout", "MIMO",
                                    "PackedEnsemble", "SingleModel"])  # fmt: skip
def test_every_method_option_has_help_text(cli, capsys, method):
    """--model.help <Method> shows each of the method's own options with words, not only its type and default
    (a line at the Args indent after the last argument once cut PackedEnsemble's and MIMO's help)."""
    import inspect

    from ensemble_lab import methods

    own = [p for p in inspect.signature(getattr(methods, method).__init__).parameters if p not in ("self", "kwargs")]
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", f"--model.help={method}")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in own:
        # the option's entry in the help list (not the usage line): its metavar, then the help up to the next option
        (entry,) = re.findall(rf"^  --model\.{option} \S+(.*?)(?=^  -|\Z)", text, flags=re.M | re.S)
        words = entry.split("(type:", 1)[0].strip()
        assert words, f"--model.{option} of {method} has no help text: {entry!r}"


@pytest.mark.parametrize("subcommand, says", [("fit", "a checkpoint to resume from"), ("test", "the checkpoint to evaluate")])
def test_ckpt_path_help_says_what_ensemble_lab_does_with_it(cli, capsys, subcommand, says):
    """Lightning's text ("best" / "last" of the previous trainer.fit, None: the current weights) is not what happens here."""
    with pytest.raises(SystemExit) as exit_info:
        cli(subcommand, "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0 and says in text and "previous trainer.fit" not in text
