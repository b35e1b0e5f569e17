"""The real CLI on tiny native-format copies of the paper's benchmarks, with the shipped configs.

Every method is fit from configs/cifar10/*.yaml and configs/mnist/*.yaml (shrunk by command-line
overrides: width 4, two steps, fp32 on the CPU), then tested from its checkpoint; a Deep Ensemble
is assembled from SingleModel checkpoints; and every YAML under configs/ parses.
"""

import math
import shutil

import numpy as np
import pytest
import torch
import yaml

from ensemble_lab.connectivity.command import load_run
from tests.conftest import REPO, TINY_TRAINER, read_results, run_dirs
from tests.data import paper_fixtures as fx
from tests.data.tabular_formats import COLUMNS, write_native

SMALL = [*TINY_TRAINER, "--trainer.limit_train_batches=2", "--trainer.num_sanity_val_steps=0", "--trainer.precision=32"]
NO_FIGURES = "--figures=false"  # matplotlib would double the time of every test run
CIFAR_ROLES = {"cifar10": "id", "cifar10c": "shift", "svhn": "ood"}
MNIST_ROLES = {"mnist": "id", "mnist_c": "shift", "rotated_mnist": "shift", "fashion_mnist": "ood"}
MEMBERS = {"single": 1, "batch_ensemble": 4, "deep_ensemble": 4, "mc_dropout": 4}
METHODS = {"single": "SingleModel", "batch_ensemble": "BatchEnsemble", "deep_ensemble": "DeepEnsemble", "mc_dropout": "MCDropout"}


def check_results(results: dict, config: str, datamodule: str, roles: dict[str, str], members: int | None = None) -> None:
    assert results["method"] == METHODS[config] and results["datamodule"] == datamodule
    assert results["num_members"] == (MEMBERS[config] if members is None else members)
    assert {name: s["role"] for name, s in results["sets"].items()} == roles
    for name, metrics in results["sets"].items():
        assert 0 <= metrics["acc"] <= 1 and math.isfinite(metrics["nll"]) and metrics["mi"] >= -1e-6, name
        assert len(metrics["member_acc"]) == results["num_members"]
    (ood,) = [name for name, role in roles.items() if role == "ood"]
    assert 0 <= results["sets"][ood]["auroc_msp"] <= 1


def fit_then_test(cli, tmp_path, config: str, data_args: list[str], *extra: str):
    """Fit from ``config`` (no test after fit), then ``test`` the run's last.ckpt with its saved config."""
    cli("fit", f"--config={config}", *data_args, *SMALL, "--test_after_fit=false", *extra)
    (run,) = run_dirs(tmp_path)
    assert not (run / "results.json").exists()
    ckpt = run / "checkpoints" / "last.ckpt"
    cli("test", f"--config={run / 'config.yaml'}", f"--ckpt_path={ckpt}", "--save_predictions=true", NO_FIGURES)
    return run, read_results(run)


@pytest.mark.slow
@pytest.mark.parametrize("config", list(METHODS))
def test_cifar10_fit_then_test(cli, tmp_path, config):
    data = fx.write_cifar_benchmark(tmp_path / "data")
    config_path = str(REPO / "configs" / "cifar10" / f"{config}.yaml")
    run, results = fit_then_test(cli, tmp_path, config_path, fx.cifar_args(data), "--model.backbone.width=4")
    check_results(results, config, "CIFAR10DataModule", CIFAR_ROLES)
    assert len(np.load(run / "predictions" / "cifar10c.npz")["targets"]) == 19 * fx.CIFAR10C_BLOCK


@pytest.mark.slow
def test_cifar100_fit_then_test(cli, tmp_path):
    """configs/cifar100 run the CIFAR-10 recipe on CIFAR-100: 100 classes from the datamodule, SVHN far and CIFAR-10 near."""
    data = fx.write_cifar100_benchmark(tmp_path / "data", ("fog", "snow"))
    run, results = fit_then_test(cli, tmp_path, str(REPO / "configs" / "cifar100" / "batch_ensemble.yaml"), fx.cifar_args(data),
                                 "--model.width=4", "--data.corruptions=[fog,snow]")  # fmt: skip
    assert results["datamodule"] == "CIFAR100DataModule" and results["num_members"] == 4
    assert {n: s["role"] for n, s in results["sets"].items()} == {"cifar100": "id", "cifar100c": "shift", "svhn": "ood", "cifar10": "ood"}
    assert (results["sets"]["svhn"]["ood_kind"], results["sets"]["cifar10"]["ood_kind"]) == ("far", "near")
    assert np.load(run / "predictions" / "cifar100.npz")["member_probs"].shape == (4, fx.CIFAR_TEST, 100)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["batch_ensemble", "deep_ensemble", "mc_dropout"])
def test_mnist_fit_then_test(cli, tmp_path, config):
    data = fx.write_mnist_benchmark(tmp_path / "data")
    _, results = fit_then_test(cli, tmp_path, str(REPO / "configs" / "mnist" / f"{config}.yaml"), fx.mnist_args(data))
    check_results(results, config, "MNISTDataModule", MNIST_ROLES)


@pytest.mark.slow
def test_mnist_single_model_then_assembled_deep_ensemble(cli, tmp_path):
    data = fx.write_mnist_benchmark(tmp_path / "data")
    single_run, results = fit_then_test(cli, tmp_path, str(REPO / "configs" / "mnist" / "single.yaml"), fx.mnist_args(data))
    check_results(results, "single", "MNISTDataModule", MNIST_ROLES)
    ckpt = single_run / "checkpoints" / "last.ckpt"
    copy = tmp_path / "copy.ckpt"  # the same weights under another name: accepted, with a warning
    shutil.copy(ckpt, copy)
    # the documented usage: no --ckpt_path; results go to a new run directory
    with pytest.warns(UserWarning, match="members 0 and 1 have identical weights"):
        cli("test", f"--config={REPO / 'configs' / 'mnist' / 'deep_ensemble.yaml'}", *fx.mnist_args(data), *SMALL,
            f"--model.member_checkpoints=[{ckpt},{copy}]", "--save_predictions=true", NO_FIGURES)
    ensemble_run = run_dirs(tmp_path)[-1]
    results = read_results(ensemble_run)
    check_results(results, "deep_ensemble", "MNISTDataModule", MNIST_ROLES, members=2)
    # what the ensemble is made of: its members' checkpoints and their runs' seeds, and the M it has
    seed = yaml.safe_load((single_run / "config.yaml").read_text())["seed_everything"]
    assert results["member_checkpoints"] == [str(ckpt), str(copy)] and results["member_seeds"] == [seed, None]
    assert results["num_members"] == 2 and results["checkpoint"] is None
    assert yaml.safe_load((ensemble_run / "config.yaml").read_text())["model"]["init_args"]["num_members"] == 2
    for name in MNIST_ROLES:
        single = np.load(single_run / "predictions" / f"{name}.npz")["member_probs"]  # (1, N, C)
        assembled = np.load(ensemble_run / "predictions" / f"{name}.npz")["member_probs"]  # (2, N, C)
        assert assembled.shape == (2, *single.shape[1:])
        np.testing.assert_allclose(assembled, np.repeat(single, 2, axis=0), atol=1e-6)


CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("configs/**/*.yaml"))


def uci_files(root, study: dict) -> None:
    """Tiny native files under ``root/data`` for the downloaded tables a study file names (``<table>.<method>``)."""
    for table in {name.split(".")[0] for name in study["methods"]}:
        write_native(root / "data", table, np.random.default_rng(0).uniform(1.0, 2.0, (60, COLUMNS[table])))


@pytest.mark.parametrize("config", CONFIGS)
def test_every_shipped_config_parses(cli, capsys, tmp_path, monkeypatch, config):
    """Run configs print their full resolved config; study files (a ``methods`` grid) list their runs (the UCI
    studies' on tiny files in the native formats: parsing builds the datamodule, which reads its table)."""
    text = (REPO / config).read_text()
    study = "methods" in (yaml.safe_load(text) or {})
    if config.startswith("configs/study/uci"):
        monkeypatch.chdir(tmp_path)
        uci_files(tmp_path, yaml.safe_load(text))
    command = ["study", "--dry_run"] if study else ["fit", "--print_config"]
    args = [command[0], f"--config={REPO / config}", command[1]]
    if config.startswith("configs/ablations/"):  # an overlay: parse it as its header's command puts it on a base
        (documented,) = [line for line in text.splitlines() if line.startswith("#   ensemble-lab fit --config")]
        configs = documented.split()[4::2]
        assert configs[-1] == config, documented
        args = ["fit", *(f"--config={REPO / c}" for c in configs), "--print_config"]
    try:
        cli(*args)
    except SystemExit as exit_info:  # --print_config exits 0 after printing
        assert exit_info.code == 0, capsys.readouterr().err[-2000:]
    out = capsys.readouterr().out
    assert ("--config" in out) if study else ("class_path" in out)


@pytest.mark.parametrize(
    "config,args,message",
    [
        ("cifar10/single.yaml", ["--data.data_dir=empty"], "CIFAR-10 file 'data_batch_1' not found"),
        ("cifar10/single.yaml", ["--data.severities=[5,7]"], "unknown severity (1..5) 7"),
        ("mnist/single.yaml", ["--data.corruptions=[fog,snow]"], "unknown MNIST-C corruption 'snow'"),
        ("mnist/deep_ensemble.yaml", ["--model.member_checkpoints=[missing.ckpt]"], "missing.ckpt does not exist"),
        ("mnist/deep_ensemble.yaml", ["--model.member_checkpoints=[a.ckpt,./a.ckpt]"], "names ./a.ckpt twice"),
    ],
)
def test_user_errors_are_one_line_before_any_training(cli, capsys, config, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", f"--config={REPO / 'configs' / config}", *args, *SMALL)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err[-2000:]
    if "data_dir" in args[0]:
        assert "--data.download true" in err


def _fast_weights(model) -> set[int]:
    """ids of every BatchEnsemble layer's r and s, found on the layers themselves (not by the optimizer's name rule)."""
    return {id(p) for m in model.modules() if isinstance(getattr(m, "r", None), torch.nn.Parameter) for p in (m.r, m.s)}


@pytest.mark.parametrize("config,decay,lr", [("batch_ensemble.yaml", 0.0, 0.025), ("batch_ensemble_peer.yaml", 5e-4, 0.05)])
def test_batch_ensemble_configs_decay_fast_weights_as_documented(config, decay, lr):
    model, _ = load_run(REPO / "configs" / "cifar10" / config)
    optimizer = model.configure_optimizers()["optimizer"]
    fast = _fast_weights(model)
    assert len(fast) == 2 * 21  # 20 convolutions and the final linear layer, each with r and s
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in fast:  # ours: no decay, half the rate (the original recipe); the peer's: like every weight
                assert (group["weight_decay"], group["lr"]) == pytest.approx((decay, lr))
            else:
                assert (group["weight_decay"], group["lr"]) == pytest.approx((5e-4, 0.05))
    assert sum(id(p) in fast for g in optimizer.param_groups for p in g["params"]) == len(fast)


@pytest.mark.parametrize("config,rho", [("mimo.yaml", 0.0), ("mimo_peer.yaml", 1.0)])
def test_mimo_configs_set_input_and_batch_repetition(config, rho):
    model, _ = load_run(REPO / "configs" / "cifar10" / config)
    assert (model.input_repetition, model.batch_repetition) == (rho, 1)
    model.network = torch.nn.Flatten()  # the rows' images are what is checked, not the ResNet: skip its cost
    torch.manual_seed(0)
    images = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 32, 32)  # image k is the constant k
    seen = model.training_batch(images, torch.arange(8)).rows  # (M, 8): the image each member saw in each row
    assert torch.equal(seen, seen[0].expand_as(seen)) == (rho == 1.0)  # ρ = 1: every member the same images
