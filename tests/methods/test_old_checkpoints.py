"""A checkpoint written before an option existed loads with ``load_from_checkpoint`` as the run was trained: its
hyper-parameters lack the option, and the method then behaves as the code that wrote it did."""

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from ensemble_lab.methods import BatchEnsemble, LowRankEnsemble, Masksembles, PackedEnsemble
from ensemble_lab.methods.base import EnsembleModule

RESNET = {"backbone": "resnet18", "width": 16}  # 8x8 digits: a tiny ResNet-18
#: the flat options every record of the release before options had objects held (distillation, repulsion, backbone)
OLD_FLAT = {
    "backbone": "resnet18", "width": 16, "hidden_sizes": [64, 32, 16], "depth": None, "widen_factor": None, "teacher": None,
    "distill_temperature": 4.0, "distill_alpha": 0.5, "distill_match": "mean", "repulsion": 0.0, "repulsion_bandwidth": 0.5,
}  # fmt: skip


def _save(model: EnsembleModule, path: Path, drop: tuple[str, ...], flat: bool = False) -> None:
    """``model``'s checkpoint with the options ``drop`` removed from its hyper-parameters (and, ``flat``, written
    as the release before options had objects recorded them)."""
    hparams: dict[str, Any] = {k: v for k, v in model.hparams.items() if k not in drop}
    # as the CLI records them: Lightning rebuilds the class named by _class_path through the CLI's instantiator
    hparams.update(_class_path=f"ensemble_lab.methods.{type(model).__name__}", _instantiator="lightning.pytorch.cli.instantiate_module")
    if flat:
        for new_only in ("backbone", "distillation", "repulsion", "task", "regression"):
            hparams.pop(new_only, None)
        hparams.update(OLD_FLAT)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": L.__version__}, path)


def _same_outputs(model: EnsembleModule, path: Path) -> EnsembleModule:
    loaded = type(model).load_from_checkpoint(path).eval()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    return loaded


@pytest.mark.parametrize("flat", [False, True], ids=["record", "flat record"])
def test_a_masksembles_checkpoint_from_before_mask_placement_loads_with_the_placement_it_had(tmp_path, flat):
    torch.manual_seed(0)
    model = Masksembles(num_members=2, mask_placement="block_outputs", **RESNET)  # the only placement before the option
    _save(model, tmp_path / "old.ckpt", drop=("mask_placement", "mask_seed"), flat=flat)
    assert _same_outputs(model, tmp_path / "old.ckpt").hparams["mask_placement"] == "block_outputs"
    today = Masksembles(num_members=2, **RESNET)  # a record holding the option keeps it
    _save(today, tmp_path / "new.ckpt", drop=())
    assert _same_outputs(today, tmp_path / "new.ckpt").hparams["mask_placement"] == "inputs"


def test_a_grouped_packed_checkpoint_from_before_its_grouping_options_loads_as_it_was_trained(tmp_path):
    torch.manual_seed(0)
    old = {"min_channels_per_group": 0, "group_block_entry": True}  # what γ > 1 did before the options
    model = PackedEnsemble(num_members=2, alpha=2, gamma=2, **old, **RESNET)
    _save(model, tmp_path / "old.ckpt", drop=tuple(old))
    loaded = _same_outputs(model, tmp_path / "old.ckpt")
    assert {k: loaded.hparams[k] for k in old} == old
    dense = PackedEnsemble(num_members=2, alpha=2, gamma=1, **RESNET)  # γ = 1 never grouped: today's defaults hold
    _save(dense, tmp_path / "dense.ckpt", drop=tuple(old))
    _same_outputs(dense, tmp_path / "dense.ckpt")


@pytest.mark.parametrize(
    ("method", "options", "added"),
    [
        (BatchEnsemble, {}, ("head", "fast_weight_init", "task", "regression")),
        (LowRankEnsemble, {}, ("adapters", "lora_alpha", "freeze_shared", "task", "regression")),
        (Masksembles, {"hidden_sizes": [16]}, ("mask_placement", "mask_seed", "task", "regression")),
    ],
)
def test_options_added_since_default_to_what_the_code_before_them_did(tmp_path, method, options, added):
    torch.manual_seed(0)
    model = method(num_members=2, backbone="mlp", **options)
    _save(model, tmp_path / "old.ckpt", drop=added)
    _same_outputs(model, tmp_path / "old.ckpt")
