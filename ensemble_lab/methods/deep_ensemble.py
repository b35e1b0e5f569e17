"""Deep Ensemble: M independently initialised networks, trained side by side in one batched pass."""

import warnings
from typing import Any

from torch import Tensor

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods.assemble import load_member_checkpoints, member_seed, refuse_duplicates, warn_identical_members
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.methods.spawn_option import SpawnOption
from ensemble_lab.nn import LayerFactory, deep_ensemble_layers, weights_from_checkpoint


class DeepEnsemble(SpawnOption, EnsembleModule):
    """M independent members; every layer holds M weights and runs them in one op."""

    def __init__(self, member_checkpoints: list[str] | None = None, spawn_from: str | None = None, **kwargs) -> None:
        """
        Args:
            spawn_from: a spawned ensemble (``fit`` only): every member starts from this parent checkpoint (a
                SingleModel run's ``checkpoints/spawn-epoch=<t>.ckpt``, written by ``--checkpoint.keep_epochs``):
                its weights, BatchNorm statistics, optimizer state, epoch and learning-rate schedule, and trains on
                from epoch t with its own data order (``--data.train_batch independent``) and dropout draws.
                Not given: the members start from their own random initialisations (t = 0).
            member_checkpoints: assemble the ensemble from SingleModel checkpoints trained as separate
                runs (own seeds and data orders): member i gets checkpoint i's weights and BatchNorm
                statistics, and num_members becomes the list's length. Meant for ``test`` without
                --ckpt_path: ``--model.member_checkpoints [a.ckpt,b.ckpt,c.ckpt]``.
        """
        if member_checkpoints is not None:
            if not member_checkpoints:
                raise ConfigError("model.member_checkpoints is empty; give one SingleModel checkpoint per member")
            refuse_duplicates(member_checkpoints)
            kwargs["num_members"] = len(member_checkpoints)
        if member_checkpoints is not None and spawn_from is not None:
            raise ConfigError("model.member_checkpoints and model.spawn_from exclude each other: an assembled ensemble is not trained")
        with weights_from_checkpoint(bool(member_checkpoints)):  # the checkpoints fill every member: no pretrained timm download
            super().__init__(**kwargs)
        self.spawn_from = None if spawn_from is None else str(spawn_from)
        if member_checkpoints is None and self.num_members == 1:
            warnings.warn(
                "DeepEnsemble with num_members=1 is a single model, not an ensemble (SingleModel is the M = 1 reference)",
                stacklevel=2,
            )
        self.member_checkpoints = None if member_checkpoints is None else [str(p) for p in member_checkpoints]
        if self.member_checkpoints:
            load_member_checkpoints(self.network, dict(self.hparams), self.member_checkpoints)
            warn_identical_members(self.network, self.member_checkpoints)

    def members_description(self) -> dict[str, Any]:
        """An assembled ensemble names its members' checkpoints and their runs' seeds in results.json."""
        if not self.member_checkpoints:
            return self.spawn_description()
        return {"member_checkpoints": self.member_checkpoints, "member_seeds": [member_seed(p) for p in self.member_checkpoints]}

    def layer_factory(self) -> LayerFactory:
        return deep_ensemble_layers(self.num_members)

    def training_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """SUM over members of each member's mean task loss (classification: cross-entropy; regression: the Gaussian
        NLL by default): every member gets the gradient it would get if it were trained alone (a mean would shrink
        each member's step by 1/M). Every member has as many rows as the others, so the sum is M times the task's
        mean over members and rows."""
        return self.task.loss(logits, targets) * logits.shape[0]  # logits (M, B, K)

    def logged_loss(self, loss: Tensor, logits: Tensor) -> Tensor:
        """The mean member loss (the sum / M), comparable with the other methods' curves."""
        return loss / logits.shape[0]
