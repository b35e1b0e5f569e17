"""A single network: the M = 1 reference every ensemble is compared against."""

from typing import Any

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.methods.spawn_option import SpawnOption
from ensemble_lab.nn import LayerFactory, plain_layers


class SingleModel(SpawnOption, EnsembleModule):
    """One ordinary network; ``forward`` returns logits (1, B, C)."""

    def __init__(self, num_members: int = 1, spawn_from: str | None = None, **kwargs) -> None:
        """
        Args:
            spawn_from: start (``fit`` only) from this parent checkpoint (a SingleModel run's
                ``checkpoints/spawn-epoch=<t>.ckpt``): its weights, optimizer state, epoch and schedule, trained on
                with this run's seed (data order, dropout). Such runs with several seeds assemble into a spawned
                Deep Ensemble (``--model.member_checkpoints``).
            num_members: a single model has M = 1; only 1 is accepted, so study-wide
                --model.num_members overrides (meant for the ensembles) fail clearly instead of
                being ignored. The other options are EnsembleModule's.
        """
        if num_members != 1:
            raise ConfigError(
                f"SingleModel is one network (M = 1); got --model.num_members {num_members}. Drop the option "
                "for this method (a study sets it per method under methods.<name>.args)"
            )
        super().__init__(num_members=1, **kwargs)
        self.spawn_from = None if spawn_from is None else str(spawn_from)

    def members_description(self) -> dict[str, Any]:
        """A spawned run names its parent checkpoint and the epoch it spawned at in results.json."""
        return self.spawn_description()

    def layer_factory(self) -> LayerFactory:
        return plain_layers()
