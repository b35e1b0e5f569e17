"""Metrics of every test set (the one home for test, calibrated test and the evaluation during fit),
and the evaluation of all test sets every K epochs of a fit (``--eval_sets_every K``).

During fit the test sets are evaluated at the end of the validation epoch of every K-th epoch (and of
the last one), on rank 0 only: under DDP the other ranks do not wait for a gather, and the values are
logged with ``rank_zero_only=True`` (so no callback can monitor them). The evaluation draws its random
numbers (MC Dropout's masks) in a stream of its own, seeded as a test is: the training stream, and so
the trained weights, are the same with and without it, and the evaluation of the last epoch gives the
numbers the test after fit gives.
"""

import os
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from ensemble_lab.metrics.classification import predictive_metrics
from ensemble_lab.metrics.ood import ood_metrics

if TYPE_CHECKING:
    import lightning as L


def set_metrics(collected: dict[str, tuple[Tensor, Tensor]], roles: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every set's metrics, ``{name: {"role": .., **predictive_metrics, **ood_metrics}}``.

    Args:
        collected: ``{name: (member_probs (M, N, C), targets (N,))}`` of the evaluated sets.
        roles: ``{name: "id" | "shift" | "ood"}``; an ood set is scored against the first id set.
    """
    sets = {name: {"role": roles[name], **predictive_metrics(p, t)} for name, (p, t) in collected.items()}
    id_names = [n for n in collected if roles[n] == "id"]
    for name in collected:
        if roles[name] == "ood" and id_names:
            sets[name].update(ood_metrics(collected[id_names[0]][0], collected[name][0]))
    return sets


def scalars(prefix: str, sets: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{"<prefix>/<set>/<metric>": value}`` for every number of ``sets`` (lists, matrices and None left out)."""
    return {f"{prefix}/{name}/{k}": float(v) for name, metrics in sets.items() for k, v in metrics.items() if isinstance(v, (int, float))}


def eval_due(trainer: "L.Trainer", every: int) -> bool:
    """True at the end of the validation that closes every ``every``-th epoch of a fit, and its last epoch
    (max_epochs or max_steps reached; an epoch that early stopping makes the last counts only on a multiple).

    With several validations per epoch (``--trainer.val_check_interval`` < 1 or a number of batches), only
    the epoch's last one counts: the sets are evaluated once per due epoch, on the latest weights."""
    if every <= 0 or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
        return False
    last_step = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
    if not (last_step or _last_validation_of_epoch(trainer)):
        return False
    epochs = trainer.current_epoch + 1
    last_epoch = trainer.max_epochs is not None and trainer.max_epochs > 0 and epochs >= trainer.max_epochs
    return epochs % every == 0 or last_epoch or last_step


def _last_validation_of_epoch(trainer: "L.Trainer") -> bool:
    """Whether no later validation is scheduled in this training epoch (True where that cannot be told:
    validation every N steps across epochs, or by time)."""
    loop = trainer.fit_loop.epoch_loop
    if loop.batch_progress.is_last_batch:
        return True
    every, batches = trainer.val_check_batch, trainer.num_training_batches
    if trainer.check_val_every_n_epoch is None or not isinstance(every, int) or not isinstance(batches, int):
        return True
    return loop.batch_idx + 1 + every > batches  # Lightning validates after batches every, 2·every, ...: none is left


@torch.no_grad()
def predict_test_sets(module: "L.LightningModule", datamodule: Any) -> dict[str, tuple[Tensor, Tensor]]:
    """Member probabilities (M, N, C) and targets (N,) of every test set of ``datamodule``, in its order.

    Batches go through the datamodule's evaluation preprocessing and the trainer's precision, as in test;
    random draws come from a stream seeded with the run's seed (as on_test_start seeds a test), and the
    outer stream is put back afterwards.
    """
    datamodule.setup("test")  # loads the test sets once, next to the training split
    roles = dict(datamodule.test_set_roles)
    device = module.device
    precision = module.trainer.precision_plugin
    collected = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)))
        for name, loader in zip(roles, datamodule.test_dataloader()):
            probs, targets = [], []
            for batch in loader:
                (images,) = datamodule.on_after_batch_transfer((batch[0].to(device),), 0)  # the eval preprocessing
                with precision.forward_context():
                    probs.append(torch.softmax(module(images).float(), dim=-1))  # (M, B, C)
                targets.append(batch[1].to(device))
            collected[name] = (torch.cat(probs, dim=1), torch.cat(targets))  # (M, N, C), (N,)
    return collected
