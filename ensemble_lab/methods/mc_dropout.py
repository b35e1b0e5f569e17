"""Monte Carlo Dropout: one network, dropout kept on at test time, M samples in one batched pass."""

import torch
from torch import Tensor

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.methods.training_batch import TrainingBatch
from ensemble_lab.nn import LayerFactory, plain_layers


class MCDropout(EnsembleModule):
    """Trained as one dropout network; at test the batch is tiled M times, each copy its own masks."""

    tiles_training_batch = False  # its own training rows: --data.train_batch independent does not apply

    def __init__(self, dropout: float = 0.1, **kwargs) -> None:
        """
        Args:
            dropout: dropout probability, in (0, 1); it stays active at test time (0.1 in the paper).
        """
        if dropout == 0:
            raise ConfigError("MCDropout needs model.dropout > 0 (it stays on at test time); got 0")
        super().__init__(dropout=dropout, **kwargs)

    def layer_factory(self) -> LayerFactory:
        return plain_layers(mc_dropout=True)

    def training_batch(self, x: Tensor, y: Tensor) -> TrainingBatch:
        """One dropout sample per image in training, as for an ordinary dropout network: logits (1, B, C)."""
        return TrainingBatch(self.network(x).unsqueeze(0), y, torch.arange(x.shape[0], device=x.device))
