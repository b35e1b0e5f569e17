"""Assemble a Deep Ensemble from separately trained SingleModel checkpoints.

The paper-faithful Deep Ensemble trains its members as independent runs (own seed, own data
order). Member i of the assembled ensemble takes checkpoint i's network: every EnsembleLinear /
EnsembleConv2d slice ``[i]`` gets the matching nn.Linear / nn.Conv2d weight and bias, every
EnsembleBatchNorm2d row ``[i]`` the BatchNorm2d's affine parameters and running statistics, every
EnsembleLayerNorm row ``[i]`` the LayerNorm's, every EnsembleTokenEmbedding row ``[i]`` a ViT's class token
and position embedding.
Layers are paired in order of appearance, so indices of parameter-free layers (dropout) may differ.
"""

import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from ensemble_lab.errors import CheckpointMismatchError, ConfigError
from ensemble_lab.methods.checkpoint_state import architecture, flat_architecture, read_checkpoint
from ensemble_lab.methods.single import SingleModel
from ensemble_lab.nn import (
    EnsembleBatchNorm2d,
    EnsembleConv2d,
    EnsembleLayerNorm,
    EnsembleLinear,
    EnsembleTokenEmbedding,
    StackedMembers,
    TokenEmbedding,
    weights_from_checkpoint,
)
from ensemble_lab.runs.layout import run_dir_of_checkpoint

#: ensemble layer -> the plain layer whose tensors fill one member slice
MEMBER_OF: dict[type[nn.Module], type[nn.Module]] = {
    EnsembleLinear: nn.Linear,
    EnsembleConv2d: nn.Conv2d,
    EnsembleBatchNorm2d: nn.BatchNorm2d,
    EnsembleLayerNorm: nn.LayerNorm,
    EnsembleTokenEmbedding: TokenEmbedding,
}


def check_single(path: Path, hparams: dict[str, Any], expected: dict[str, Any]) -> None:
    """A SingleModel checkpoint whose architecture equals ``expected``, else a message naming both sides."""
    # the CLI records the method as _class_path; without it, a num_members other than 1 gives it away
    class_path = hparams.get("_class_path")
    method = class_path.rsplit(".", 1)[-1] if class_path else None
    if class_path is None and hparams.get("num_members", 1) != 1:
        method = f"model with num_members={hparams['num_members']}"
    if method is not None and method != "SingleModel":
        raise CheckpointMismatchError(
            f"member checkpoint {path} is a {method}, not a SingleModel; "
            "a Deep Ensemble is assembled from separately trained SingleModel runs"
        )
    found, expected = flat_architecture(architecture(hparams)), flat_architecture(expected)
    for key, want in expected.items():
        if found.get(key) != want:
            raise CheckpointMismatchError(
                f"member checkpoint {path} has {key}={found.get(key)!r}, but this DeepEnsemble has {key}={want!r}; "
                f"set --model.{key} (or the datamodule) to match the checkpoints"
            )


def single_network(path: Path, hparams: dict[str, Any], state_dict: dict[str, Tensor]) -> nn.Module:
    """The checkpoint's network, rebuilt as a SingleModel and loaded strictly."""
    arch = architecture(hparams)
    with weights_from_checkpoint():  # the state_dict below replaces every weight: a timm backbone fetches no pretrained ones
        model = SingleModel(dropout=float(hparams.get("dropout", 0.0)), **arch)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:  # other layers (BatchEnsemble's r, s; a Deep Ensemble's member axis)
        raise CheckpointMismatchError(f"member checkpoint {path} does not hold a SingleModel's tensors: {e}") from e
    return model.network


def _layers(network: nn.Module, types: tuple[type[nn.Module], ...]) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in network.named_modules() if isinstance(module, types)]


def _copy(target: Tensor | None, source: Tensor | None, where: str) -> None:
    if target is None and source is None:
        return
    if target is None or source is None or target.shape != source.shape:
        describe = lambda t: "none" if t is None else tuple(t.shape)
        raise CheckpointMismatchError(f"{where}: member slice is {describe(target)}, checkpoint tensor is {describe(source)}")
    target.copy_(source)


@torch.no_grad()
def fill_member(ensemble: nn.Module, member: nn.Module, i: int, path: Path) -> None:
    """Copy plain network ``member`` into member slice ``i`` of every layer of ``ensemble``."""
    if isinstance(ensemble, StackedMembers):  # a Deep Ensemble of a timm model: every tensor stacked, names kept
        ensemble.fill_member(i, member.state_dict(), f"member checkpoint {path}")
        return
    targets = _layers(ensemble, tuple(MEMBER_OF))
    sources = _layers(member, tuple(MEMBER_OF.values()))
    if len(targets) != len(sources):
        raise CheckpointMismatchError(
            f"member checkpoint {path} has {len(sources)} layers with weights, this DeepEnsemble {len(targets)}"
        )
    for (name, layer), (source_name, source) in zip(targets, sources):
        where = f"member checkpoint {path}, layer {source_name} -> {name}"
        if not isinstance(source, MEMBER_OF[type(layer)]):
            raise CheckpointMismatchError(f"{where}: a {type(source).__name__} cannot fill a {type(layer).__name__}")
        if isinstance(layer, EnsembleTokenEmbedding):  # (M, 1, D) / (M, T', D): member i's row keeps its leading 1
            assert isinstance(source, TokenEmbedding)
            for key in ("cls_token", "pos_embed"):
                mine, theirs = getattr(layer, key), getattr(source, key)
                _copy(mine[i : i + 1] if mine is not None else None, theirs, where)
            continue
        # what _layers and the check above guarantee, spelled out for the type checker
        assert isinstance(layer, (EnsembleLinear, EnsembleConv2d, EnsembleBatchNorm2d, EnsembleLayerNorm))
        assert isinstance(source, (nn.Linear, nn.Conv2d, nn.BatchNorm2d, nn.LayerNorm))
        _copy(layer.weight[i] if layer.weight is not None else None, source.weight, where)
        _copy(layer.bias[i] if layer.bias is not None else None, source.bias, where)
        if isinstance(layer, EnsembleBatchNorm2d) and layer.track_running_stats:
            assert isinstance(source, nn.BatchNorm2d)
            running_mean, running_var, batches = layer.running_mean, layer.running_var, layer.num_batches_tracked
            assert running_mean is not None and running_var is not None and batches is not None  # track_running_stats
            _copy(running_mean[i], source.running_mean, where)
            _copy(running_var[i], source.running_var, where)
            assert source.num_batches_tracked is not None  # it has running statistics: _copy checked them
            batches.copy_(torch.maximum(batches, source.num_batches_tracked))
    covered = {id(p) for _, layer in targets for p in layer.parameters()}
    for name, p in ensemble.named_parameters():
        if id(p) not in covered:  # a layer type without a copy rule: refuse rather than keep random weights
            raise CheckpointMismatchError(f"cannot assemble: parameter {name} belongs to a layer with no member-copy rule")


def refuse_duplicates(paths: list[str]) -> None:
    """ConfigError if two member checkpoints are one file: those members would be one network counted twice."""
    seen: dict[Path, str] = {}
    for raw in paths:
        key = Path(raw).expanduser().resolve()
        if key in seen:
            raise ConfigError(
                f"model.member_checkpoints names {raw} twice (as {seen[key]} and {raw}); an ensemble of one network "
                "twice has no diversity to measure. Give each member its own SingleModel run."
            )
        seen[key] = str(raw)


def warn_identical_members(ensemble: nn.Module, paths: list[str]) -> None:
    """Warn for every pair of members whose weights are equal (say, two runs with one seed and one config)."""
    layers = [layer for _, layer in _layers(ensemble, tuple(MEMBER_OF))]
    tensors: list[Tensor] = [t for layer in layers for t in layer.parameters(recurse=False)]  # every per-member tensor (M, ...)
    tensors += [t for stacked in ensemble.modules() if isinstance(stacked, StackedMembers) for t in stacked.member_parameters()]
    for i in range(len(paths)):
        for j in range(i + 1, len(paths)):
            if all(torch.equal(t[i], t[j]) for t in tensors):
                warnings.warn(
                    f"members {i} and {j} have identical weights ({paths[i]} and {paths[j]}): they will agree on "
                    f"every input, so this is not an ensemble of {len(paths)} independent members",
                    stacklevel=2,
                )


def member_seed(path: str | Path) -> int | None:
    """The seed of the run a checkpoint belongs to (``seed_everything`` in ``<run>/config.yaml``), if recorded."""
    run_dir = run_dir_of_checkpoint(path)
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) if run_dir is not None else None
    except (OSError, yaml.YAMLError):
        return None
    seed = config.get("seed_everything") if isinstance(config, dict) else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def load_member_checkpoints(ensemble: nn.Module, hparams: dict[str, Any], paths: list[str]) -> None:
    """Fill member i of ``ensemble`` (a DeepEnsemble network) from SingleModel checkpoint ``paths[i]``."""
    expected = architecture(hparams)
    for i, raw in enumerate(paths):
        path = Path(raw).expanduser()
        member_hparams, state_dict = read_checkpoint(path)
        check_single(path, member_hparams, expected)
        fill_member(ensemble, single_network(path, member_hparams, state_dict), i, path)
