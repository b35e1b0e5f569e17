"""A run directory written before options belonged to their objects (main at 9fa6435: flat backbone, distillation
and repulsion keys in config.yaml, the checkpoint's hyper-parameters and results.json) still reports, tests and
resumes, with the numbers of the same run written today."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from ensemble_lab.cli import main
from ensemble_lab.report.groups import build_report
from tests.conftest import TINY_TRAINER, read_results, reproducible, run_dirs
from tests.run_helpers import working_directory

#: BatchEnsemble's options in that release's order, as its config.yaml recorded them (optimizer aside)
OLD_MODEL_OPTIONS = {
    "rank": 1, "perturbation": "channel", "fast_weight_init": "normal", "fast_weight_mean": 1.0, "fast_weight_std": 0.5,
    "unperturbed_first_member": False, "gradient_blocking": False, "train_batch": "tile", "norm": "shared",
    "fast_weight_lr_scale": 0.5, "fast_weight_decay": False, "num_members": 2, "backbone": "mlp", "hidden_sizes": [16],
    "width": None, "depth": None, "widen_factor": None, "dropout": 0.0,
}  # fmt: skip
OLD_TAIL = {
    "channels_last": False, "compile": False, "teacher": None, "distill_temperature": 4.0, "distill_alpha": 0.5,
    "distill_match": "mean", "repulsion": 0.0, "repulsion_bandwidth": 0.5,
}  # fmt: skip
#: the keys that release had and this one renamed
RENAMED = {"backbone", "hidden_sizes", "width", "depth", "widen_factor", "teacher", "distill_temperature", "distill_alpha",
           "distill_match", "repulsion", "repulsion_bandwidth"}  # fmt: skip
ARGS = ["--model=BatchEnsemble", "--model.num_members=2", "--model.backbone.hidden_sizes=[16]", "--data=DigitsDataModule",
        *TINY_TRAINER, "--figures=false", "--seed_everything=7"]  # fmt: skip


def _old_style(new_run: Path, old_run: Path) -> None:
    """``old_run``: ``new_run`` as that release wrote it: config.yaml, last.ckpt's hyper-parameters and results.json
    with the old flat keys (the weights, being the same network's, are unchanged)."""
    shutil.copytree(new_run, old_run)
    config = yaml.safe_load((old_run / "config.yaml").read_text())
    new_options = config["model"]["init_args"]
    optimizer, lr_scheduler = new_options["optimizer"], new_options["lr_scheduler"]
    old_options = {**OLD_MODEL_OPTIONS, "optimizer": optimizer, "lr_scheduler": lr_scheduler, **OLD_TAIL}
    # today's record differs from that release's in the renamed keys only, and the options added since (regression,
    # TabM's independent heads)
    assert set(new_options) - {"backbone", "distillation", "repulsion", "regression", "head"} == set(old_options) - RENAMED
    config["model"]["init_args"] = old_options
    (old_run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for checkpoint_path in (old_run / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        options = {k: v for k, v in old_options.items() if k not in ("optimizer", "lr_scheduler")}
        checkpoint["hyper_parameters"] = {
            "_class_path": "ensemble_lab.methods.BatchEnsemble", **OLD_MODEL_OPTIONS, "num_classes": 10, "input_shape": (1, 8, 8),
            **{k: options[k] for k in OLD_TAIL}, "_instantiator": "lightning.pytorch.cli.instantiate_module",
        }  # fmt: skip
        torch.save(checkpoint, checkpoint_path)
    results = read_results(old_run)
    flat = {k: v for k, v in results["config"].items() if not k.startswith(("model.init_args.backbone", "model.init_args.distillation", "model.init_args.repulsion"))}
    results["config"] = {**flat, **{f"model.init_args.{k}": v for k, v in old_options.items() if k in RENAMED}}
    (old_run / "results.json").write_text(json.dumps(results))


@pytest.mark.slow
def test_a_run_directory_of_the_last_release_reports_tests_and_resumes_as_today(tmp_path):
    with working_directory(tmp_path):
        main(["fit", *ARGS])
    (new_run,) = run_dirs(tmp_path)
    old_run = tmp_path / "old" / "lightning_logs" / "version_0"
    _old_style(new_run, old_run)

    # report: the old record and today's are one configuration, pooled in one row
    (group,) = build_report([old_run, new_run])
    assert group.variant is None and len(group.seeds) == 2

    # test: the old config.yaml and checkpoint build the same network and give the same numbers, with no change
    # of options recorded (the renamed keys are no change)
    with working_directory(tmp_path):
        for run in (old_run, new_run):
            main(["test", f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "--overwrite=true"])
    old_results, new_results = read_results(old_run), read_results(new_run)
    assert old_results["sets"] == new_results["sets"]
    assert old_results["test_changes"] == new_results["test_changes"] == []
    assert old_results["config"] == new_results["config"]

    # resume: fit --ckpt_path continues the old run to the weights today's run reaches
    with working_directory(tmp_path):
        for run in (old_run, new_run):
            main(["fit", f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                  "--trainer.max_epochs=2", "--overwrite=true"])  # fmt: skip
    load = lambda run: torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    old_checkpoint, new_checkpoint = load(old_run), load(new_run)
    assert old_checkpoint["global_step"] == new_checkpoint["global_step"] == 6
    assert old_checkpoint["state_dict"].keys() == new_checkpoint["state_dict"].keys()
    assert all(torch.equal(old_checkpoint["state_dict"][k], new_checkpoint["state_dict"][k]) for k in new_checkpoint["state_dict"])
    assert reproducible(read_results(old_run))["sets"] == reproducible(read_results(new_run))["sets"]


@pytest.mark.slow
def test_old_flags_still_parse_with_a_deprecation_note(tmp_path, capsys):
    old_flags = [arg.replace("--model.backbone.hidden_sizes", "--model.hidden_sizes") for arg in ARGS]
    with working_directory(tmp_path):
        main(["fit", *old_flags, "--model.repulsion=0.1", "--test_after_fit=false"])
    err = capsys.readouterr().err
    assert "--model.hidden_sizes is deprecated (it still works): use --model.backbone.hidden_sizes" in err
    assert "--model.repulsion is deprecated (it still works): use --model.repulsion.strength" in err
    (run,) = run_dirs(tmp_path)
    options = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]
    assert options["backbone"] == {"class_path": "ensemble_lab.nn.MLPOptions", "init_args": {"hidden_sizes": [16]}}
    assert options["repulsion"] == {"strength": 0.1, "bandwidth": 0.5} and options["distillation"] is None
