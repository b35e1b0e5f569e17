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
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from ensemble_lab.evaluation.extended import ExtendedInputs, label_metrics, ood_score_metrics
from ensemble_lab.metrics.classification import predictive_metrics
from ensemble_lab.metrics.ood import ood_metrics


def set_metrics(
    collected: dict[str, tuple[Tensor, Tensor]], roles: dict[str, str], extended: ExtendedInputs | None = None
) -> dict[str, dict[str, Any]]:
    """Every set's metrics, ``{name: {"role": .., **predictive_metrics, **ood_metrics}}``.

    Args:
        collected: ``{name: (member_probs (M, N, C), targets (N,))}`` of the evaluated sets.
        roles: ``{name: "id" | "shift" | "ood"}``; an ood set is scored against the first id set.
        extended: with it, also the metrics of evaluation/extended.py (a test's; the validation curves and
            ``--eval_sets_every`` leave them out).
    """
    sets = {name: {"role": roles[name], **predictive_metrics(p, t)} for name, (p, t) in collected.items()}
    id_names = [n for n in collected if roles[n] == "id"]
    logits = (extended.logits or {}) if extended is not None else {}
    for name, (probs, targets) in collected.items():
        if roles[name] == "ood" and id_names:
            sets[name].update(ood_metrics(collected[id_names[0]][0], probs))
            if extended is not None:
                sets[name].update(ood_score_metrics(collected[id_names[0]][0], probs, logits.get(id_names[0]), logits.get(name)))
        elif roles[name] != "ood" and extended is not None:
            sets[name].update(label_metrics(probs, targets, extended))
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


@torch.no_grad()
def predict_validation(module: "L.LightningModule", datamodule: Any) -> tuple[Tensor, Tensor] | None:
    """The validation split's member logits (M, n, C), as the network returns them, and targets (n,); None when
    ``datamodule`` has no validation split. The temperature (``--calibration``) and the conformal sets are fitted
    on them. Random draws (MC Dropout's masks) come from a stream of their own seeded with the run's seed, so the
    test's draws are the same with and without this prediction."""
    if datamodule is None or getattr(type(datamodule), "val_dataloader", None) in (None, L.LightningDataModule.val_dataloader):
        return None
    datamodule.setup("validate")  # loads the held-out validation split next to the test sets
    device = module.device
    logits, targets = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)))
        for batch in datamodule.val_dataloader():
            (images,) = datamodule.on_after_batch_transfer((batch[0].to(device),), 0)  # the eval preprocessing
            logits.append(module(images))  # (M, B, C)
            targets.append(batch[1].to(device))
    return torch.cat(logits, dim=1), torch.cat(targets)  # (M, n, C), (n,)
