"""A DeepEnsemble assembled from SingleModel checkpoints: member i computes what checkpoint i computes."""

from pathlib import Path

import pytest
import torch

from ensemble_lab.errors import CheckpointMismatchError, ConfigError
from ensemble_lab.methods import BatchEnsemble, DeepEnsemble, MCDropout, SingleModel
from ensemble_lab.nn import EnsembleBatchNorm2d, ViTOptions

MLP = dict(input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(16, 8))
RESNET = dict(input_shape=(3, 8, 8), num_classes=5, backbone="resnet18", width=4)
# a ratio and a pooling name among the options: the assembly compares them as they are
TINY_VIT = dict(patch_size=2, embed_dim=16, depth=2, num_heads=2, mlp_ratio=1.5)
VIT = dict(input_shape=(1, 8, 8), num_classes=10, backbone=ViTOptions(**TINY_VIT))


def save(model, path: Path, class_path: str | None = None) -> str:
    """A checkpoint with what Lightning writes and the assembly reads: hyper_parameters and state_dict."""
    hparams = dict(model.hparams)
    if class_path is not None:  # LightningCLI records the method's class here
        hparams["_class_path"] = class_path
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "epoch": 3}, path)
    return str(path)


def trained_singles(tmp_path: Path, options: dict, count: int, **extra) -> tuple[list[SingleModel], list[str]]:
    """``count`` SingleModels with different weights and non-default BatchNorm statistics, saved."""
    models, paths = [], []
    for i in range(count):
        torch.manual_seed(100 + i)
        model = SingleModel(**options, **extra)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # as if trained: statistics and affine not at init
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.data.normal_(1.0, 0.2)
                module.bias.data.normal_()
                module.num_batches_tracked.fill_(10 + i)
            if isinstance(module, torch.nn.LayerNorm):  # a ViT's norms away from their init too
                module.weight.data.normal_(1.0, 0.2)
                module.bias.data.normal_()
        models.append(model.eval())
        paths.append(save(model, tmp_path / f"single{i}.ckpt", "ensemble_lab.methods.SingleModel"))
    return models, paths


@pytest.mark.parametrize(
    "options,extra",
    [(MLP, {"dropout": 0.05}), (RESNET, {}), (VIT, {}), (dict(VIT, backbone=ViTOptions(**TINY_VIT, pooling="mean")), {})],
    ids=["mlp", "resnet18", "vit", "vit_mean_pooling"],
)
def test_member_probabilities_equal_each_checkpoint(tmp_path, options, extra):
    singles, paths = trained_singles(tmp_path, options, 3, **extra)
    torch.manual_seed(0)
    ensemble = DeepEnsemble(member_checkpoints=paths, num_members=7, **options).eval()  # 7: overridden
    assert ensemble.num_members == 3 and ensemble.member_checkpoints == paths
    x = torch.randn(5, *options["input_shape"])
    with torch.no_grad():
        member_probs = ensemble(x).softmax(-1)  # (M, B, C)
        for i, single in enumerate(singles):
            torch.testing.assert_close(member_probs[i], single(x)[0].softmax(-1), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(member_probs[0], member_probs[1])
    for bn in (m for m in ensemble.modules() if isinstance(m, EnsembleBatchNorm2d)):
        assert bn.num_batches_tracked == 12  # the most any member saw


def test_mlp_members_pair_layers_by_order_not_by_name(tmp_path):
    # dropout shifts the MLP's Sequential indices (network.4 vs network.3): still the same layers
    singles, paths = trained_singles(tmp_path, MLP, 2, dropout=0.05)
    ensemble = DeepEnsemble(member_checkpoints=paths, dropout=0.0, **MLP).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ensemble(x)[1], singles[1](x)[0])


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(hidden_sizes=(16, 4)), r"has backbone.hidden_sizes=\[16, 8\], but this DeepEnsemble has backbone.hidden_sizes=\[16, 4\]; set --model.backbone.hidden_sizes"),
        (dict(num_classes=3), "has num_classes=10, but this DeepEnsemble has num_classes=3"),
        (dict(input_shape=(1, 28, 28)), r"has input_shape=\[1, 8, 8\], but this DeepEnsemble has input_shape=\[1, 28, 28\]"),
        (dict(backbone="resnet18", input_shape=(1, 8, 8), hidden_sizes=None), "has backbone='mlp', but this DeepEnsemble has backbone='resnet18'"),
    ],
)
def test_architecture_mismatch_names_both_sides(tmp_path, change, match):
    _, paths = trained_singles(tmp_path, MLP, 1)
    with pytest.raises(CheckpointMismatchError, match=match):
        DeepEnsemble(member_checkpoints=paths, **(MLP | change))


def test_resnet_width_mismatch(tmp_path):
    _, paths = trained_singles(tmp_path, RESNET, 1)
    with pytest.raises(CheckpointMismatchError, match="has backbone.width=4, but this DeepEnsemble has backbone.width=8"):
        DeepEnsemble(member_checkpoints=paths, **(RESNET | {"width": 8}))


def test_other_methods_and_missing_files_are_refused(tmp_path):
    _, (good,) = trained_singles(tmp_path, MLP, 1)
    batch = save(BatchEnsemble(num_members=2, **MLP), tmp_path / "be.ckpt", "ensemble_lab.methods.BatchEnsemble")
    with pytest.raises(CheckpointMismatchError, match=r"be.ckpt is a BatchEnsemble, not a SingleModel"):
        DeepEnsemble(member_checkpoints=[good, batch], **MLP)
    mcd = save(MCDropout(num_members=4, **MLP), tmp_path / "mcd.ckpt")  # no _class_path: saved outside the CLI
    with pytest.raises(CheckpointMismatchError, match="num_members=4, not a SingleModel"):
        DeepEnsemble(member_checkpoints=[mcd], **MLP)
    # neither a class path nor num_members: the tensors themselves give a BatchEnsemble away
    be = BatchEnsemble(num_members=2, **MLP)
    torch.save({"state_dict": be.state_dict(), "hyper_parameters": dict(MLP)}, tmp_path / "bare.ckpt")
    with pytest.raises(CheckpointMismatchError, match="does not hold a SingleModel's tensors"):
        DeepEnsemble(member_checkpoints=[str(tmp_path / "bare.ckpt")], **MLP)
    with pytest.raises(CheckpointMismatchError, match="nope.ckpt does not exist"):
        DeepEnsemble(member_checkpoints=[good, str(tmp_path / "nope.ckpt")], **MLP)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="junk.ckpt is not a checkpoint"):
        DeepEnsemble(member_checkpoints=[str(tmp_path / "junk.ckpt")], **MLP)
    with pytest.raises(ConfigError, match="empty"):
        DeepEnsemble(member_checkpoints=[], **MLP)
