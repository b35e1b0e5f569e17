"""Snapshot ensembles (Huang et al., 2017): one network trained once, its weights at M moments kept as the members.

``cycles`` (the paper's): the T optimizer steps of the fit are cut into M cycles of T/M steps; the learning rate
restarts at the optimizer's lr at the start of every cycle and falls along a cosine towards 0 within it, step by step:
lr(t) = lr₀/2 · (cos(π · (t mod T/M) / (T/M)) + 1), t = 0, 1, ... counting optimizer steps (when M does not divide
T, cycle m ends after step ⌊(m + 1)·T/M⌋ and its own length replaces T/M). The weights after cycle m's last step
become member m. ``last_epochs`` (checkpoint ensembles): the recipe's own schedule, and the
weights after each of the last M epochs.

The members live in a Deep Ensemble's network (``network``: one grouped op per layer, member m in slice m), so the
test-time forward, the weight cosine and ``connectivity`` read them as they read a Deep Ensemble's; the network
being trained is ``current``, a plain one. Both are in the state_dict, with the optimizer steps at which each member
was taken (``snapshot_steps``, -1 while not taken), so a resumed fit keeps its snapshots.
"""

import bisect
import math
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from ensemble_lab.compat import attached_trainer
from ensemble_lab.errors import ConfigError
from ensemble_lab.methods.assemble import fill_member
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.methods.training_batch import TrainingBatch
from ensemble_lab.metrics.weight_space import weight_cosine
from ensemble_lab.nn import LayerFactory, build_backbone, deep_ensemble_layers, plain_layers, tile_members
from ensemble_lab.nn.memory_format import use_channels_last

#: the --model.snapshot choices
SNAPSHOTS = ("cycles", "last_epochs")


def cycle_ends(total_steps: int, num_members: int) -> list[int]:
    """The optimizer steps after which each of M cycles over ``total_steps`` steps ends: ⌊(m + 1)·T/M⌋, so cycles
    differ by one step at most (all T/M steps long when M divides T); a ConfigError when T < M."""
    if total_steps < num_members:
        raise ConfigError(f"{total_steps} optimizer steps do not make {num_members} snapshot cycles; train longer (--trainer.max_epochs) or lower --model.num_members")
    return [(k + 1) * total_steps // num_members for k in range(num_members)]


def cyclic_cosine_factor(step: int, ends: list[int]) -> float:
    """The factor of the initial learning rate at optimizer step ``step`` (0-based) of the cycles ending after ``ends``:
    ½ (cos(π · steps into the cycle / its length) + 1), 1 at a cycle's first step."""
    cycle = bisect.bisect_right(ends, step)  # the cycle holding step `step` (steps ends[k-1] .. ends[k] - 1)
    start = ends[cycle - 1] if cycle > 0 else 0
    length = (ends[cycle] if cycle < len(ends) else step + 1) - start  # past the last end (not planned): one step
    return 0.5 * (math.cos(math.pi * (step - start) / length) + 1.0)


def snapshot_steps(snapshot: str, num_members: int, total_steps: int, epochs: int) -> list[int]:
    """The optimizer steps after which members 0..M-1 are taken in a fit of ``total_steps`` steps over ``epochs``
    epochs; a ConfigError when the fit is too short for M members."""
    m = num_members
    if snapshot == "cycles":
        return cycle_ends(total_steps, m)
    if epochs < m:
        raise ConfigError(f"--model.snapshot last_epochs takes the last {m} epochs' weights; --trainer.max_epochs is {epochs}: train at least {m} epochs")
    per_epoch = total_steps // epochs
    return [(epochs - m + k + 1) * per_epoch for k in range(m)]


class SnapshotEnsemble(EnsembleModule):
    """One network trained once; its weights at the end of each of M learning-rate cycles (or of the last M
    epochs) are the members, run as a Deep Ensemble's in one grouped op per layer."""

    #: one network trains on the batch as it comes; --data.train_batch independent has no members to give rows to
    tiles_training_batch = False
    #: the plain network being trained (built with the members' network, in ``build_network``)
    current: nn.Module
    #: (M,) the optimizer step after which member m was taken; -1: not yet
    snapshot_steps: Tensor

    def __init__(self, snapshot: Literal["cycles", "last_epochs"] = "cycles", **kwargs: Any) -> None:
        """
        Args:
            snapshot: where the members come from. ``cycles`` (Huang et al., 2017): the fit's optimizer steps are cut
                into M equal cycles (T/M steps; one step longer or shorter where M does not divide T); the learning rate
                restarts at the optimizer's lr and falls along a cosine to about 0 within each cycle, set every
                step; member m is the weights after cycle m (BatchNorm statistics included). This schedule replaces
                --model.lr_scheduler, which is refused. ``last_epochs`` (checkpoint ensembles): the run's own
                optimizer and --model.lr_scheduler; member m is the weights after epoch max_epochs − M + m.
                During fit, validation scores the members taken so far plus the weights being trained.
                Both need --trainer.max_epochs (not max_steps) and no early stopping: the snapshots are placed in
                the planned length of the fit.
        """
        if snapshot not in SNAPSHOTS:
            raise ConfigError(f"--model.snapshot {snapshot!r} is not known; choose one of: {', '.join(SNAPSHOTS)}")
        if snapshot == "cycles" and kwargs.get("lr_scheduler") is not None:
            raise ConfigError(
                "SnapshotEnsemble's cycles set the learning rate themselves (cyclic cosine, every step); "
                "drop --model.lr_scheduler, or use --model.snapshot last_epochs to keep the recipe's schedule"
            )
        super().__init__(**kwargs)
        if self.distillation_options is not None or self.repulsion_options is not None:
            name = "--model.distillation" if self.distillation_options is not None else "--model.repulsion"
            raise ConfigError(f"{name} acts on members trained together; SnapshotEnsemble trains one network: drop {name}")
        self.snapshot = snapshot
        if self.hparams.get("channels_last"):
            use_channels_last(self.current)
        if self.hparams.get("compile"):
            self.current.compile()
        # the optimizer steps after which member m was taken; -1: not yet (a buffer: checkpoints keep it)
        self.register_buffer("snapshot_steps", torch.full((self.num_members,), -1, dtype=torch.long))
        self._taken = 0  # members taken so far, kept off the device (forward reads it every call)
        self.register_load_state_dict_post_hook(lambda module, keys: module._count_taken())
        self._planned: list[int] = []  # the steps after which members are taken, set when the optimizer is

    def _count_taken(self) -> None:
        self._taken = int((self.snapshot_steps >= 0).sum())

    def layer_factory(self) -> LayerFactory:
        return deep_ensemble_layers(self.num_members)

    def build_network(
        self, backbone: str, input_shape: tuple[int, ...], num_classes: int, dropout: float, options: dict[str, Any]
    ) -> nn.Module:
        """The members' network (a Deep Ensemble's, empty: zeros until a snapshot fills a member) and, as
        ``current``, the plain network that trains, built first so that it starts as a SingleModel of the same seed."""
        self.current = build_backbone(backbone, plain_layers(), input_shape, num_classes, dropout=dropout, **options)
        with torch.random.fork_rng(devices=[]):  # the members' initial values are never used: leave the stream as a SingleModel's
            members = build_backbone(backbone, self.layer_factory(), input_shape, num_classes, dropout=dropout, **options)
        for p in members.parameters():
            p.requires_grad_(False)  # filled by copies, never by gradients
            nn.init.zeros_(p)
        return members

    def training_only_parameters(self) -> list[Tensor]:
        """The network being trained: no member computes with it (the cost and the stored weight cosine leave it out)."""
        return list(self.current.parameters())

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, ...) -> member logits (M, B, K). Before all M members are taken (during fit): the members
        taken so far and the weights being trained, (taken + 1, B, K)."""
        batch, m = x.shape[0], self.num_members
        members = self.network(tile_members(x, m)).view(m, batch, -1)  # (M, B, K)
        if self._taken == m:
            return members
        current = self.current(x).view(1, batch, -1)  # (1, B, K)
        return torch.cat([members[: self._taken], current])  # (taken + 1, B, K)

    def training_batch(self, x: Tensor, y: Tensor) -> TrainingBatch:
        """The network being trained on the whole batch: logits (1, B, K)."""
        return TrainingBatch(self.current(x).unsqueeze(0), y, torch.arange(x.shape[0], device=x.device))  # (1, B, K)

    def validation_weight_cosine(self) -> Tensor | None:
        """The effective weight cosine of the members taken so far (None before two exist)."""
        cosine = weight_cosine(self) if self._taken >= 2 else None
        return None if cosine is None else cosine[: self._taken, : self._taken]

    def members_description(self) -> dict[str, Any]:
        """results.json names how the members were taken and after which optimizer steps."""
        return {"snapshot": self.snapshot, "snapshot_steps": self.snapshot_steps.tolist()}

    # ---- taking the snapshots --------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        trainer = attached_trainer(self)
        if stage != "fit" or trainer is None:
            return
        if trainer.max_steps != -1 or trainer.max_epochs is None or trainer.max_epochs < 1:
            raise ConfigError(
                "SnapshotEnsemble places its snapshots in the fit's planned epochs: set --trainer.max_epochs "
                f"and leave --trainer.max_steps at -1 (got max_epochs={trainer.max_epochs}, max_steps={trainer.max_steps})"
            )
        stopper = trainer.early_stopping_callback
        if stopper is not None and getattr(stopper, "enabled", True):  # the CLI's early stopping is there, off unless enabled
            raise ConfigError("SnapshotEnsemble's members are taken at planned steps; early stopping would cut the fit before them: drop --early_stopping")

    def configure_optimizers(self) -> Any:
        configured = super().configure_optimizers()
        trainer = attached_trainer(self)
        if trainer is None:  # the CLI checks the optimizer's options before the trainer exists: the steps come with it
            return configured
        assert trainer.max_epochs is not None  # setup checked it
        self._planned = ends = snapshot_steps(self.snapshot, self.num_members, int(trainer.estimated_stepping_batches), trainer.max_epochs)
        if self.snapshot != "cycles":
            return configured
        schedule = LambdaLR(configured, lambda step: cyclic_cosine_factor(step, ends))  # lr₀ · factor at step `step`
        return {"optimizer": configured, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @torch.no_grad()
    def _take_due(self) -> None:
        """Copy the current weights (and BatchNorm statistics) into every member whose step has been reached."""
        step = self.trainer.global_step
        while self._taken < self.num_members and self._planned and step >= self._planned[self._taken]:
            fill_member(self.network, self.current, self._taken, Path(f"snapshot {self._taken}"))
            self.snapshot_steps[self._taken] = step
            self._taken += 1

    def on_train_start(self) -> None:
        super().on_train_start()
        # a fit resumed from a checkpoint written at a snapshot's step, before the snapshot was taken, takes it now
        self._take_due()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        self._take_due()  # before the epoch's validation and checkpoint see the weights

    def on_test_start(self) -> None:
        if self._taken < self.num_members:
            raise ConfigError(
                f"this SnapshotEnsemble holds {self._taken} of its {self.num_members} members: its fit stopped before "
                "the last snapshot. Resume the fit (--ckpt_path) to its end, then test"
            )
        super().on_test_start()
