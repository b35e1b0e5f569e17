"""Spawned ensembles (Frankle et al. 2020): members that share a parent's first t epochs, then train apart.

The parent is one network (a SingleModel run of the same recipe) whose checkpoint after epoch t is kept
(``--checkpoint.keep_epochs [t]`` writes ``spawn-epoch=<t>.ckpt``). ``--model.spawn_from`` turns that
checkpoint into one of this model's own, as the parent's run would have saved it had it been this ensemble:
every member gets the parent's weights and BatchNorm statistics, every member's optimizer state is the
parent's (Adam's moments copied along the member axis), and the epoch, step and learning-rate scheduler are
where the parent's were. The fit then resumes from it, so Lightning restores all of it the way it restores
any run; only the random streams and the training order are the run's own (its seed, and with
``--data.train_batch independent`` each member's own shuffle), so the members part from epoch t on.
"""

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ensemble_lab.errors import CheckpointMismatchError, ConfigError
from ensemble_lab.methods.assemble import check_single
from ensemble_lab.methods.checkpoint_state import KEY, architecture
from ensemble_lab.runs.checkpoint_files import load_checkpoint

#: what the checkpoint keeps from the parent: where training stands (the loops, the scheduler), not its callbacks,
#: random streams or data order
KEPT = ("epoch", "global_step", "pytorch-lightning_version", "loops", "lr_schedulers")


def _spread(source: Tensor, shape: torch.Size, members: int, where: str) -> Tensor:
    """``source`` as a tensor of ``shape``: itself, or one copy per member along a leading member axis."""
    if tuple(source.shape) == tuple(shape):
        return source.clone()
    if tuple(shape) == (members, *source.shape):
        return source.unsqueeze(0).expand(shape).clone()  # (M, ...): every member starts as the parent
    raise CheckpointMismatchError(f"{where} is {tuple(source.shape)} in the parent, this model needs {tuple(shape)}")


def _optimizer_and_schedulers(model: Any) -> tuple[torch.optim.Optimizer, int]:
    """A fresh optimizer of ``model`` (its parameter order and groups) and how many schedulers it has."""
    built = model.configure_optimizers()
    if isinstance(built, dict):
        return built["optimizer"], int(built.get("lr_scheduler") is not None)
    return built, 0


def _spread_optimizer(parent: dict[str, Any], model: Any, members: int, path: Path) -> tuple[dict[str, Any], int]:
    """The parent's optimizer state with every per-parameter tensor copied to each member; and the scheduler count."""
    optimizer, schedulers = _optimizer_and_schedulers(model)
    fresh = optimizer.state_dict()
    states = parent.get("optimizer_states") or []
    if len(states) != 1:
        raise CheckpointMismatchError(f"--model.spawn_from {path} holds {len(states)} optimizer states; a spawned run continues one")
    theirs = states[0]
    sizes = [len(g["params"]) for g in fresh["param_groups"]], [len(g["params"]) for g in theirs["param_groups"]]
    if sizes[0] != sizes[1]:
        raise CheckpointMismatchError(
            f"--model.spawn_from {path}: its optimizer has parameter groups of sizes {sizes[1]}, this model's {sizes[0]}; "
            "spawn from a parent trained with the same recipe (optimizer and parameter groups)"
        )
    params = [p for group in optimizer.param_groups for p in group["params"]]  # index k of the state: params[k]
    names = {id(p): n for n, p in model.named_parameters()}
    state = {}
    for index, entry in theirs["state"].items():
        shape, where = params[int(index)].shape, f"--model.spawn_from {path}: the optimizer state of {names.get(id(params[int(index)]))}"
        state[index] = {k: _spread(v, shape, members, where) if isinstance(v, Tensor) and v.dim() > 0 else v for k, v in entry.items()}
    groups = [{**theirs_group, "params": mine["params"]} for theirs_group, mine in zip(theirs["param_groups"], fresh["param_groups"])]
    return {"state": state, "param_groups": groups}, schedulers


def spawned_checkpoint(path: str | Path, model: Any, max_epochs: int | None) -> dict[str, Any]:
    """A checkpoint of ``model`` (a DeepEnsemble or SingleModel) at the parent checkpoint ``path``'s point of training.

    Raises CheckpointMismatchError when the parent is no SingleModel of the same network or recipe, ConfigError
    when the parent is past this run's last epoch.
    """
    path = Path(path).expanduser()
    parent = load_checkpoint(path, "--model.spawn_from")
    check_single(path, dict(parent.get("hyper_parameters") or {}), architecture(dict(model.hparams)))
    epoch = int(parent.get("epoch", -1)) + 1
    if max_epochs is not None and max_epochs >= 0 and epoch > max_epochs:
        raise ConfigError(f"--model.spawn_from {path} is the parent after epoch {epoch}, past this run's --trainer.max_epochs {max_epochs}")
    members = int(model.num_members)
    own, theirs = model.state_dict(), parent["state_dict"]
    if missing := sorted(own.keys() - theirs.keys()):
        raise CheckpointMismatchError(f"--model.spawn_from {path} lacks {len(missing)} of this model's tensors, e.g. {missing[0]}")
    state = {key: _spread(theirs[key], mine.shape, members, f"--model.spawn_from {path}: {key}") for key, mine in own.items()}
    optimizer, schedulers = _spread_optimizer(parent, model, members, path)
    if len(parent.get("lr_schedulers") or []) != schedulers:
        raise CheckpointMismatchError(
            f"--model.spawn_from {path} was trained with {len(parent.get('lr_schedulers') or [])} learning-rate schedulers, this "
            f"run has {schedulers}; spawn from a parent trained with the same --model.lr_scheduler"
        )
    checkpoint = {k: parent[k] for k in KEPT if k in parent}
    # no random streams, no data order, no callback states: those are this run's own from the spawn on
    checkpoint.update(state_dict=state, optimizer_states=[optimizer], hyper_parameters=dict(model.hparams))
    checkpoint[KEY] = model.checkpoint_identity()
    return checkpoint
