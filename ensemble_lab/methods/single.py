"""A single network: the M = 1 reference every ensemble is compared against."""

from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.nn import LayerFactory, plain_layers


class SingleModel(EnsembleModule):
    """One ordinary network; ``forward`` returns logits (1, B, C)."""

    def __init__(self, **kwargs) -> None:
        """All options are EnsembleModule's; num_members is fixed at 1."""
        super().__init__(num_members=1, **kwargs)

    def layer_factory(self) -> LayerFactory:
        return plain_layers()
