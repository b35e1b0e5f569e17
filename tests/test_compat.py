"""ensemble_lab.compat on a real Trainer, loggers, parsers and checkpoints: each function does what its name
says, so an upgrade of Lightning, jsonargparse or torch that renames a private fails here, by name."""

import argparse
import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from ensemble_lab import compat

QUIET = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)


class Tiny(L.LightningModule):
    """One linear layer on random rows; logs test/x once per test."""

    def __init__(self, width: int = 2) -> None:
        """
        Args:
            width: input features.
        """
        super().__init__()
        self.layer = torch.nn.Linear(width, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def test_step(self, batch, batch_idx):
        self.log("test/x", 1.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)

    test_dataloader = train_dataloader


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_set_logging_step_moves_the_step_test_scalars_are_logged_at(tmp_path):
    trainer = L.Trainer(logger=CSVLogger(tmp_path, name="run", version="v"), **QUIET)
    compat.set_logging_step(trainer, 17)
    assert compat.logging_step(trainer) == 17
    trainer.test(Tiny(), verbose=False)
    (row,) = [r for r in csv_rows(tmp_path / "run" / "v" / "metrics.csv") if r["test/x"]]
    assert int(row["step"]) == 17  # Lightning's CSV logger writes the step it logged at


def test_set_default_root_dir_moves_where_checkpoints_go_without_a_logger(tmp_path):
    trainer = L.Trainer(logger=False, default_root_dir=str(tmp_path / "a"), max_steps=1, **QUIET)
    compat.set_default_root_dir(trainer, str(tmp_path / "b"))
    assert trainer.default_root_dir == str(tmp_path / "b")
    trainer.fit(Tiny())
    assert list((tmp_path / "b").rglob("*.ckpt")) and not (tmp_path / "a").exists()


def test_attached_trainer_is_none_until_a_trainer_holds_the_module():
    module, trainer = Tiny(), L.Trainer(logger=False, **QUIET)
    assert compat.attached_trainer(module) is None
    with pytest.raises(RuntimeError):
        module.trainer  # the public property refuses instead
    module.trainer = trainer
    assert compat.attached_trainer(module) is trainer


def test_logger_version_is_none_until_fixed_and_never_picks_one(tmp_path):
    (tmp_path / "lightning_logs" / "version_0").mkdir(parents=True)
    for make in (TensorBoardLogger, CSVLogger):
        free = make(tmp_path)
        assert compat.logger_version(free) is None
        assert free.version == 1  # the public property picks the next free version_N
        assert compat.logger_version(free) == 1
        assert compat.logger_version(make(tmp_path, version="mine")) == "mine"


def test_drop_placeholder_hp_metric_stops_the_minus_one_scalar(tmp_path):
    def scalar_tags(logger: TensorBoardLogger) -> list[str]:
        logger.log_hyperparams({"lr": 0.1})
        logger.finalize("success")
        return EventAccumulator(logger.log_dir).Reload().Tags()["scalars"]

    assert "hp_metric" in scalar_tags(TensorBoardLogger(tmp_path, name="kept"))
    dropped = TensorBoardLogger(tmp_path, name="dropped")
    compat.drop_placeholder_hp_metric(dropped)
    assert "hp_metric" not in scalar_tags(dropped)


@pytest.mark.parametrize("make", [TensorBoardLogger, CSVLogger])
def test_place_logger_run_points_the_logger_at_that_directory(tmp_path, make):
    logger = make(tmp_path / "elsewhere", sub_dir="sub") if make is TensorBoardLogger else make(tmp_path / "elsewhere")
    run = tmp_path / "root" / "runs" / "seed_1"
    compat.place_logger_run(logger, str(tmp_path / "root"), "runs", "seed_1")
    assert Path(logger.log_dir) == run and logger.version == "seed_1" and logger.name == "runs"
    logger.log_metrics({"m": 1.0}, step=0)
    logger.save()
    logger.finalize("success")
    written = {p.name.split(".")[0] for p in run.iterdir() if p.is_file()}
    assert ("events" if make is TensorBoardLogger else "metrics") in written
    assert not [p for p in run.iterdir() if p.is_dir()]  # directly there: no sub_dir
    assert not (tmp_path / "elsewhere").exists()


def test_last_checkpoint_save_step_and_save_last_checkpoint_now(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2, save_top_k=0)
    trainer = L.Trainer(logger=False, max_steps=3, callbacks=[checkpoint], **QUIET)
    trainer.fit(Tiny())
    assert compat.last_checkpoint_save_step(checkpoint) == 2  # saves at steps 2, 4, ...: the fit stopped at 3
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 2
    compat.save_last_checkpoint_now(checkpoint, trainer)
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 3
    compat.set_last_checkpoint_save_step(checkpoint, 5)
    assert compat.last_checkpoint_save_step(checkpoint) == 5


def test_parser_actions_lists_every_declared_option():
    parser = argparse.ArgumentParser()
    parser.add_argument("--alpha", type=int)
    parser.add_argument("--beta")
    assert [a.dest for a in compat.parser_actions(parser)] == ["help", "alpha", "beta"]


class _NoRun(LightningCLI):
    def _run_subcommand(self, subcommand: str) -> None:  # parse and build, run nothing
        self.ran = subcommand


def test_cli_subcommand_parser_and_cli_instance(tmp_path):
    args = ["fit", "--model.width=3", "--trainer.max_epochs=4", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    cli = _NoRun(Tiny, args=args, save_config_callback=None, trainer_defaults=QUIET)
    assert cli.ran == "fit"  # the overridden hook ran in place of Lightning's
    fit_parser = compat.cli_subcommand_parser(cli, "fit")
    assert fit_parser is not compat.cli_subcommand_parser(cli, None)
    assert "max_epochs: 4" in fit_parser.dump(cli.config["fit"])
    model = compat.cli_instance(cli, cli.config_init, "model")
    assert model is cli.model and isinstance(model, Tiny) and model.layer.in_features == 3


def test_the_overridden_private_hooks_still_exist():
    """The hooks the module docstring lists: a rename would silently drop ensemble-lab's override."""
    for cls, name in [
        (LightningCLI, "_set_seed"),
        (LightningCLI, "_run_subcommand"),
        (LightningCLI, "_parse_ckpt_path"),
        (LightningCLI, "_prepare_subcommand_parser"),
        (ModelCheckpoint, "_save_topk_checkpoint"),
        (EarlyStopping, "_validate_condition_metric"),
    ]:
        assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name}"
        assert name in compat.__doc__


def test_torch_dispatch_mode_and_tree_leaves():
    assert compat.tree_leaves([1, (2, {"a": 3})]) == [1, 2, 3]

    class Ops(compat.TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(func.__name__)
            return func(*args, **(kwargs or {}))

    with Ops() as ops:
        torch.ones(2) + torch.ones(2)
    assert any(name.startswith("add") for name in ops.seen)
