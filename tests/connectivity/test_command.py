"""`ensemble-lab connectivity` end to end on tiny digits runs: the file, the figure, the messages."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.nn import functional as F

from ensemble_lab.cli import main
from ensemble_lab.connectivity.barriers import DOCUMENT_KEYS
from ensemble_lab.connectivity.command import load_run, run_connectivity, training_batches
from ensemble_lab.methods import DeepEnsemble, MCDropout
from tests.conftest import TINY_TRAINER


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny BatchEnsemble (M = 3) and DeepEnsemble (M = 2) digits run, fitted once for this module."""
    root = tmp_path_factory.mktemp("connectivity")
    made = {}
    for method, members in (("BatchEnsemble", 3), ("DeepEnsemble", 2)):
        main(["fit", f"--model={method}", f"--model.num_members={members}", "--model.backbone.hidden_sizes=[16]", "--data=DigitsDataModule",
              "--test_after_fit=false", f"--trainer.default_root_dir={root / method}", *TINY_TRAINER])  # fmt: skip
        made[method] = root / method / "lightning_logs" / "version_0"
    return made


def _connectivity(run: Path, *extra: str) -> None:
    main(["connectivity", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), *extra])


def _member_nll(run: Path, set_name: str) -> torch.Tensor:
    """Each member's NLL on ``set_name``, from the ensemble's own forward (M,)."""
    model, datamodule = load_run(run / "config.yaml")
    model.load_state_dict(torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    datamodule.setup("fit" if set_name == "val" else "test")
    data = datamodule.val_set if set_name == "val" else datamodule.test_sets[set_name]
    assert data is not None
    with torch.no_grad():
        logits = model.eval()(datamodule.preprocess(data.images, train=False))  # (M, N, C)
    return torch.stack([F.cross_entropy(member, data.labels) for member in logits])


@pytest.mark.slow
def test_batch_ensemble_end_to_end(runs, capsys):
    run = runs["BatchEnsemble"]
    _connectivity(run, "--points", "3")
    out = capsys.readouterr().out
    document = json.loads((run / "connectivity.json").read_text())
    assert set(document) >= set(DOCUMENT_KEYS)
    assert document["method"] == "BatchEnsemble" and document["num_members"] == 3 and document["set"] == "val"
    assert document["t"] == [0.0, 0.5, 1.0] and document["points"] == 3 and document["applicable"] is True
    assert [(p["i"], p["j"]) for p in document["pairs"]] == [(0, 1), (0, 2), (1, 2)]
    ends = _member_nll(run, "val")
    for pair in document["pairs"]:  # t = 0 and t = 1 are the members themselves
        assert pair["loss"][0] == pytest.approx(float(ends[pair["i"]]), rel=1e-5)
        assert pair["loss"][-1] == pytest.approx(float(ends[pair["j"]]), rel=1e-5)
    barriers = [p["barrier_loss"] for p in document["pairs"]]
    assert document["barrier_loss_mean"] == pytest.approx(sum(barriers) / 3)
    assert document["barrier_loss_std"] == pytest.approx(float(torch.tensor(barriers).std()))
    for pair in document["pairs"]:  # Frankle et al.: the highest point above the mean of the ends
        assert pair["frankle_barrier_loss"] == pytest.approx(max(pair["loss"]) - (pair["loss"][0] + pair["loss"][-1]) / 2)
        assert pair["frankle_barrier_error"] == pytest.approx(max(pair["error"]) - (pair["error"][0] + pair["error"][-1]) / 2)
    assert document["frankle_barrier_loss_mean"] == pytest.approx(sum(p["frankle_barrier_loss"] for p in document["pairs"]) / 3)
    assert (run / "figures" / "connectivity.png").stat().st_size > 0
    assert "0-1" in out and "mean" in out and "connectivity.json" in out


@pytest.mark.slow
def test_deep_ensemble_on_a_test_set_into_another_directory(runs, tmp_path):
    run = runs["DeepEnsemble"]
    _connectivity(run, "--points", "4", "--set", "digits", "--out", str(tmp_path / "elsewhere"))
    document = json.loads((tmp_path / "elsewhere" / "connectivity.json").read_text())
    assert document["set"] == "digits" and len(document["pairs"]) == 1 and document["barrier_loss_std"] is None
    assert (tmp_path / "elsewhere" / "figures" / "connectivity.png").exists()
    assert not (run / "connectivity.json").exists()
    pair = document["pairs"][0]
    ends = _member_nll(run, "digits")
    assert (pair["loss"][0], pair["loss"][-1]) == pytest.approx((float(ends[0]), float(ends[1])), rel=1e-5)


@pytest.mark.slow
def test_a_bad_set_name_lists_the_sets(runs, capsys):
    with pytest.raises(SystemExit) as info:
        _connectivity(runs["BatchEnsemble"], "--set", "digitz")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'digitz'" in err and "val, digits, digits_shifted" in err


def test_a_second_walk_keeps_the_first(runs, tmp_path, capsys):
    """Another --points or --set never replaces an earlier connectivity.json (a study's report reads it)."""
    run, out = runs["DeepEnsemble"], tmp_path / "twice"
    _connectivity(run, "--points", "3", "--out", str(out))
    first = (out / "connectivity.json").read_bytes()
    _connectivity(run, "--points", "4", "--set", "digits", "--out", str(out))
    assert "kept the earlier walk as" in capsys.readouterr().out
    assert (out / "connectivity.prev-1.json").read_bytes() == first and (out / "figures" / "connectivity.prev-1.png").exists()
    assert json.loads((out / "connectivity.json").read_text())["points"] == 4


@pytest.mark.parametrize("device, says", [("banana", "is not a device; give auto, cpu, cuda or cuda:N"), ("cuda:7", "CUDA device(s); give auto or cpu")])
def test_a_bad_device_is_one_line(runs, capsys, device, says):
    with pytest.raises(SystemExit) as info:
        _connectivity(runs["DeepEnsemble"], "--device", device)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and says in err and "Traceback" not in err


def test_the_runs_last_checkpoint_is_the_default(runs, tmp_path, capsys):
    run = runs["DeepEnsemble"]
    main(["connectivity", "--config", str(run / "config.yaml"), "--points", "3", "--out", str(tmp_path / "default")])
    assert "checkpoints/last.ckpt (the run's last checkpoint" in capsys.readouterr().err
    _connectivity(run, "--points", "3", "--out", str(tmp_path / "explicit"))
    default, explicit = (json.loads((tmp_path / d / "connectivity.json").read_text()) for d in ("default", "explicit"))
    assert default["pairs"] == explicit["pairs"] and default["checkpoint"] == explicit["checkpoint"]
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "config.yaml").write_bytes((run / "config.yaml").read_bytes())  # a config without checkpoints/ beside it
    with pytest.raises(SystemExit) as info:
        main(["connectivity", "--config", str(tmp_path / "copy" / "config.yaml")])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and "copy/checkpoints/last.ckpt does not exist" in err


def _fake_run(root: Path, model: Any, init_args: dict[str, Any]) -> Path:
    """A run directory as fit leaves it (config.yaml, checkpoints/last.ckpt) for ``model``, built with ``init_args``, without training."""
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    method = type(model).__name__
    config = {"model": {"class_path": method, "init_args": init_args}, "data": {"class_path": "DigitsDataModule"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    identity = {"method": method, "num_members": model.num_members, "num_classes": 10}
    torch.save({"state_dict": model.state_dict(), "ensemble_lab": identity}, run / "checkpoints" / "last.ckpt")
    return run


def test_shared_weights_method_writes_not_applicable_and_exits_zero(tmp_path, capsys):
    options = {"num_members": 3, "hidden_sizes": [8], "dropout": 0.1}
    run = _fake_run(tmp_path, MCDropout(**options), options)
    _connectivity(run)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "ensemble-lab connectivity: MCDropout's members share every weight (one network): there is no path between members to walk"
    )
    document = json.loads((run / "connectivity.json").read_text())
    assert document["applicable"] is False and document["pairs"] == [] and document["reason"] in out[0]
    assert document["barrier_loss_mean"] is None and document["barrier_error_std"] is None
    assert not (run / "figures").exists()


def test_batch_norm_statistics_are_reestimated_unless_switched_off(tmp_path):
    options = {"num_members": 2, "backbone": "resnet18", "width": 2}
    torch.manual_seed(0)
    run = _fake_run(tmp_path, DeepEnsemble(**options), options)
    fresh = run_connectivity(run / "config.yaml", run / "checkpoints" / "last.ckpt", points=3, norm_batches=2, quiet=True)
    kept = run_connectivity(run / "config.yaml", run / "checkpoints" / "last.ckpt", points=3, reset_norm=False, quiet=True)
    assert fresh["norm_batches"] == 2 and fresh["reset_norm"] is True
    assert kept["norm_batches"] == 0 and kept["reset_norm"] is False
    # without re-estimation the ends are the ensemble's members (initial statistics); with it, new statistics change them
    ends = _member_nll(run, "val")
    assert (kept["pairs"][0]["loss"][0], kept["pairs"][0]["loss"][-1]) == pytest.approx((float(ends[0]), float(ends[1])), rel=1e-5)
    assert fresh["pairs"][0]["loss"][0] != pytest.approx(kept["pairs"][0]["loss"][0], rel=1e-3)


def test_norm_batches_are_fixed_by_the_seed():
    from ensemble_lab.data import DigitsDataModule

    first, again = (training_batches(DigitsDataModule(batch_size=16), 3, seed=5) for _ in range(2))
    other = training_batches(DigitsDataModule(batch_size=16), 3, seed=6)
    assert [b.shape for b in first] == [(16, 1, 8, 8)] * 3
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and not torch.equal(first[0], other[0])


def test_a_regression_run_is_refused_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    config = {
        "model": {"class_path": "DeepEnsemble", "init_args": {"num_members": 2, "hidden_sizes": [8]}},
        "data": {"class_path": "TabularDataModule", "init_args": {"dataset": "diabetes"}},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as info:
        _connectivity(run)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "classification runs only" in err and "regression run" in err
