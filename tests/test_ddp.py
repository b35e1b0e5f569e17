"""DDP on CPU (2 gloo processes): training, the post-fit test and exact metrics over the gathered set.

Lightning's ``ddp`` strategy re-launches the running script for every extra rank, so the DDP run
goes through ``python -m ensemble_lab`` in a subprocess (re-launching pytest would not work).
The digits test sets have 359 images and the validation set is cut to 201: neither divides by
2 ranks, so DistributedSampler pads with repeated samples that the PredictionStore must drop.
"""

import math
import os
import subprocess
import sys

import pytest
import torch

from ensemble_lab.config.run_config import flatten
from tests.conftest import REPO, read_results, reproducible, run_dirs

COMMON = [
    "--model=BatchEnsemble",  # deterministic at test: no Monte Carlo draws to differ between runs
    "--model.num_members=2",
    "--data=DigitsDataModule",
    "--data.val_size=201",
    "--seed_everything=7",
    "--model.optimizer=Adam",
    "--model.optimizer.lr=0.01",
    "--figures=false",
    "--trainer.max_epochs=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
]


def scalars_of(events_dir, prefix: str, skip: set | frozenset = frozenset()) -> dict[str, float]:
    """Last value of every TensorBoard scalar under ``prefix`` in ``events_dir`` (event files in ``skip`` left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for path in sorted(set(events_dir.glob("events.out.tfevents.*")) - set(skip)):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            if tag.startswith(prefix):
                values[tag] = events.Scalars(tag)[-1].value
    return values


def assert_same_numbers(a, b, path: str = "") -> None:
    """Equal structure; floats equal to 1e-6 (two processes, different batch compositions)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_numbers(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.mark.slow
def test_ddp_fit_and_test_match_a_single_process(cli, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp"]
    done = subprocess.run(
        [sys.executable, "-m", "ensemble_lab", "fit", *COMMON, *ddp],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    (run,) = run_dirs(tmp_path)
    assert output.count("results ->") == 1, "results printed by more than rank 0"
    assert "Traceback" not in output, output[-4000:]
    ddp_results = read_results(run)
    ddp_val = scalars_of(run, "val/")
    assert set(ddp_val) >= {"val/acc", "val/nll", "val/ece", "val/mi", "val/disagreement"}
    train = scalars_of(run, "train/")  # epoch means reduced over both ranks
    assert 0 < train["train/acc"] <= 1 and math.isfinite(train["train/loss_epoch"])

    # The same checkpoint in one process: test (into the same run) and validate.
    single = ["--trainer.devices=1", "--trainer.strategy=auto"]
    ckpt = str(run / "checkpoints" / "last.ckpt")
    cli("test", "--config", str(run / "config.yaml"), f"--ckpt_path={ckpt}", "--overwrite=true", *single)
    single_results = read_results(run)
    ddp_results["checkpoint"] = single_results["checkpoint"]  # the post-fit test names no file
    # the single-process test records that it ran on one device where training used two, and nothing else changed
    assert ddp_results["test_changes"] == [] and ddp_results["fit_config"] is None
    assert sorted(single_results.pop("test_changes")) == ["trainer.devices: 2 -> 1", "trainer.strategy: ddp -> auto"]
    assert flatten(single_results.pop("fit_config"))["trainer.strategy"] == "ddp"
    for results in (ddp_results, single_results):
        results.pop("test_changes", None), results.pop("fit_config", None), results.pop("config")
    assert_same_numbers(reproducible(ddp_results), reproducible(single_results))  # cost timings measure the machine
    assert ddp_results["sets"]["digits"]["acc"] > 0.5  # it trained (10 % is chance)
    # each rank saw half of the 1,237 training digits: ceil(619 / 64) = 10 steps, not 20
    assert torch.load(ckpt, weights_only=False)["global_step"] == 10

    earlier = set(run.glob("events.out.tfevents.*"))
    cli("validate", "--config", str(run / "config.yaml"), f"--ckpt_path={ckpt}", *single)
    assert run_dirs(tmp_path) == [run]  # validate logs into the checkpoint's run
    single_val = scalars_of(run, "val/", skip=earlier)
    for key, value in ddp_val.items():
        assert single_val[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
