"""A run of a timm backbone with ``pretrained: true`` is loaded from its checkpoint without fetching timm's
pretrained weights (the checkpoint replaces every weight): timm's loading is made to raise, and never downloads."""

import lightning as L
import pytest
import torch

from ensemble_lab.config.lightning_cli import check_arguments
from ensemble_lab.connectivity.loading import load_run
from ensemble_lab.methods import DeepEnsemble, SingleModel
from ensemble_lab.nn import TimmOptions

timm = pytest.importorskip("timm")
builder = pytest.importorskip("timm.models._builder")

SHAPE, CLASSES = (1, 8, 8), 10
#: a timm ResNet-18 cut to one block per stage of 8 channels
RESNET_ARGS = {"layers": [1, 1, 1, 1], "channels": [8, 8, 8, 8], "stem_width": 8}
CLI = ["--model=SingleModel", "--model.backbone=TimmOptions", "--model.backbone.model_name=resnet18",
       f"--model.backbone.model_args={RESNET_ARGS}", "--model.backbone.pretrained=true", "--data=DigitsDataModule"]  # fmt: skip


class Fetched(Exception):
    """timm was asked for its pretrained weights."""


def _refuse(*args, **kwargs):
    raise Fetched("timm's pretrained weights were fetched")


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    """A SingleModel of a pretrained timm ResNet built with timm's loading a no-op that counts its calls; its
    checkpoint as the CLI writes it; then timm's loading raises."""
    calls = []
    monkeypatch.setattr(builder, "load_pretrained", lambda *args, **kwargs: calls.append(args))
    torch.manual_seed(0)
    model = SingleModel(backbone=TimmOptions("resnet18", RESNET_ARGS, pretrained=True), input_shape=SHAPE, num_classes=CLASSES)
    assert len(calls) == 1  # building it does ask timm for the weights
    hparams = {**model.hparams, "_class_path": "ensemble_lab.methods.SingleModel", "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    assert hparams["backbone"]["init_args"]["pretrained"] is True
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": L.__version__}, path)
    monkeypatch.setattr(builder, "load_pretrained", _refuse)
    return model.eval(), path


def test_load_from_checkpoint_builds_the_timm_model_without_its_pretrained_weights(checkpoint):
    model, path = checkpoint
    loaded = SingleModel.load_from_checkpoint(path).eval()
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.hparams["backbone"]["init_args"]["pretrained"] is True  # the record says what the run was trained from
    with pytest.raises(Fetched):  # outside a load, a pretrained model still fetches its weights
        SingleModel(backbone=TimmOptions("resnet18", RESNET_ARGS, pretrained=True), input_shape=SHAPE, num_classes=CLASSES)


def test_commands_that_load_a_checkpoint_build_the_model_without_fetching(checkpoint, tmp_path):
    _, path = checkpoint
    for command in ("test", "validate", "fit"):  # evaluating a run, resuming one
        check_arguments([command, *CLI, f"--ckpt_path={path}"])
    # a new fit starts from timm's pretrained weights (fit's "last" may find no run); jsonargparse wraps the error
    with pytest.raises(Exception, match="pretrained weights were fetched"):
        check_arguments(["fit", *CLI, "--ckpt_path=last"])
    config = tmp_path / "config.yaml"  # connectivity builds a run from its config.yaml, then loads its checkpoint
    config.write_text("model:\n  class_path: SingleModel\n  init_args:\n    backbone:\n      class_path: TimmOptions\n"
                      f"      init_args: {{model_name: resnet18, model_args: {RESNET_ARGS}, pretrained: true}}\ndata: DigitsDataModule\n")  # fmt: skip
    model, _ = load_run(config)
    assert model.backbone.pretrained is True


def test_deep_ensemble_assembled_from_pretrained_runs_fetches_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(builder, "load_pretrained", lambda *args, **kwargs: None)  # the runs were built from (no-op) weights
    backbone = dict(backbone=TimmOptions("resnet18", RESNET_ARGS, pretrained=True), input_shape=SHAPE, num_classes=CLASSES)
    singles, paths = [], []
    for i in range(2):  # two runs of their own seeds
        torch.manual_seed(10 + i)
        single = SingleModel(**backbone)
        hparams = {**single.hparams, "_class_path": "ensemble_lab.methods.SingleModel"}
        paths.append(str(tmp_path / f"run{i}.ckpt"))
        torch.save({"state_dict": single.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": L.__version__}, paths[-1])
        singles.append(single.eval())
    monkeypatch.setattr(builder, "load_pretrained", _refuse)
    ensemble = DeepEnsemble(member_checkpoints=paths, **backbone).eval()
    assert ensemble.backbone.pretrained is True  # the record keeps what the runs were trained from
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = ensemble(x)  # (M, B, C)
        for i, single in enumerate(singles):  # member i is run i's network
            torch.testing.assert_close(logits[i], single(x)[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(logits[0], logits[1])
    # as the CLI builds it: `test --model DeepEnsemble --model.member_checkpoints [...]`, no --ckpt_path
    member_cli = [a.replace("SingleModel", "DeepEnsemble") for a in CLI]
    check_arguments(["test", *member_cli, f"--model.member_checkpoints=[{paths[0]},{paths[1]}]"])
    with pytest.raises(Fetched):  # a Deep Ensemble trained from timm's weights still fetches them
        DeepEnsemble(num_members=2, **backbone)
