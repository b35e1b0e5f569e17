"""A single network: the M = 1 reference every ensemble is compared against."""

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.nn import LayerFactory, plain_layers


class SingleModel(EnsembleModule):
    """One ordinary network; ``forward`` returns logits (1, B, C)."""

    def __init__(self, num_members: int = 1, **kwargs) -> None:
        """
        Args:
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

    def layer_factory(self) -> LayerFactory:
        return plain_layers()
